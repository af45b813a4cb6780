"""How error messages quote values (gradsmooth.describe): short values as repr, large ones by type and size."""

import numpy as np
import pytest

from gradsmooth.describe import describe


@pytest.mark.parametrize("value, text", [
    (3e-4, "0.0003"), ("yes", "'yes'"), (None, "None"), ((0.9, 0.999), "(0.9, 0.999)"), ([1, 2], "[1, 2]"),
    ({"lr": 0.1}, "{'lr': 0.1}"),
])
def test_short_values_are_quoted_as_repr(value, text):
    assert describe(value) == text


def test_arrays_by_type_shape_and_dtype_and_a_few_values_as_repr():
    assert describe(np.zeros((2, 3), dtype=np.float32)) == "ndarray of shape (2, 3), dtype float32"
    assert describe(np.zeros(100)) == "ndarray of shape (100,), dtype float64"
    assert describe(np.array([0.5, 0.5])) == "array([0.5, 0.5])" and describe(np.True_) == repr(np.True_)


def test_containers_of_arrays_by_length_and_first_item():
    groups = [{"params": [np.zeros(4)], "lr": 0.1}, {"params": [np.zeros(2)]}]
    assert describe(groups) == "list of 2 items (the first: dict with keys params, lr)"
    assert describe(list(range(100))).startswith("list of 100 items (the first: 0)")


def test_models_and_generators_are_never_iterated_or_printed():
    class Net:
        def named_parameters(self):
            raise AssertionError("not called")

    assert describe(Net()) == "a Net model"
    assert describe(Net).startswith("<class") or describe(Net).startswith("type <class")  # a class, not a model
    assert describe(x for x in range(3)) == "a generator"


def test_a_long_repr_is_cut():
    text = describe("x" * 500)
    assert len(text) <= 90 and text.startswith("str 'xxx") and text.endswith("...")
