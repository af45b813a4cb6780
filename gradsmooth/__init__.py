"""gradsmooth: Gradient Smoothing for any optimizer, on any Array API backend.

The update a base optimizer computes for each block of a network is replaced by a
local window average of the same parameter's updates in the neighbouring blocks:
``U~_l = sum_j A[l, j] U_j`` with ``A`` a banded depth operator (docs/method.md).

    >>> import numpy as np
    >>> from gradsmooth import find_blocks, WindowSmoothing, smooth
    >>> updates = {f"layers.{i}.w": np.full(3, float(i)) for i in range(4)}
    >>> plan = find_blocks({k: v.shape for k, v in updates.items()})
    >>> smooth(updates, plan, WindowSmoothing(window=3))["layers.0.w"]
    array([0.5, 0.5, 0.5])
"""

from .blocks import BlockGroup, BlockPlan, find_blocks
from .windows import BOUNDARIES, KERNELS
from .modes import MODES, check_mode
from .namespace import array_namespace
from .operators import Band, DepthOperator, MatrixOperator, WindowSmoothing, make_operator
from .settings import Settings, SmoothingOptions
from .smoothing import smooth, smooth_stack

__version__ = "0.1.0"

__all__ = [
    "BOUNDARIES",
    "KERNELS",
    "MODES",
    "Band",
    "BlockGroup",
    "BlockPlan",
    "DepthOperator",
    "MatrixOperator",
    "Settings",
    "SmoothingOptions",
    "WindowSmoothing",
    "array_namespace",
    "check_mode",
    "find_blocks",
    "make_operator",
    "smooth",
    "smooth_stack",
]
