"""The eager kernels (backends/torch/eager.py): chunked, non-contiguous and low-precision members,
against the reference; their scratch; the kernel contract's guarantees for them."""

import numpy as np
import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import eager
from gradsmooth.backends.torch.bands import layout
from gradsmooth.backends.torch.contract import Members
from gradsmooth.reference import window_smooth


@pytest.mark.parametrize("contiguous", [True, False])
def test_mix_gradients_matches_reference(monkeypatch, contiguous):
    monkeypatch.setitem(eager._BLOCK_ELEMENTS, "cpu", 7 * 5)  # many small chunks
    stack = np.random.default_rng(0).standard_normal((7, 6, 4))
    members = [torch.tensor(m) for m in stack]
    if not contiguous:
        members = [torch.tensor(m.T.copy()).T for m in stack]  # transposed views: not contiguous
        assert not members[0].is_contiguous()
    op = WindowSmoothing(5, "triangular", "reflect")
    band = layout(op.band(7))
    members_ = Members("gradient", [members])
    eager.EAGER.bind(members_, band, None, eager.EAGER.scratch(members_, band))()
    expected = window_smooth(stack, 5, "triangular", "reflect")
    np.testing.assert_allclose(np.stack([m.numpy() for m in members]), expected, rtol=1e-12)


def test_mix_updates_keeps_decay_per_member(monkeypatch):
    monkeypatch.setitem(eager._BLOCK_ELEMENTS, "cpu", 6 * 3)
    rng = np.random.default_rng(1)
    theta, delta = rng.standard_normal((2, 6, 10))
    decay = np.linspace(0.9, 1.0, 6)[:, None]
    params = [torch.tensor(decay[i] * theta[i] + delta[i]) for i in range(6)]
    before = list(torch.tensor(theta).unbind(0))
    band = layout(WindowSmoothing(3).band(6), minus_identity=True)
    members = Members("update", [params, before])
    eager.EAGER.bind(members, band, torch.tensor(decay).view(-1), eager.EAGER.scratch(members, band))()
    expected = decay * theta + window_smooth(delta, 3)
    np.testing.assert_allclose(np.stack([p.numpy() for p in params]), expected, rtol=1e-12)


def test_low_precision_is_computed_in_float32_and_rounded_once():
    rng = np.random.default_rng(2)
    stack = rng.standard_normal((5, 40))
    members = [torch.tensor(m).to(torch.bfloat16) for m in stack]
    exact = window_smooth(np.stack([m.double().numpy() for m in members]), 3)  # from the bf16 values
    band = layout(WindowSmoothing(3).band(5))
    group = Members("gradient", [members])
    scratch = eager.EAGER.scratch(group, band)
    assert scratch.dtype == torch.float32
    eager.EAGER.bind(group, band, None, scratch)()
    assert all(m.dtype == torch.bfloat16 for m in members)
    got = torch.stack([m.double() for m in members])
    torch.testing.assert_close(got, torch.tensor(exact), rtol=2.0**-8, atol=0)  # half a unit in the last place


def test_scratch_is_kept_across_steps_on_a_cpu_and_grown_to_the_largest_asked():
    small = eager.scratch("test kept", 10, torch.float32, torch.device("cpu"))
    again = eager.scratch("test kept", 8, torch.float32, torch.device("cpu"))
    assert again.data_ptr() == small.data_ptr()
    larger = eager.scratch("test kept", 100, torch.float32, torch.device("cpu"))
    assert larger.numel() == 100 and small.numel() == 10  # a view bound earlier keeps its own buffer
