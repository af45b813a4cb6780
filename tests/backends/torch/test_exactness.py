"""The torch adapter against the NumPy reference oracle, step by step, and against its base."""

import copy

import numpy as np
import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import GradientSmoothing
from gradsmooth.reference import SGD, AdamW, Muon, Partition, Smoothed

STEPS = 50
DROPPED = "blocks.3.attn.weight"  # has no gradient every tenth step: left out of that step's window


def drive(model, opt, reference, steps=STEPS, seed=0, device="cpu"):
    """Feed the same random gradients to ``opt`` and the reference; yield both parameter sets."""
    named = dict(model.named_parameters())
    params = {k: p.detach().cpu().numpy().copy() for k, p in named.items()}
    rng = np.random.default_rng(seed)
    for t in range(steps):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        if t % 10 == 4:
            grads[DROPPED] = None
        for k, p in named.items():
            p.grad = None if grads[k] is None else torch.tensor(grads[k], dtype=p.dtype, device=device)
        opt.step()
        params = reference.step(params, grads)
        yield t, {k: p.detach().cpu().double().numpy() for k, p in named.items()}, params


def assert_tracks(model, opt, reference, steps=STEPS, device="cpu"):
    """Every parameter equals the float64 reference after every step."""
    for t, got, expected in drive(model, opt, reference, steps=steps, device=device):
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-13, err_msg=f"{k} at step {t}")


def float64_device(device):
    if device.type == "mps":
        pytest.skip("MPS has no float64")
    return device


BASES = {
    "sgd-momentum": (
        lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda: SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    "adamw": (
        lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1),
        lambda: AdamW(lr=0.01, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("boundary", ["renormalize", "nearest", "reflect"])
@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_matches_reference_float64(tiny_net, device, base, mode, boundary):
    device = float64_device(device)
    model = tiny_net(device=device)
    make_torch, make_ref = BASES[base]
    opt = GradientSmoothing(make_torch(model), model, window=3, boundary=boundary, mode=mode)
    groups = [g.names for g in opt.plan.groups]
    reference = Smoothed(make_ref(), groups, mode=mode, window=3, boundary=boundary)
    assert_tracks(model, opt, reference, device=device)


def test_matches_reference_with_a_wide_triangular_window_and_alpha_schedule(tiny_net):
    model = tiny_net()
    alpha = lambda step: min(1.0, 0.1 + step / 20)  # noqa: E731
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=5, kernel="triangular",
                            boundary="mirror", alpha=alpha)
    reference = Smoothed(AdamW(lr=0.01), [g.names for g in opt.plan.groups], window=5, kernel="triangular",
                         boundary="mirror", alpha=alpha)
    assert_tracks(model, opt, reference, steps=30)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_muon_plus_adamw_matches_reference_to_bfloat16_precision(tiny_net, mode):
    # torch.optim.Muon runs Newton-Schulz in bfloat16, the reference in float64: each step's
    # orthogonalised update differs by up to ~5e-2 of its largest entry (see
    # tests/reference/test_optimizers.py), so parameters may drift by that times lr per step.
    model = tiny_net()
    is_muon = lambda name, p: p.ndim == 2  # noqa: E731
    named = dict(model.named_parameters())
    muon_kw = dict(lr=0.01, weight_decay=0.1, momentum=0.9)
    bases = [
        torch.optim.Muon([p for k, p in named.items() if is_muon(k, p)], **muon_kw),
        torch.optim.AdamW([p for k, p in named.items() if not is_muon(k, p)], lr=0.01),
    ]
    opt = GradientSmoothing(bases, model, mode=mode)
    owner = lambda name: "muon" if named[name].ndim == 2 else "adamw"  # noqa: E731
    reference = Smoothed(Partition({"muon": Muon(**muon_kw), "adamw": AdamW(lr=0.01)}, owner),
                         [g.names for g in opt.plan.groups], mode=mode)
    for t, got, expected in drive(model, opt, reference, steps=10):
        for k in expected:
            if owner(k) == "adamw":
                np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-13, err_msg=f"{k} at step {t}")
            else:
                scale = 0.01 * np.sqrt(max(1, named[k].shape[0] / named[k].shape[1]))
                np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=8e-2 * scale * (t + 1), err_msg=k)


# -- alpha = 0 and window = 1 are the base, bit for bit -----------------------------------------


def muon_adamw(model, **kw):
    mats = [p for n, p in model.named_parameters() if p.ndim == 2]
    rest = [p for n, p in model.named_parameters() if p.ndim != 2]
    return [torch.optim.Muon(mats, lr=0.02, **kw), torch.optim.AdamW(rest, lr=0.01)]


IDENTITY_BASES = {
    "sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=0.01, weight_decay=0.01),
    "adamw-foreach": lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, foreach=True),
    "adamw-fused": lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, fused=True),
    "muon+adamw": muon_adamw,
}


def step_all(opts):
    for o in opts if isinstance(opts, list) else [opts]:
        o.step()


@pytest.mark.parametrize("identity", [dict(alpha=0.0), dict(window=1), dict(operator=WindowSmoothing(5, alpha=0.0))])
@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("base", sorted(IDENTITY_BASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identity_settings_reproduce_the_base_bit_for_bit(tiny_net, device, base, mode, identity, dtype):
    if dtype == torch.float64:
        device = float64_device(device)
    make = IDENTITY_BASES[base]
    model_a = tiny_net(dtype=dtype, device=device)
    model_b = copy.deepcopy(model_a)
    plain = make(model_a)
    wrapped = GradientSmoothing(make(model_b), model_b, mode=mode, **identity)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=gen, dtype=dtype).to(device)
    for _ in range(5):
        for m in (model_a, model_b):
            m.zero_grad()
            m(x).pow(2).mean().backward()
        step_all(plain)
        wrapped.step()
    for (k, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_decoupled_decay_is_never_mixed(tiny_net, mode):
    # every block gets the same gradient; under renormalize the smoothed step equals the base
    # step only if each layer's decay acts on its own weights (it would not, were decay mixed)
    model_a = tiny_net()
    model_b = copy.deepcopy(model_a)
    plain = torch.optim.AdamW(model_a.parameters(), lr=0.1, weight_decay=0.5)
    wrapped = GradientSmoothing(torch.optim.AdamW(model_b.parameters(), lr=0.1, weight_decay=0.5), model_b,
                                window=5, mode=mode)
    for step in range(3):
        torch.manual_seed(step)
        shared = {name.split(".", 2)[2]: torch.randn_like(p) for name, p in model_a.blocks[0].named_parameters(prefix="blocks.0")}
        for model in (model_a, model_b):
            for name, p in model.named_parameters():
                role = name.split(".", 2)[2] if name.startswith("blocks.") else None
                p.grad = shared[role].clone() if role in shared else torch.ones_like(p)
        plain.step()
        wrapped.step()
    for (k, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14, msg=k)
