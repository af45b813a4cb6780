"""The reference's Window Smoothing against an outside oracle, scipy.ndimage.correlate1d."""

import numpy as np
import pytest
from scipy.ndimage import correlate1d

from gradsmooth.reference import kernel_weights, window_matrix, window_smooth

SCIPY_MODES = {"nearest": "nearest", "reflect": "reflect", "mirror": "mirror", "zero": "constant"}
KERNELS = ["uniform", "triangular", "gaussian", [0.5, 1.0, 2.0, 1.0, 0.5]]


@pytest.mark.parametrize("boundary", sorted(SCIPY_MODES))
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 12])
@pytest.mark.parametrize("normalize", [True, False])
def test_padding_boundaries_match_scipy(boundary, kernel, n, normalize):
    rng = np.random.default_rng(n)
    windows = [5] if isinstance(kernel, list) else [1, 3, 5, 9, 15]
    for window in windows:
        stack = rng.standard_normal((n, 3, 2))
        k = kernel_weights(window, kernel)
        weights = k / k.sum() if normalize else k
        expected = correlate1d(stack, weights, axis=0, mode=SCIPY_MODES[boundary], cval=0.0)
        got = window_smooth(stack, window, kernel, boundary, normalize=normalize)
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-13)


def test_renormalize_is_the_worked_example_of_method_md():
    third, half = 1 / 3, 1 / 2
    expected = [[half, half, 0, 0], [third, third, third, 0], [0, third, third, third], [0, 0, half, half]]
    np.testing.assert_allclose(window_matrix(4), expected, rtol=1e-15)


def test_renormalize_interior_rows_match_scipy_and_ends_use_only_existing_members():
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((9, 4))
    k = kernel_weights(5, "triangular")
    got = window_smooth(stack, 5, "triangular", "renormalize")
    interior = correlate1d(stack, k / k.sum(), axis=0, mode="constant")
    np.testing.assert_allclose(got[2:-2], interior[2:-2], rtol=1e-13)
    np.testing.assert_allclose(got[0], (3 * stack[0] + 2 * stack[1] + 1 * stack[2]) / 6, rtol=1e-13)


def test_gaussian_default_sigma_is_half_the_radius_at_least_one_half():
    r = 4
    np.testing.assert_allclose(kernel_weights(9, "gaussian"), np.exp(-np.arange(-r, r + 1) ** 2 / (2 * 2.0**2)))
    np.testing.assert_allclose(kernel_weights(3, "gaussian"), np.exp(-np.array([1, 0, 1]) / (2 * 0.5**2)))


def test_alpha_mixes_with_the_identity():
    stack = np.random.default_rng(1).standard_normal((6, 3))
    full = window_smooth(stack, 5, "uniform", "mirror")
    np.testing.assert_allclose(window_smooth(stack, 5, "uniform", "mirror", alpha=0.25), 0.75 * stack + 0.25 * full)
    np.testing.assert_array_equal(window_smooth(stack, 5, alpha=0.0), stack)
