"""Depth operators: linear maps along the depth axis of a group of n members.

An operator is given by an n x n matrix A and acts as ``U~_l = sum_j A[l, j] U_j``.
Every operator applies its strength ``alpha`` as ``(1 - alpha) I + alpha A``.

Execution never forms a dense n x n product: operators hand out their [`Band`][gradsmooth.Band],
the nonzero entries of each row, planned once in pure Python and cached.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict, Union

import numpy as np

from .windows import BOUNDARIES, check_window, kernel_weights, pad_index
from .describe import describe

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Band", "DepthOperator", "WindowSmoothing", "MatrixOperator", "Alpha", "WINDOW_DEFAULTS", "WINDOW_OPTIONS",
           "WindowOptions", "checked_alpha",
           "check_operator", "make_operator"]

Alpha = Union[float, Callable[[int], float]]
Row = tuple[tuple[int, float], ...]

_CACHE_SIZE = 256


class Band(NamedTuple):
    """The nonzero entries of an n x n depth operator, row by row.

    ``rows[l] == ((j, A[l, j]), ...)`` with ``j`` ascending and zeros left out, so
    ``U~_l = sum over (j, w) in rows[l] of w * U_j``: a banded weighted sum of the
    few members a window reaches.
    """

    rows: tuple[Row, ...]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def offsets(self) -> tuple[tuple[int, ...], ...]:
        """Per row, the offsets ``j - l`` of its nonzero entries."""
        return tuple(tuple(j - l for j, _ in row) for l, row in enumerate(self.rows))

    @property
    def weights(self) -> tuple[tuple[float, ...], ...]:
        """Per row, the weights of its nonzero entries (aligned with [`offsets`][gradsmooth.Band.offsets])."""
        return tuple(tuple(w for _, w in row) for row in self.rows)

    @property
    def radius(self) -> int:
        """The largest ``|j - l|`` over the nonzero entries (0 for a diagonal operator)."""
        return max((abs(j - l) for l, row in enumerate(self.rows) for j, _ in row), default=0)

    @property
    def is_identity(self) -> bool:
        """Whether every row is ``((l, 1.0),)`` (never for array weights: their value is unknown)."""
        return all(len(row) == 1 and row[0][0] == l and isinstance(row[0][1], float) and row[0][1] == 1.0
                   for l, row in enumerate(self.rows))

    def dense(self) -> list[list[float]]:
        """The band as a dense n x n nested list of Python floats."""
        out = [[0.0] * self.n for _ in range(self.n)]
        for l, row in enumerate(self.rows):
            for j, w in row:
                out[l][j] = w
        return out


def _check_alpha(alpha: object) -> Alpha:
    if callable(alpha):
        return alpha  # checked each time it is evaluated
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha should be a number in [0, 1] or a function of the step but is: {describe(alpha)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha should be in [0, 1] but is: {alpha!r}")
    return float(alpha)


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n (the number of members) should be an integer >= 1 but is: {n!r}")
    return int(n)


def _mix(band: Band, alpha: Any) -> Band:
    """``(1 - alpha) I + alpha A`` as a band: for a Python number, exact zeros dropped; for a
    one-element array (a schedule's value, perhaps traced by a compiler), every weight an array
    of its namespace and nothing dropped (its value cannot be read)."""
    number = isinstance(alpha, float)
    if number and alpha == 1.0:
        return band
    if number and alpha == 0.0:
        return Band(tuple(((l, 1.0),) for l in range(band.n)))
    rows = []
    for l, row in enumerate(band.rows):
        entries = {j: alpha * w for j, w in row}
        entries[l] = entries[l] + (1.0 - alpha) if l in entries else (1.0 - alpha)
        rows.append(tuple((j, w) for j, w in sorted(entries.items()) if not (number and w == 0.0)))
    return Band(tuple(rows))


def checked_alpha(value: object, step: int) -> float:
    """``value``, what a schedule returned at ``step``, as a float in [0, 1]: a Python or NumPy
    real number or a real single-element array (read with ``float``). A value outside [0, 1]
    or NaN raises ValueError; a string, bool, complex number or anything ``float`` cannot read
    raises TypeError."""
    def what() -> str:  # made only for an error: reading an array's value here could sync a device
        return f"alpha(step) should return a number in [0, 1] but alpha({step}) returned: {describe(value)}"

    dtype = str(getattr(value, "dtype", ""))
    if (
        isinstance(value, (str, bytes, bool, complex))
        or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real))
        or "bool" in dtype
        or "complex" in dtype
    ):
        raise TypeError(what())
    try:
        alpha = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise TypeError(what()) from None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(what())
    return alpha


class DepthOperator(ABC):
    """Base of every depth operator: a subclass defines [`depth_band`][gradsmooth.DepthOperator.depth_band], the matrix
    A.

    The rest is shared: ``alpha`` mixing, caching, [`band`][gradsmooth.DepthOperator.band] and
    [`matrix`][gradsmooth.DepthOperator.matrix].
    """

    alpha: Alpha

    @abstractmethod
    def depth_band(self, n: int) -> Band:
        """The operator's matrix A for ``n`` members, before ``alpha`` is applied."""

    def alpha_at(self, step: int = 0) -> float:
        """The strength used at ``step`` (the number of steps taken before this one), a float in
        [0, 1]: a schedule's value is checked by `checked_alpha`."""
        if not callable(self.alpha):
            return self.alpha
        return checked_alpha(self.alpha(step), step)

    def band(self, n: int, step: int = 0) -> Band:
        """The band of ``(1 - alpha) I + alpha A`` for ``n`` members at ``step``."""
        return self.band_at(n, self.alpha_at(step))

    def band_at(self, n: int, alpha: Any) -> Band:
        """The band of ``(1 - alpha) I + alpha A`` for ``n`` members at strength ``alpha``.

        This is the one place where a strength and the operator become the weights every
        executor applies. ``alpha`` is a number in [0, 1] (checked; the band is cached), or a
        one-element array of any namespace, as an MLX schedule returns: then the weights are
        arrays of that namespace, ``alpha * A[l, j] + (1 - alpha) [l == j]``, and the value
        is not checked here (under a compiler it cannot be read; the adapter checks it where
        it can).
        """
        n = _check_n(n)
        if not isinstance(alpha, numbers.Real):
            return _mix(self.depth_band(n), alpha)
        alpha = float(_check_alpha(alpha))
        cache = self.__dict__.setdefault("_band_cache", {})
        key = (n, alpha)
        band = cache.get(key)
        if band is None:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            band = cache[key] = _mix(self.depth_band(n), alpha)
        return band

    def matrix(self, n: int, xp: Any = None, dtype: Any = None, device: Any = None, step: int = 0) -> Any:
        """The n x n matrix ``(1 - alpha) I + alpha A`` as an array of namespace ``xp``.

        ``xp`` defaults to numpy and ``dtype`` to the namespace's float64.
        """
        dense = self.band(n, step).dense()
        if xp is None:
            xp = np
        dtype = xp.float64 if dtype is None else dtype
        if device is None:
            return xp.asarray(dense, dtype=dtype)
        return xp.asarray(dense, dtype=dtype, device=device)


class WindowOptions(TypedDict, total=False):
    """The Window Smoothing options, as keyword arguments: the one definition the adapters
    (``GradientSmoothing(..., **window)``) and the command line share. Their defaults are
    [`WindowSmoothing`][gradsmooth.WindowSmoothing]'s, and only there."""

    window: int
    kernel: str | Sequence[float]
    boundary: str
    alpha: Alpha
    sigma: float | None
    normalize: bool


#: The options' defaults, defined here once (WindowSmoothing's signature reads them).
WINDOW_DEFAULTS: WindowOptions = {"window": 3, "kernel": "uniform", "boundary": "renormalize", "alpha": 1.0,
                                  "sigma": None, "normalize": True}
WINDOW_OPTIONS: tuple[str, ...] = tuple(WINDOW_DEFAULTS)


class WindowSmoothing(DepthOperator):
    """Window Smoothing: each member's update becomes a window average of its neighbours'.

    For offsets ``delta = -r..r`` (``r = (window - 1) / 2``) with kernel weights ``k(delta)``:

    - ``boundary="renormalize"``: ``U~_l = sum_{delta: 0 <= l+delta < n} k(delta) U_{l+delta}
      / sum_{same delta} k(delta)``, so every row sums to 1;
    - ``nearest``, ``reflect``, ``mirror``, ``zero``: the stack is padded like
      ``scipy.ndimage.correlate1d`` (``zero`` is mode ``constant`` with cval 0) and the
      kernel is normalised to sum 1 over the full window;
    - ``normalize=False``: the weights are used as given, never divided by their sum
      (``kernel=[b, 1, b]`` adds a fraction b of each neighbour's update to a block's own).

    The operator applied is ``(1 - alpha) I + alpha A``; ``alpha`` may be a function of the step.
    """

    def __init__(
        self,
        window: int = WINDOW_DEFAULTS["window"],
        kernel: str | Sequence[float] = WINDOW_DEFAULTS["kernel"],
        boundary: str = WINDOW_DEFAULTS["boundary"],
        alpha: Alpha = WINDOW_DEFAULTS["alpha"],
        sigma: float | None = WINDOW_DEFAULTS["sigma"],
        normalize: bool = WINDOW_DEFAULTS["normalize"],
    ) -> None:
        self.window = check_window(window)
        self.weights = kernel_weights(self.window, kernel, sigma)
        self.kernel = kernel if isinstance(kernel, str) else self.weights
        if not isinstance(boundary, str) or boundary not in BOUNDARIES:
            raise ValueError(f"boundary should be one of {BOUNDARIES} but is: {boundary!r}")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize should be True or False but is: {normalize!r}")
        if normalize:
            # Every band entry is k(delta) / (a sum of weights) <= 1 (or the weights
            # themselves, normalize=False), finite since sum(k) is: refuse one that is 0.
            total = math.fsum(self.weights)
            if not all(w / total > 0.0 for w in self.weights):
                raise ValueError(
                    f"kernel weights should stay positive when normalised (k / sum(k)) but kernel is: "
                    f"{list(self.weights)}"
                )
        self.boundary = boundary
        self.sigma = sigma
        self.normalize = normalize
        self.alpha = _check_alpha(alpha)

    @property
    def radius(self) -> int:
        return (self.window - 1) // 2

    def depth_band(self, n: int) -> Band:
        n = _check_n(n)
        r, k = self.radius, self.weights
        total = math.fsum(k) if self.normalize else 1.0
        rows = []
        for l in range(n):
            entries: dict[int, float] = {}
            used = 0.0
            for i, d in enumerate(range(-r, r + 1)):
                j = pad_index(l + d, n, self.boundary)
                if j is not None:
                    entries[j] = entries.get(j, 0.0) + k[i]
                    used += k[i]
            if self.boundary == "renormalize" and self.normalize:
                total = used
            rows.append(tuple((j, w / total) for j, w in sorted(entries.items())))
        return Band(tuple(rows))

    def __repr__(self) -> str:
        kernel = self.kernel if isinstance(self.kernel, str) else list(self.kernel)
        extra = "" if self.sigma is None else f", sigma={self.sigma!r}"
        extra += "" if self.normalize else ", normalize=False"
        return (
            f"WindowSmoothing(window={self.window}, kernel={kernel!r}, boundary={self.boundary!r}, "
            f"alpha={self.alpha!r}{extra})"
        )


class MatrixOperator(DepthOperator):
    """Any linear depth operator, given by its matrix: the general DGA linear case.

    ``matrix`` is an n x n array-like (then the operator serves groups of exactly n
    members) or a function ``n -> n x n`` array-like.
    """

    def __init__(self, matrix: Any, alpha: Alpha = 1.0) -> None:
        if callable(matrix):
            self._fn: Callable[[int], Any] | None = matrix
            self._fixed: np.ndarray | None = None
        else:
            self._fn = None
            self._fixed = self._as_matrix(matrix, None)
        self.alpha = _check_alpha(alpha)

    @staticmethod
    def _as_matrix(value: Any, n: int | None) -> np.ndarray:
        what = "matrix" if n is None else f"matrix(n={n})"
        try:
            raw = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{what} should be a square array of numbers but is: {describe(value)} ({err})") from None
        kind = raw.dtype.kind
        if kind == "c":
            raise TypeError(f"{what} should be a real array but has dtype {raw.dtype}: depth weights are real numbers")
        if kind not in "biufO" or (kind == "O" and not all(isinstance(x, numbers.Real) for x in raw.flat)):
            raise TypeError(f"{what} should be a square array of real numbers but has dtype {raw.dtype}: {describe(value)}")
        try:
            m = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError, OverflowError) as err:
            raise TypeError(f"{what} should be a square array of numbers but is: {describe(value)} ({err})") from None
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
            raise ValueError(f"{what} should be a square n x n array but has shape {m.shape}")
        if n is not None and m.shape[0] != n:
            raise ValueError(f"{what} should have shape ({n}, {n}) but has shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"{what} should hold finite numbers but is: {m.tolist()}")
        return m

    def depth_band(self, n: int) -> Band:
        n = _check_n(n)
        if self._fn is not None:
            m = self._as_matrix(self._fn(n), n)
        else:
            m = self._fixed
            if m.shape[0] != n:
                raise ValueError(
                    f"matrix has shape {m.shape} but a group has n={n} members; "
                    "pass a function n -> matrix to serve groups of any size"
                )
        return Band(tuple(tuple((j, float(m[l, j])) for j in range(n) if m[l, j] != 0.0) for l in range(n)))

    def __repr__(self) -> str:
        what = self._fn if self._fn is not None else self._fixed.tolist()
        return f"MatrixOperator({what!r}, alpha={self.alpha!r})"


def check_operator(operator: object, name: str = "operator") -> DepthOperator:
    """``operator`` after checking it is a [`DepthOperator`][gradsmooth.DepthOperator] (TypeError naming ``name``
    otherwise)."""
    if not isinstance(operator, DepthOperator):
        raise TypeError(
            f"{name} should be a gradsmooth DepthOperator (WindowSmoothing, MatrixOperator) but is: "
            f"{type(operator).__name__}"
        )
    return operator


def make_operator(operator: DepthOperator | None = None, **window: Unpack[WindowOptions]) -> DepthOperator:
    """``operator`` itself, or a [`WindowSmoothing`][gradsmooth.WindowSmoothing] of the ``window`` options given.

    Adapters take either; passing an operator together with a window option other than its
    default is refused, since the operator replaces them, and so is an unknown option.
    """
    unknown = sorted(set(window) - set(WINDOW_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected smoothing option(s) {unknown}: the window options are {WINDOW_OPTIONS}, "
                        "or pass operator=")
    if operator is None:
        return WindowSmoothing(**window)
    check_operator(operator)
    changed = {k: v for k, v in window.items() if v is not WINDOW_DEFAULTS[k] and v != WINDOW_DEFAULTS[k]}
    if changed:
        raise ValueError(f"operator replaces the window arguments; pass one or the other, not both: {changed}")
    return operator
