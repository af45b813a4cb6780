"""The window shapes of Window Smoothing (docs/method.md): its kernels (weights per offset) and
boundary rules, in pure Python. (Not compute kernels: those are the adapters'.)

This is planning code: it runs once per (window, kernel, n) and is cached by the
operators; nothing here touches an array.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from .describe import describe

KERNELS = ("uniform", "triangular", "gaussian")
BOUNDARIES = ("renormalize", "nearest", "reflect", "mirror", "zero")

__all__ = ["KERNELS", "BOUNDARIES", "check_window", "kernel_weights", "default_sigma", "pad_index"]


def check_window(window: object) -> int:
    """Return ``window`` as an int after checking it is an odd integer >= 1."""
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window should be an odd integer >= 1 but is: {window!r}")
    window = int(window)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window should be an odd integer >= 1 but is: {window}")
    return window


def default_sigma(window: int) -> float:
    """Default Gaussian width: sigma = max(r / 2, 0.5) with r = (window - 1) / 2."""
    return max((window - 1) / 4, 0.5)


def kernel_weights(window: int, kernel: str | Sequence[float], sigma: float | None = None) -> tuple[float, ...]:
    """The kernel's weights k(delta) for delta = -r..r, not normalised.

    - ``uniform``:    k(delta) = 1
    - ``triangular``: k(delta) = r + 1 - |delta|
    - ``gaussian``:   k(delta) = exp(-delta^2 / (2 sigma^2)), sigma defaults to max(r/2, 0.5)
    - a sequence:     the ``window`` given weights, symmetric, positive and finite, with a finite sum.

    A ``sigma`` so small that a gaussian weight is 0 (it underflows, or ``2 sigma^2`` does)
    is refused: every weight the band divides or uses must be a positive finite number.
    """
    window = check_window(window)
    r = (window - 1) // 2
    offsets = range(-r, r + 1)
    if isinstance(kernel, str):
        if kernel not in KERNELS:
            raise ValueError(f"kernel should be one of {KERNELS} or a sequence of weights but is: {describe(kernel)}")
        if sigma is not None and kernel != "gaussian":
            raise ValueError(f"sigma applies only to kernel='gaussian' but kernel is {kernel!r} and sigma is: {sigma!r}")
        if kernel == "uniform":
            return tuple(1.0 for _ in offsets)
        if kernel == "triangular":
            return tuple(float(r + 1 - abs(d)) for d in offsets)
        s = default_sigma(window) if sigma is None else _check_sigma(sigma)
        return _gaussian(s, r, sigma)
    if sigma is not None:
        raise ValueError(f"sigma applies only to kernel='gaussian' but an explicit kernel was given and sigma is: {sigma!r}")
    weights = _check_explicit(kernel, window)
    try:
        math.fsum(weights)
    except OverflowError:
        raise ValueError(
            f"kernel weights should have a finite sum (they are normalised by it) but kernel is: {list(weights)}"
        ) from None
    return weights


def _gaussian(s: float, r: int, sigma: object) -> tuple[float, ...]:
    """``exp(-delta^2 / (2 s^2))`` for delta = -r..r, refusing an ``s`` so small that a weight is 0.

    Every weight must stay positive even after normalising by the sum (at most ``2r + 1``),
    or the window would silently drop neighbours (or divide by zero).
    """
    denom = 2.0 * s * s
    weights = []
    for d in range(-r, r + 1):
        w = math.exp(-(d * d) / denom) if denom > 0.0 else (1.0 if d == 0 else 0.0)
        weights.append(w)
    total = math.fsum(weights)
    if not all(math.isfinite(w) and w / total > 0.0 for w in weights):
        raise ValueError(
            f"sigma should be a positive number large enough that every gaussian weight "
            f"exp(-delta^2 / (2 sigma^2)) for |delta| <= {r} is nonzero but is: {sigma!r}"
        )
    return tuple(weights)


def _check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma should be a positive number but is: {sigma!r}")
    try:
        value = float(sigma)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sigma should be a positive number but is: {sigma!r}")
    return value


def _check_explicit(kernel: object, window: int) -> tuple[float, ...]:
    try:
        weights = tuple(kernel)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"kernel should be one of {KERNELS} or a sequence of weights but is: {describe(kernel)}") from None
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise TypeError(f"kernel weights should be positive numbers but kernel is: {describe(kernel)}")
    try:
        weights = tuple(float(w) for w in weights)
    except OverflowError:
        raise ValueError(f"kernel weights should be finite numbers but kernel is: {describe(kernel)}") from None
    if len(weights) % 2 == 0:  # no window fits: a window is odd
        raise ValueError(
            f"kernel should hold an odd number of weights, one per block of the window (e.g. [0.5, 1, 0.5] "
            f"with window=3), but has {len(weights)}: {list(weights)[:8]}"
        )
    if len(weights) != window:
        raise ValueError(
            f"kernel should have window={window} weights but has {len(weights)}: {list(weights)}; "
            f"pass window={len(weights)} with it"
        )
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"kernel weights should be finite numbers but kernel is: {list(weights)}")
    if not all(w > 0 for w in weights):
        raise ValueError(f"kernel weights should be positive but kernel is: {list(weights)}")
    if weights != weights[::-1]:
        raise ValueError(f"kernel should be symmetric (k(-d) == k(d)) but is: {list(weights)}")
    return weights


def pad_index(i: int, n: int, boundary: str) -> int | None:
    """Map a position ``i`` (possibly outside 0..n-1) to the member it reads, or None.

    Follows ``scipy.ndimage.correlate1d`` padding, extended periodically for windows
    longer than the stack:
      nearest  a a a | a b c d | d d d
      reflect  c b a | a b c d | d c b      (half-sample symmetric, period 2n)
      mirror   d c b | a b c d | c b a      (whole-sample symmetric, period 2n - 2)
      zero     0 0 0 | a b c d | 0 0 0      (None: the term is dropped)
    ``renormalize`` also drops terms outside the stack (the caller renormalises).
    """
    if 0 <= i < n:
        return i
    if boundary in ("renormalize", "zero"):
        return None
    if boundary == "nearest":
        return min(max(i, 0), n - 1)
    if boundary == "reflect":
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i
    if boundary == "mirror":
        if n == 1:
            return 0
        i %= 2 * n - 2
        return i if i < n else 2 * n - 2 - i
    raise ValueError(f"boundary should be one of {BOUNDARIES} but is: {boundary!r}")
