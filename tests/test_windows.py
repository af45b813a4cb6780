"""Window kernels and boundary rules (gradsmooth.windows): weights by formula, padding against scipy."""

import math

import numpy as np
import pytest
from scipy.ndimage import correlate1d

from gradsmooth import WindowSmoothing
from gradsmooth.windows import BOUNDARIES, KERNELS, check_window, default_sigma, kernel_weights, pad_index

OFFSETS_5 = range(-2, 3)  # delta = -r..r for window 5


def test_kernel_and_boundary_names():
    assert KERNELS == ("uniform", "triangular", "gaussian")
    assert BOUNDARIES == ("renormalize", "nearest", "reflect", "mirror", "zero")


# -- weights by formula ---------------------------------------------------------------------------


def test_uniform_weights_of_a_window_of_five():
    assert kernel_weights(5, "uniform") == (1.0, 1.0, 1.0, 1.0, 1.0)


def test_triangular_weights_of_a_window_of_five_are_r_plus_one_minus_the_offset():
    assert kernel_weights(5, "triangular") == tuple(float(2 + 1 - abs(d)) for d in OFFSETS_5) == (1.0, 2.0, 3.0, 2.0, 1.0)


def test_gaussian_weights_of_a_window_of_five_with_the_default_sigma():
    assert default_sigma(5) == 1.0  # max(r / 2, 0.5) with r = 2
    expected = tuple(math.exp(-(d * d) / 2.0) for d in OFFSETS_5)
    assert kernel_weights(5, "gaussian") == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("sigma", [0.5, 2.0, 1e6])
def test_gaussian_weights_of_a_window_of_five_with_a_given_sigma(sigma):
    expected = tuple(math.exp(-(d * d) / (2 * sigma**2)) for d in OFFSETS_5)
    assert kernel_weights(5, "gaussian", sigma) == pytest.approx(expected, rel=1e-15)


def test_explicit_weights_are_returned_as_floats():
    weights = kernel_weights(5, [1, 2, 4, 2, 1])
    assert weights == (1.0, 2.0, 4.0, 2.0, 1.0) and all(type(w) is float for w in weights)
    assert kernel_weights(3, np.array([0.5, 1.0, 0.5])) == (0.5, 1.0, 0.5)


@pytest.mark.parametrize("window, sigma", [(1, 0.5), (3, 0.5), (5, 1.0), (7, 1.5), (9, 2.0), (21, 5.0)])
def test_default_sigma_is_half_the_radius_at_least_one_half(window, sigma):
    assert default_sigma(window) == sigma


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_window_of_one_has_a_single_weight(kernel):
    assert kernel_weights(1, kernel) == (1.0,)


# -- bad kernels and sigmas -----------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [1e-300, 1e-160, 0.02])
def test_sigma_so_small_a_gaussian_weight_vanishes_is_refused(sigma):
    with pytest.raises(ValueError, match=rf"sigma should be a positive number .* but is: {sigma!r}$"):
        WindowSmoothing(3, "gaussian", sigma=sigma)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((3, "box"), ValueError, r"kernel should be one of \('uniform', 'triangular', 'gaussian'\) .* but is: 'box'"),
        ((3, 3), TypeError, "kernel should be one of .* or a sequence of weights but is: 3"),
        ((3, "uniform", 1.0), ValueError, "sigma applies only to kernel='gaussian' but kernel is 'uniform' and sigma is: 1.0"),
        ((3, [1, 2, 1], 1.0), ValueError, "sigma applies only to kernel='gaussian' but an explicit kernel was given"),
        ((3, "gaussian", True), TypeError, "sigma should be a positive number but is: True"),
        ((3, "gaussian", "1"), TypeError, "sigma should be a positive number but is: '1'"),
        ((3, "gaussian", -1.0), ValueError, "sigma should be a positive number but is: -1.0"),
        ((3, "gaussian", math.inf), ValueError, "sigma should be a positive number but is: inf"),
        ((3, "gaussian", math.nan), ValueError, "sigma should be a positive number but is: nan"),
        ((3, "gaussian", 10**400), ValueError, "sigma should be a positive number but is: 1000"),
        ((3, [1, 2]), ValueError, r"kernel should hold an odd number of weights, one per block of the window .* but "
                                  r"has 2: \[1.0, 2.0\]"),
        ((3, []), ValueError, r"kernel should hold an odd number of weights, .* but has 0: \[\]"),
        ((3, [1, 2, 3, 2, 1]), ValueError, r"kernel should have window=3 weights but has 5: .*; pass window=5 with it"),
        ((3, [1, 0, 1]), ValueError, r"kernel weights should be positive but kernel is: \[1.0, 0.0, 1.0\]"),
        ((3, [1, 2, 3]), ValueError, r"kernel should be symmetric \(k\(-d\) == k\(d\)\) but is: \[1.0, 2.0, 3.0\]"),
        ((3, [1, True, 1]), TypeError, "kernel weights should be positive numbers but kernel is: "),
        ((3, [1.0, math.nan, 1.0]), ValueError, r"kernel weights should be finite numbers but kernel is: \[1.0, nan, 1.0\]"),
        ((3, [10**400, 1, 10**400]), ValueError, "kernel weights should be finite numbers but kernel is: "),
        ((3, [1e308] * 3), ValueError, r"kernel weights should have a finite sum \(they are normalised by it\)"),
        ((4, "uniform"), ValueError, "window should be an odd integer >= 1 but is: 4"),
    ],
)
def test_bad_kernel_weights_arguments_name_the_argument_and_value(args, error, match):
    with pytest.raises(error, match=match):
        kernel_weights(*args)


# -- padding: scipy.ndimage.correlate1d's modes -----------------------------------------------------

SCIPY_MODES = {"nearest": "nearest", "reflect": "reflect", "mirror": "mirror", "zero": "constant"}


def scipy_reads(i, n, mode):
    """The member (or None, for the constant 0) that correlate1d reads at position ``i`` of a stack
    of ``n``: row 0 of a correlation with a one-hot kernel at offset ``i``."""
    r = abs(i) + n
    onehot = np.zeros(2 * r + 1)
    onehot[r + i] = 1.0
    members = np.arange(1.0, n + 1.0)  # member j holds j + 1, the padding constant 0
    value = correlate1d(members, onehot, mode=mode, cval=0.0)[0]
    return None if value == 0.0 else int(value) - 1


@pytest.mark.parametrize("boundary", sorted(SCIPY_MODES))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_pad_index_matches_scipy_padding_for_every_boundary(boundary, n):
    for i in range(-3 * n - 2, 4 * n + 3):  # several periods to each side: windows longer than the stack
        assert pad_index(i, n, boundary) == scipy_reads(i, n, SCIPY_MODES[boundary]), (i, n, boundary)


def test_pad_index_on_a_small_example_is_the_docstring_picture():
    # a b c d = 0 1 2 3, three positions padded to each side
    positions = range(-3, 7)
    assert [pad_index(i, 4, "nearest") for i in positions] == [0, 0, 0, 0, 1, 2, 3, 3, 3, 3]
    assert [pad_index(i, 4, "reflect") for i in positions] == [2, 1, 0, 0, 1, 2, 3, 3, 2, 1]
    assert [pad_index(i, 4, "mirror") for i in positions] == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    assert [pad_index(i, 4, "zero") for i in positions] == [None] * 3 + [0, 1, 2, 3] + [None] * 3


def test_renormalize_drops_positions_outside_the_stack():
    assert [pad_index(i, 3, "renormalize") for i in range(-2, 5)] == [None, None, 0, 1, 2, None, None]


def test_pad_index_refuses_an_unknown_boundary_for_a_position_outside_the_stack():
    with pytest.raises(ValueError, match=r"boundary should be one of \('renormalize', .*\) but is: 'wrap'"):
        pad_index(-1, 3, "wrap")


# -- check_window ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, 5, 101, np.int64(7)], ids=repr)
def test_check_window_returns_an_int(window):
    checked = check_window(window)
    assert checked == window and type(checked) is int


@pytest.mark.parametrize(
    "window, error, match",
    [
        (0, ValueError, "window should be an odd integer >= 1 but is: 0"),
        (2, ValueError, "window should be an odd integer >= 1 but is: 2"),
        (-1, ValueError, "window should be an odd integer >= 1 but is: -1"),
        (3.0, TypeError, "window should be an odd integer >= 1 but is: 3.0"),
        (True, TypeError, "window should be an odd integer >= 1 but is: True"),
        ("3", TypeError, "window should be an odd integer >= 1 but is: '3'"),
        (None, TypeError, "window should be an odd integer >= 1 but is: None"),
    ],
    ids=repr,
)
def test_check_window_refuses_what_is_not_an_odd_integer_of_at_least_one(window, error, match):
    with pytest.raises(error, match=match):
        check_window(window)


def test_an_empty_kernel_is_told_what_fits_not_an_invalid_window():
    with pytest.raises(ValueError, match="kernel should hold an odd number of weights") as err:
        WindowSmoothing(kernel=[])
    assert "window=0" not in str(err.value)
