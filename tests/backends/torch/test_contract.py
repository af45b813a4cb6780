"""The kernel contract (backends/torch/contract.py), held for every registered kernel: it mixes in
place and allocates nothing once bound (the differential test holds their results to the oracle)."""

import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import dispatch, inductor
from gradsmooth.backends.torch.arithmetic import KINDS
from gradsmooth.backends.torch.bands import layout
from gradsmooth.backends.torch.contract import Members

CASES = [(k.name, kind) for k, kinds in dispatch.KERNELS for kind in sorted(kinds)]


def _members(kind, n=4, size=(8, 8)):
    gen = torch.Generator().manual_seed(0)
    arrays = [[torch.randn(size, generator=gen).abs() for _ in range(n)] for _ in KINDS[kind].arrays]
    coefficients = {"update": torch.full((n,), 0.99), "gradient": None,
                    "adamw": torch.rand(8 * n, generator=gen) * 0.1 + 0.5,
                    "sgd": torch.rand(7 * n, generator=gen) * 0.1, "sgd-plain": torch.rand(7 * n, generator=gen) * 0.1}
    return Members(kind, arrays), coefficients[kind]


@pytest.mark.parametrize("kernel_name, kind", CASES)
def test_a_bound_call_mixes_in_place_and_allocates_nothing(kernel_name, kind, monkeypatch):
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    kernel = next(k for k, _ in dispatch.KERNELS if k.name == kernel_name)
    members, coefficients = _members(kind)
    first = members.first
    if kernel.refuses(kind, first.dtype, first.device, first.numel(), True) is not None:
        pytest.skip(f"{kernel_name} cannot run here")
    band = layout(WindowSmoothing(3).band(members.n), minus_identity=kind == "update")
    kernel.prepare(kind, band, first.dtype, first.device)
    call = kernel.bind(members, band, coefficients, kernel.scratch(members, band))
    ids = [[t.data_ptr() for t in ts] for ts in members.arrays]
    before = [[t.clone() for t in ts] for ts in members.arrays]

    def no_allocation(*args, **kwargs):
        raise AssertionError("allocated after binding")

    for name in ("empty", "zeros", "zeros_like", "empty_like", "ones", "tensor"):
        monkeypatch.setattr(torch, name, no_allocation)
    call()
    monkeypatch.undo()
    assert [[t.data_ptr() for t in ts] for ts in members.arrays] == ids  # in place
    written = {0} | {KINDS[kind].arrays.index(s) for s in KINDS[kind].state}
    for i, (ts, old) in enumerate(zip(members.arrays, before)):
        changed = any(not torch.equal(t, o) for t, o in zip(ts, old))
        assert changed == (i in written), f"array {KINDS[kind].arrays[i]} changed: {changed}"
