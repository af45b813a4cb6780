"""Depth operators: the core's matrices and bands against the NumPy reference oracle."""

import math
import re

import array_api_compat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsmooth import BOUNDARIES, Band, MatrixOperator, WindowSmoothing, make_operator
from gradsmooth.reference import window_matrix

kernels = st.one_of(
    st.sampled_from(["uniform", "triangular", "gaussian"]),
    st.integers(0, 4).flatmap(
        lambda r: st.lists(st.floats(0.01, 10.0), min_size=r + 1, max_size=r + 1).map(lambda h: h[:0:-1] + h)
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 40),
    radius=st.integers(0, 6),
    kernel=kernels,
    boundary=st.sampled_from(BOUNDARIES),
    alpha=st.floats(0.0, 1.0),
    normalize=st.booleans(),
)
def test_matrix_matches_reference(n, radius, kernel, boundary, alpha, normalize):
    window = 2 * radius + 1 if isinstance(kernel, str) else len(kernel)
    op = WindowSmoothing(window, kernel, boundary, alpha, normalize=normalize)
    expected = window_matrix(n, window, kernel, boundary, alpha, normalize=normalize)
    np.testing.assert_allclose(op.matrix(n), expected, rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), radius=st.integers(0, 6), kernel=st.sampled_from(["uniform", "triangular", "gaussian"]))
def test_renormalize_rows_sum_to_one_and_interior_is_symmetric(n, radius, kernel):
    A = WindowSmoothing(2 * radius + 1, kernel).matrix(n)
    np.testing.assert_allclose(A.sum(axis=1), np.ones(n), rtol=1e-14)
    interior = A[radius : n - radius, radius : n - radius]
    np.testing.assert_allclose(interior, interior.T, rtol=1e-14)


def test_gaussian_sigma_is_used():
    A = WindowSmoothing(5, "gaussian", "zero", sigma=2.0).matrix(7)
    np.testing.assert_allclose(A, window_matrix(7, 5, "gaussian", "zero", sigma=2.0), rtol=1e-14)
    assert not np.allclose(A, WindowSmoothing(5, "gaussian", "zero").matrix(7))


def test_band_holds_the_nonzero_entries_of_each_row():
    op = WindowSmoothing(3)
    band = op.band(4)
    assert isinstance(band, Band) and band.n == 4 and band.radius == 1
    assert band.offsets == ((0, 1), (-1, 0, 1), (-1, 0, 1), (-1, 0))
    assert band.weights[0] == (0.5, 0.5) and band.weights[1] == pytest.approx((1 / 3,) * 3)
    np.testing.assert_array_equal(np.array(band.dense()), op.matrix(4))
    assert op.band(4) is band  # planned once, cached


def test_window_one_and_alpha_zero_are_the_identity_band():
    assert WindowSmoothing(1, boundary="mirror").band(7).is_identity
    assert WindowSmoothing(9, "gaussian", alpha=0.0).band(7).is_identity
    assert not WindowSmoothing(3).band(7).is_identity


def test_alpha_as_a_function_of_the_step():
    op = WindowSmoothing(3, alpha=lambda step: min(1.0, step / 10))
    np.testing.assert_array_equal(op.matrix(5, step=0), np.eye(5))
    np.testing.assert_allclose(op.matrix(5, step=5), 0.5 * np.eye(5) + 0.5 * window_matrix(5), rtol=1e-14)
    with pytest.raises(ValueError, match=r"alpha\(7\) returned: 2"):
        WindowSmoothing(3, alpha=lambda step: 2).band(5, step=7)


def test_matrix_in_another_namespace_device_and_dtype(namespace_device_dtype):
    xp, device, dtype = namespace_device_dtype
    A = WindowSmoothing(3).matrix(4, xp, getattr(xp, dtype), device)
    assert A.dtype == getattr(xp, dtype) and A.shape == (4, 4)
    assert array_api_compat.device(A) == device
    on_cpu = A.cpu() if array_api_compat.is_torch_array(A) else A
    np.testing.assert_allclose(np.from_dlpack(on_cpu), window_matrix(4), rtol=1e-6 if dtype == "float32" else 1e-15)
    B = WindowSmoothing(3).matrix(4, xp=xp)
    assert B.dtype == xp.float64


def test_matrix_operator_fixed_and_callable():
    M = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]])
    op = MatrixOperator(M, alpha=0.5)
    np.testing.assert_allclose(op.matrix(3), 0.5 * np.eye(3) + 0.5 * M)
    assert op.band(3).rows[0] == ((0, 0.5), (1, 0.5))
    with pytest.raises(ValueError, match="n=4"):
        op.band(4)
    fn = MatrixOperator(lambda n: window_matrix(n, 5, "triangular", "reflect"))
    for n in (2, 6, 11):
        np.testing.assert_allclose(fn.matrix(n), window_matrix(n, 5, "triangular", "reflect"), rtol=1e-15)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(window=4), ValueError, "window should be an odd integer >= 1 but is: 4"),
        (dict(window=0), ValueError, "window should be an odd integer >= 1 but is: 0"),
        (dict(window=-3), ValueError, "but is: -3"),
        (dict(window=3.0), TypeError, "window should be an odd integer >= 1 but is: 3.0"),
        (dict(alpha=1.5), ValueError, r"alpha should be in \[0, 1\] but is: 1.5"),
        (dict(alpha=-0.1), ValueError, r"alpha should be in \[0, 1\] but is: -0.1"),
        (dict(alpha="1"), TypeError, "alpha should be a number"),
        (dict(kernel="box"), ValueError, "kernel should be one of .* but is: 'box'"),
        (dict(boundary="wrap"), ValueError, "boundary should be one of .* but is: 'wrap'"),
        (dict(kernel=[1, 2]), ValueError, r"kernel should hold an odd number of weights, .* but has 2: \[1.0, 2.0\]"),
        (dict(kernel=[1, -2, 1]), ValueError, r"kernel weights should be positive but kernel is: \[1.0, -2.0, 1.0\]"),
        (dict(kernel=[1, 2, 3]), ValueError, r"kernel should be symmetric .* but is: \[1.0, 2.0, 3.0\]"),
        (dict(kernel=["a", 1, "a"]), TypeError, "kernel weights should be positive numbers"),
        (dict(kernel="uniform", sigma=1.0), ValueError, "sigma applies only to kernel='gaussian'"),
        (dict(kernel="gaussian", sigma=0.0), ValueError, "sigma should be a positive number but is: 0.0"),
        (dict(normalize="yes"), TypeError, "normalize should be True or False but is: 'yes'"),
    ],
)
def test_bad_window_arguments_name_the_argument_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        WindowSmoothing(**kwargs)


@pytest.mark.parametrize(
    "matrix, match",
    [
        (np.ones((2, 3)), r"square n x n array but has shape \(2, 3\)"),
        (np.ones(3), r"has shape \(3,\)"),
        ([[1.0, math.nan], [0.0, 1.0]], "finite"),
    ],
)
def test_bad_matrix_is_refused(matrix, match):
    with pytest.raises(ValueError, match=match):
        MatrixOperator(matrix)


def test_callable_matrix_of_the_wrong_shape_is_refused():
    op = MatrixOperator(lambda n: np.eye(n + 1))
    with pytest.raises(ValueError, match=r"matrix\(n=3\) should have shape \(3, 3\) but has shape \(4, 4\)"):
        op.band(3)


def test_bad_n_is_refused():
    with pytest.raises(ValueError, match="n .* should be an integer >= 1 but is: 0"):
        WindowSmoothing(3).band(0)


def test_make_operator_builds_or_checks():
    assert repr(make_operator(window=5, boundary="zero")) == repr(WindowSmoothing(5, boundary="zero"))
    op = MatrixOperator(np.eye(3))
    assert make_operator(op, window=3, alpha=1.0) is op
    with pytest.raises(ValueError, match="operator replaces the window arguments.*'window': 5"):
        make_operator(op, window=5)
    with pytest.raises(TypeError, match="operator should be a gradsmooth DepthOperator .* but is: str"):
        make_operator("box")


# -- weights that would not be finite or positive: refused at construction -----------------------


@pytest.mark.parametrize(
    "kernel, match",
    [
        ([1e308] * 3, r"kernel weights should have a finite sum .* kernel is: \[1e\+308, 1e\+308, 1e\+308\]"),
        ([math.inf] * 3, r"kernel weights should be finite numbers but kernel is: \[inf, inf, inf\]"),
        ([1.0, math.nan, 1.0], r"kernel weights should be finite numbers but kernel is: \[1.0, nan, 1.0\]"),
        ([10**400, 1, 10**400], "kernel weights should be finite numbers but kernel is: "),
        ([5e-324, 2.0, 5e-324], r"kernel weights should stay positive when normalised .* \[5e-324, 2.0, 5e-324\]"),
    ],
)
def test_kernel_weights_that_overflow_or_vanish_are_refused(kernel, match):
    with pytest.raises(ValueError, match=match):
        WindowSmoothing(3, kernel)


@settings(max_examples=200, deadline=None)
@given(
    radius=st.integers(0, 6),
    sigma=st.floats(1e-300, 1e300),
    boundary=st.sampled_from(BOUNDARIES),
    normalize=st.booleans(),
    n=st.integers(1, 15),
)
def test_every_constructed_gaussian_operator_has_finite_positive_weights(radius, sigma, boundary, normalize, n):
    try:
        op = WindowSmoothing(2 * radius + 1, "gaussian", boundary, sigma=sigma, normalize=normalize)
    except ValueError as err:
        assert "sigma should be a positive number" in str(err) and repr(sigma) in str(err)
        return
    for row in op.band(n).rows:
        assert all(math.isfinite(w) and w > 0 for _, w in row)


# -- complex matrices -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "matrix", [np.eye(3, dtype=np.complex128), [[1j, 0.0], [0.0, 1.0]], np.eye(2, dtype=np.complex64)], ids=str
)
def test_complex_matrix_is_refused_naming_its_dtype(matrix):
    dtype = np.asarray(matrix).dtype
    with pytest.raises(TypeError, match=f"matrix should be a real array but has dtype {dtype}"):
        MatrixOperator(matrix)


def test_complex_or_non_finite_matrix_from_a_function_is_refused():
    with pytest.raises(TypeError, match=r"matrix\(n=3\) should be a real array but has dtype complex128"):
        MatrixOperator(lambda n: np.eye(n, dtype=complex)).band(3)
    with pytest.raises(ValueError, match=r"matrix\(n=2\) should hold finite numbers but is: \[\[inf"):
        MatrixOperator(lambda n: np.full((n, n), math.inf)).band(2)
    with pytest.raises(ValueError, match="matrix should hold finite numbers"):
        MatrixOperator([[1.0, -math.inf], [0.0, 1.0]])


@pytest.mark.parametrize("matrix", [[["1", "0"], ["0", "1"]], np.array([[1, 0], [0, 1j]], dtype=object)], ids=str)
def test_matrix_of_strings_or_complex_objects_is_refused(matrix):
    with pytest.raises(TypeError, match="matrix should be a square array of real numbers but has dtype"):
        MatrixOperator(matrix)


# -- alpha schedules --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 0.0, 1.0, np.float32(0.5), np.float64(1.0), np.array(0.25)], ids=repr)
def test_alpha_schedule_values_in_the_closed_interval_are_used(value):
    assert WindowSmoothing(3, alpha=lambda step: value).alpha_at(3) == float(value)


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan, -math.inf, np.float64(2.0)], ids=repr)
def test_alpha_schedule_out_of_range_is_a_value_error_naming_step_and_value(value):
    op = WindowSmoothing(3, alpha=lambda step: value)
    with pytest.raises(ValueError, match=r"alpha\(step\) should return a number in \[0, 1\] but alpha\(3\) returned: "):
        op.band(4, step=3)


@pytest.mark.parametrize("value", ["0.5", True, np.True_, 0.5j, np.complex128(0.5), None, [0.5], np.array([0.5, 0.5])], ids=repr)
def test_alpha_schedule_non_number_is_a_type_error_naming_step_and_value(value):
    op = WindowSmoothing(3, alpha=lambda step: value)
    with pytest.raises(TypeError, match=rf"alpha\(3\) returned: {re.escape(repr(value))}"):
        op.alpha_at(3)
