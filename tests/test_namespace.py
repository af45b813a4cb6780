"""The Array API namespace of arrays (gradsmooth.namespace): found from the arrays, one per call."""

import importlib

import numpy as np
import pytest

from gradsmooth import array_namespace as exported
from gradsmooth.namespace import array_namespace, is_floating


def test_the_package_exports_this_array_namespace():
    assert exported is array_namespace


def test_numpy_arrays_and_scalars_get_the_compat_numpy_namespace():
    compat_numpy = importlib.import_module("array_api_compat.numpy")
    assert array_namespace(np.ones(2)) is compat_numpy
    assert array_namespace(np.float32(1.0)) is compat_numpy
    assert array_namespace(np.ones(2), np.zeros((3, 1), dtype=np.float32)) is compat_numpy


def test_array_api_strict_arrays_get_array_api_strict():
    strict = pytest.importorskip("array_api_strict")
    assert array_namespace(strict.ones(2)) is strict
    assert array_namespace(strict.ones(2), strict.zeros(3, device=strict.Device("device1"))) is strict


def test_torch_tensors_get_the_compat_torch_namespace():
    torch = pytest.importorskip("torch")
    compat_torch = importlib.import_module("array_api_compat.torch")
    assert array_namespace(torch.ones(2)) is compat_torch
    assert array_namespace(torch.ones(2), torch.zeros(3, dtype=torch.float16)) is compat_torch


@pytest.mark.parametrize("other", ["array_api_strict", "torch"])
def test_arrays_of_two_namespaces_are_refused(other):
    module = pytest.importorskip(other)
    with pytest.raises(TypeError):
        array_namespace(np.ones(2), module.ones(2))
    with pytest.raises(TypeError):
        array_namespace(module.ones(2), np.ones(2))


@pytest.mark.parametrize("value", [[1.0, 2.0], (1.0,), "abc", None, 1.0, 3, object()], ids=repr)
def test_what_is_not_an_array_is_refused(value):
    with pytest.raises(TypeError):
        array_namespace(value)


def test_no_argument_is_refused():
    with pytest.raises(TypeError):
        array_namespace()


@pytest.mark.parametrize(
    "dtype, floating",
    [
        ("float32", True), ("float64", True), ("complex64", True), ("complex128", True),
        ("int8", False), ("int32", False), ("int64", False), ("uint8", False), ("bool", False),
    ],
)
def test_is_floating_is_true_for_real_and_complex_floating_dtypes(xp, dtype, floating):
    x = xp.asarray([0, 1], dtype=getattr(xp, dtype))
    assert is_floating(x) is floating


def test_is_floating_of_numpy_float16_and_of_a_zero_dimensional_array():
    assert is_floating(np.ones(3, dtype=np.float16)) is True
    assert is_floating(np.asarray(1.0)) is True
    assert is_floating(np.asarray(1)) is False


def test_is_floating_refuses_what_is_not_an_array():
    with pytest.raises(TypeError):
        is_floating([1.0, 2.0])
