"""Shared fixtures: ``xp`` runs a test over every Array API namespace that is installed,
``namespace_device_dtype`` over every (namespace, device, dtype) combination (as scikit-learn's
``yield_namespace_device_dtype_combinations``), and every test must leave torch's and MLX's
global configuration as it found it."""

import importlib
import sys
import warnings

import array_api_compat
import pytest

NAMESPACES = ["numpy", "array_api_strict", "torch"]


def namespace(name: str):
    """The Array API namespace called ``name`` (torch through array-api-compat), skipped when absent."""
    module = pytest.importorskip(name)
    if name == "torch":
        return importlib.import_module("array_api_compat.torch")
    return module


@pytest.fixture(params=NAMESPACES)
def xp(request):
    """The namespace under test (numpy, array-api-strict, torch), skipped when absent."""
    return namespace(request.param)


def namespace_device_dtype_combinations():
    """``(namespace, device, dtype)`` names to test, as scikit-learn's
    ``yield_namespace_device_dtype_combinations``: numpy on the CPU; array-api-strict on its
    default CPU device and on a second device (``device1``); torch on the CPU, CUDA and MPS
    (skipped where the machine has none); each in float32 and float64. Names only: nothing is
    imported to collect them."""
    devices = {"numpy": ["cpu"], "array_api_strict": ["CPU_DEVICE", "device1"], "torch": ["cpu", "cuda", "mps"]}
    for name in NAMESPACES:
        for device in devices[name]:
            for dtype in ("float32", "float64"):
                yield name, device, dtype


def _device(xp, name: str, device: str):
    """The device called ``device`` of namespace ``xp``, as ``array_api_compat.device`` reports
    it for an array made there (``"cuda"`` -> ``cuda:0``); skip the test when it is absent."""
    if name == "array_api_strict":
        device = xp.Device(device)
    elif name == "torch":
        torch = pytest.importorskip("torch")
        if device == "cuda" and not torch.cuda.is_available():
            pytest.skip("torch has no CUDA device here")
        if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            pytest.skip("torch has no MPS device here")
    return array_api_compat.device(xp.empty((0,), device=device))


@pytest.fixture(params=list(namespace_device_dtype_combinations()), ids=lambda p: "-".join(p))
def namespace_device_dtype(request):
    """``(xp, device, dtype_name)``: a namespace (torch through array-api-compat), one of its
    devices as ``array_api_compat.device`` reports it, and ``"float32"`` or ``"float64"``
    (``getattr(xp, dtype_name)``); skipped when the namespace or device is absent, and for
    float64 on MPS, which has none."""
    name, device, dtype_name = request.param
    xp = namespace(name)
    found = _device(xp, name, device)
    if name == "torch" and device == "mps" and dtype_name == "float64":
        pytest.skip("MPS has no float64")
    return xp, found, dtype_name


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


@pytest.fixture
def quick_phase1(monkeypatch):
    """The rl task's phase 1 in a few steps (a tiny model does not reach its target: the warning
    says so); the seeds it was trained for, in order."""
    from gradsmooth.experiments import reasoning

    monkeypatch.setattr(reasoning, "SFT_MAX_STEPS", 4)
    monkeypatch.setattr(reasoning, "SFT_CHECK", 2)
    calls = []
    train_phase1 = reasoning.train_phase1
    monkeypatch.setattr(reasoning, "train_phase1", lambda *a: calls.append(a[-2]) or train_phase1(*a))
    return calls
