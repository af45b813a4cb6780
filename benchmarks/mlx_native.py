"""Would a native smoothed AdamW pay on MLX? A probe, not part of the library.

On torch, ``SmoothedAdamW`` computes each member's AdamW update where it mixes it, so it needs
no snapshot of the parameters. This builds the same step for MLX by hand — MLX's AdamW
(``bias_correction=False``, its default) for every member, the band of the wrapper's default
operator (window 3, uniform, renormalized) applied along depth, the decoupled decay kept per
layer — as one ``mx.compile``'d function, checks that it equals the wrapper in update mode,
then times it side by side with compiled AdamW, as the wrapper in both modes is timed:

```
python -m benchmarks.mlx_native            # GPT-2-small block shapes, 4 runs
```
"""

from __future__ import annotations

from functools import partial

import numpy as np

from . import repeated
from .bench_step import mlx_pair
from .common import gpt2_shapes

LR, BETAS, EPS, WEIGHT_DECAY = 1e-4, (0.9, 0.999), 1e-8, 0.1  # mlx_pair's AdamW
# compiled wrapped AdamW / compiled AdamW (the probe has none: it is the question)
TARGETS = {"wrapper, update mode": 1.5, "wrapper, gradient mode": 1.5}


def native_step(shapes):
    """A compiled smoothed AdamW step on ``shapes`` (``h.{i}.*`` members form the groups) with
    mlx_pair's parameters and gradients: ``(run, params)``, ``params()`` the current tree."""
    import mlx.core as mx

    from gradsmooth import make_operator

    rng = np.random.default_rng(0)  # mlx_pair's draws, in its order
    params = {k: mx.array(rng.standard_normal(s, dtype=np.float32) * 0.02) for k, s in shapes.items()}
    grads = {k: mx.array(rng.standard_normal(s, dtype=np.float32) * 1e-3) for k, s in shapes.items()}
    n = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("h."))
    groups = [[f"h.{i}.{s}" for i in range(n)] for s in sorted({k.split(".", 2)[2] for k in shapes if k.startswith("h.")})]
    rest = [k for k in shapes if not k.startswith("h.")]
    band = make_operator(None, window=3).band(n, 1).rows  # row l: ((k, w_lk), ...)
    holder = [{"p": params, "m": {k: mx.zeros_like(v) for k, v in params.items()},
               "v": {k: mx.zeros_like(v) for k, v in params.items()}}]
    b1, b2 = BETAS

    @partial(mx.compile, inputs=holder, outputs=holder)
    def step():
        p, m, v = (dict(holder[0][name]) for name in "pmv")

        def update(k):  # MLX AdamW's update without its decay: -lr m / (sqrt(v) + eps)
            g = grads[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * mx.square(g)
            return -LR * m[k] / (mx.sqrt(v[k]) + EPS)

        decay = 1 - LR * WEIGHT_DECAY
        for k in rest:
            p[k] = decay * p[k] + update(k)
        for keys in groups:
            u = [update(k) for k in keys]  # each member's update once
            mixed = [sum(w * u[j] for j, w in row) for row in band]
            for k, mu in zip(keys, mixed):
                p[k] = decay * p[k] + mu
        holder[0] = {"p": p, "m": m, "v": v}

    def run():
        step()
        mx.eval(holder)

    return run, lambda: holder[0]["p"]


def pairs(shapes):
    """By column: (compiled AdamW, variant) steps — the wrapper in update and gradient mode and
    the native probe."""
    base, update = mlx_pair("adamw", "update", shapes)
    _, gradient = mlx_pair("adamw", "gradient", shapes)
    native, _ = native_step(shapes)
    return {"wrapper, update mode": (base, update), "wrapper, gradient mode": (base, gradient),
            "native probe": (base, native)}


def main(argv=None) -> None:
    args = repeated.parse(argv, __doc__, runs=4, repeats=7)
    rows = repeated.measure(pairs(gpt2_shapes(args.blocks, args.dim)), args.runs, args.repeats)
    print(repeated.table(rows, TARGETS, of=" / compiled AdamW"), flush=True)


if __name__ == "__main__":
    main()
