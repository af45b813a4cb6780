"""The MLX adapter: ``GradientSmoothing`` wraps any ``mlx.optimizers.Optimizer``.

    >>> import mlx.optimizers as optim
    >>> from gradsmooth.backends.mlx import GradientSmoothing
    >>> opt = GradientSmoothing(optim.AdamW(learning_rate=3e-4), window=3)
    >>> opt.update(model, grads)          # or opt.apply_gradients(grads, params)

The same code runs on the Metal GPU (Apple silicon) and on the CPU (Linux, ``mlx[cpu]``).
"""

from .blocks import tree_sites
from .optimizer import MODES, GradientSmoothing

__all__ = ["GradientSmoothing", "MODES", "tree_sites"]
