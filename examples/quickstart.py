"""Gradient Smoothing in a few lines, on NumPy arrays: plan, operator, smooth.

Run: python examples/quickstart.py
"""

import numpy as np

from gradsmooth import WindowSmoothing, find_blocks, smooth

rng = np.random.default_rng(0)
n_layers, d = 8, 16

# Updates of a small transformer-like model: a shared direction plus per-layer noise.
shared = rng.standard_normal((4 * d, d))
updates = {f"model.layers.{i}.mlp.up_proj.weight": shared + rng.standard_normal((4 * d, d)) for i in range(n_layers)}
updates |= {f"model.layers.{i}.input_layernorm.weight": rng.standard_normal(d) for i in range(n_layers)}
updates["model.embed_tokens.weight"] = rng.standard_normal((100, d))

plan = find_blocks({name: u.shape for name, u in updates.items()})
print(plan)

op = WindowSmoothing(window=5, kernel="triangular", boundary="renormalize")
print("\ndepth operator for the 8 layers:\n", np.round(op.matrix(n_layers), 3))

smoothed = smooth(updates, plan, op)
names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(n_layers)]
before = np.mean([np.linalg.norm(updates[n] - shared) for n in names])
after = np.mean([np.linalg.norm(smoothed[n] - shared) for n in names])
print(f"\nper-layer deviation from the shared direction: {before:.2f} before, {after:.2f} after smoothing")
