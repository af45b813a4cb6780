"""Shared fixtures: ``xp`` runs a test over every Array API namespace that is installed, and
every test must leave torch's and MLX's global configuration as it found it."""

import importlib
import sys
import warnings

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


def global_configuration() -> dict:
    """What a test could change for the tests after it: torch's and MLX's process-wide settings
    (read only for the frameworks already imported)."""
    config = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        config["torch"] = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_num_threads(),
                           torch.are_deterministic_algorithms_enabled(), torch.is_anomaly_enabled())
        for name in ("torch._dynamo.config", "torch._inductor.config"):
            module = sys.modules.get(name)
            if module is not None:
                with warnings.catch_warnings():  # reading deprecated entries warns
                    warnings.simplefilter("ignore")
                    # read through the module: an attribute a bad undo removed shows as missing
                    config[name] = {k: repr(getattr(module, k, "<missing>")) for k in module.get_config_copy()}
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        config["mlx"] = (str(mx.default_device()),)
    return config


@pytest.fixture(autouse=True)
def leaves_global_configuration_unchanged(request):
    """Fail a test that changes torch's or MLX's global configuration (monkeypatching a config
    module, set_default_dtype, ...): the tests after it, in any order, would see the change."""
    before = global_configuration()
    yield
    after = global_configuration()
    changed = {
        key: sorted(k for k in set(before[key]) | set(after.get(key, {})) if before[key].get(k) != after.get(key, {}).get(k))
        if isinstance(before[key], dict) else (before[key], after.get(key))
        for key in before if before[key] != after.get(key)
    }
    assert not changed, f"{request.node.nodeid} changed the global configuration: {changed}"
