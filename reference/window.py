"""Window Smoothing, written straight from docs/method.md with explicit loops.

For a stack of n updates U_0 .. U_{n-1} (one parameter's update in each block) and a
window of w = 2r + 1 weights k(-r) .. k(r):

    renormalize:  U~_l = sum_{d: 0 <= l+d < n} k(d) U_{l+d}  /  sum_{same d} k(d)
    padding:      U~_l = sum_{d=-r..r} k(d) / K * U_{pad(l+d)}      K = sum_d k(d)
                  (pad as scipy.ndimage.correlate1d: nearest, reflect, mirror; zero drops)
    normalize=False: the same sums without dividing by anything.

The update applied is then (1 - alpha) U_l + alpha U~_l.
"""

import math

import numpy as np


def kernel_weights(window, kernel="uniform", sigma=None):
    """k(d) for d = -r..r, as a float64 array of length ``window``."""
    r = (window - 1) // 2
    k = np.zeros(window)
    for i in range(window):
        d = i - r
        if kernel == "uniform":
            k[i] = 1.0
        elif kernel == "triangular":
            k[i] = r + 1 - abs(d)
        elif kernel == "gaussian":
            s = max(r / 2, 0.5) if sigma is None else sigma
            k[i] = math.exp(-d * d / (2 * s * s))
        else:  # an explicit symmetric sequence of weights
            k[i] = kernel[i]
    return k


def padded_index(i, n, boundary):
    """The member that position i reads, or None when it reads nothing (zero / renormalize)."""
    while not 0 <= i < n:  # fold back in, one reflection at a time
        if boundary in ("zero", "renormalize"):
            return None
        if boundary == "nearest":
            return 0 if i < 0 else n - 1
        if boundary == "reflect":  # a b c d -> ... b a | a b c d | d c ...
            i = -i - 1 if i < 0 else 2 * n - 1 - i
        elif boundary == "mirror":  # a b c d -> ... c b | a b c d | c b ...
            if n == 1:
                return 0
            i = -i if i < 0 else 2 * (n - 1) - i
    return i


def window_smooth(stack, window=3, kernel="uniform", boundary="renormalize", alpha=1.0, sigma=None, normalize=True):
    """Smooth ``stack`` (n, ...) along axis 0; returns a new float64 array (n, ...)."""
    stack = np.asarray(stack, dtype=np.float64)
    n = stack.shape[0]
    r = (window - 1) // 2
    k = kernel_weights(window, kernel, sigma)  # (w,)
    out = np.zeros_like(stack)  # (n, ...)
    for l in range(n):
        total = 0.0  # the weights this row used
        for i in range(window):
            j = padded_index(l + i - r, n, boundary)
            if j is None:
                continue
            out[l] += k[i] * stack[j]
            total += k[i]
        if normalize:
            out[l] /= total if boundary == "renormalize" else k.sum()
    return (1 - alpha) * stack + alpha * out


def window_matrix(n, window=3, kernel="uniform", boundary="renormalize", alpha=1.0, sigma=None, normalize=True):
    """The n x n depth operator: smoothing the identity gives row l = A[l, :]."""
    return window_smooth(np.eye(n), window, kernel, boundary, alpha, sigma, normalize)
