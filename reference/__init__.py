"""The NumPy reference: the golden oracle of every cross-backend test, and the teaching text.

Plain float64 NumPy with explicit loops, written straight from docs/method.md and sharing no
code with the core (``gradsmooth``). Read it in this order:

1. ``window.py``: Window Smoothing of a stack of n updates along depth,
   ``U~_l = sum_d k(d) U_{l+d} / sum k(d)`` with its boundary rules, and the n x n
   matrix it amounts to.
2. ``optimizers.py``: SGD, Adam, AdamW and Muon with PyTorch's semantics, each step
   split as ``theta_new = decay * theta + delta`` (decoupled decay apart from the rest).
   ``mlx_optimizers.py`` holds SGD, AdamW and Muon with MLX's semantics (the MLX oracle).
3. ``smoothed.py``: the smoothed step: ``theta_l <- decay_l theta_l + sum_j A[l, j] delta_j``
   (mode "update") or a base step on smoothed gradients (mode "gradient").
"""

from . import mlx_optimizers
from .optimizers import SGD, Adam, AdamW, Muon, Optimizer, Partition, newton_schulz
from .smoothed import Smoothed, smooth_groups
from .window import kernel_weights, padded_index, window_matrix, window_smooth

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Muon",
    "Optimizer",
    "Partition",
    "Smoothed",
    "kernel_weights",
    "mlx_optimizers",
    "newton_schulz",
    "padded_index",
    "smooth_groups",
    "window_matrix",
    "window_smooth",
]
