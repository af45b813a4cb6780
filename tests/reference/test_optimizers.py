"""The reference base optimizers against PyTorch's, step by step in float64."""

import numpy as np
import pytest

from gradsmooth.reference import SGD, Adam, AdamW, Muon, Partition

torch = pytest.importorskip("torch")

SHAPES = {"a": (5, 3), "b": (4,), "c": (3, 6)}
STEPS = 20


def run_both(make_torch, reference, shapes=SHAPES, steps=STEPS, seed=0):
    """Step a torch optimizer and the reference on the same gradients; yield both params per step."""
    rng = np.random.default_rng(seed)
    init = {k: rng.standard_normal(s) for k, s in shapes.items()}
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    opt = make_torch(tparams)
    params = dict(init)
    for t in range(steps):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}
        if t % 7 == 3:
            grads["b"] = None  # no gradient at this step: both skip it
        for k, p in tparams.items():
            p.grad = None if grads[k] is None else torch.tensor(grads[k])
        opt.step()
        params = reference.step(params, grads)
        yield {k: p.detach().numpy() for k, p in tparams.items()}, params


CASES = {
    "sgd": (lambda p: torch.optim.SGD(p.values(), lr=0.1), SGD(lr=0.1)),
    "sgd-momentum-dampening-wd": (
        lambda p: torch.optim.SGD(p.values(), lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        SGD(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    ),
    "sgd-nesterov": (
        lambda p: torch.optim.SGD(p.values(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    ),
    "adam-l2": (lambda p: torch.optim.Adam(p.values(), lr=0.01, weight_decay=0.1), Adam(lr=0.01, weight_decay=0.1)),
    "adam-amsgrad": (
        lambda p: torch.optim.Adam(p.values(), lr=0.01, betas=(0.8, 0.9), amsgrad=True),
        Adam(lr=0.01, betas=(0.8, 0.9), amsgrad=True),
    ),
    "adam-decoupled": (
        lambda p: torch.optim.Adam(p.values(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        Adam(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    ),
    "adamw-foreach": (
        lambda p: torch.optim.AdamW(p.values(), lr=0.01, weight_decay=0.1, foreach=True),
        AdamW(lr=0.01, weight_decay=0.1),
    ),
    "adamw-fused": (
        lambda p: torch.optim.AdamW(p.values(), lr=0.01, weight_decay=0.1, fused=True),
        AdamW(lr=0.01, weight_decay=0.1),
    ),
    "adamw-amsgrad": (
        lambda p: torch.optim.AdamW(p.values(), lr=0.01, amsgrad=True, foreach=False),
        AdamW(lr=0.01, amsgrad=True),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_matches_torch_float64(case):
    make_torch, reference = CASES[case]
    for got, expected in run_both(make_torch, reference):
        for k in SHAPES:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_plus_adamw_matches_torch_to_bfloat16_precision(adjust_lr_fn, nesterov):
    # torch.optim.Muon runs Newton-Schulz in bfloat16 (8 bits of mantissa); the reference in
    # float64. bfloat16 rounding (2^-8) compounds over the five iterations of a quintic that is
    # not converged, so each step's orthogonalised update differs by up to ~5e-2 of its largest
    # entry (measured: 0.037 on entries of 0.62), and the parameters drift by at most that times
    # the adjusted lr per step: the tolerance below is sized for that.
    lr = 0.02
    muon_kw = dict(lr=lr, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)

    def make_torch(p):
        muon = torch.optim.Muon([p["a"], p["c"]], **muon_kw)
        adamw = torch.optim.AdamW([p["b"]], lr=0.01)

        class Both:
            def step(self):
                muon.step()
                adamw.step()

        return Both()

    reference = Partition({"muon": Muon(**muon_kw), "adamw": AdamW(lr=0.01)}, lambda n: "adamw" if n == "b" else "muon")
    for t, (got, expected) in enumerate(run_both(make_torch, reference, steps=8), start=1):
        np.testing.assert_allclose(got["b"], expected["b"], rtol=1e-12)
        for k in ("a", "c"):
            scale = lr * np.sqrt(max(1, SHAPES[k][0] / SHAPES[k][1])) * (1 if adjust_lr_fn is None else 5)
            np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=8e-2 * scale * t, err_msg=k)


def test_newton_schulz_orthogonalises():
    from gradsmooth.reference import newton_schulz

    x = np.random.default_rng(0).standard_normal((6, 10))
    s = np.linalg.svd(newton_schulz(x), compute_uv=False)
    assert np.all((s > 0.5) & (s < 1.5))  # the quintic's known band around 1
