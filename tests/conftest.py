"""Shared fixtures: ``xp`` runs a test over every Array API namespace that is installed."""

import importlib

import pytest

NAMESPACES = ["numpy", "array_api_strict", "torch"]


@pytest.fixture(params=NAMESPACES)
def xp(request):
    """The namespace under test (numpy, array-api-strict, torch), skipped when absent."""
    name = request.param
    module = pytest.importorskip(name)
    if name == "torch":
        return importlib.import_module("array_api_compat.torch")
    return module
