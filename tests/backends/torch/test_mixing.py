"""The torch mixing kernels: chunked, non-contiguous and low-precision members, against the reference."""

import numpy as np
import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import mixing
from gradsmooth.reference import window_smooth


@pytest.mark.parametrize("contiguous", [True, False])
def test_mix_gradients_matches_reference(monkeypatch, contiguous):
    monkeypatch.setitem(mixing._BLOCK_ELEMENTS, "cpu", 7 * 5)  # many small chunks
    stack = np.random.default_rng(0).standard_normal((7, 6, 4))
    members = [torch.tensor(m) for m in stack]
    if not contiguous:
        members = [torch.tensor(m.T.copy()).T for m in stack]  # transposed views: not contiguous
        assert not members[0].is_contiguous()
    op = WindowSmoothing(5, "triangular", "reflect")
    mixing.mix_gradients(mixing.band_program(op.band(7)), members)
    expected = window_smooth(stack, 5, "triangular", "reflect")
    np.testing.assert_allclose(np.stack([m.numpy() for m in members]), expected, rtol=1e-12)


def test_mix_updates_keeps_decay_per_member(monkeypatch):
    monkeypatch.setitem(mixing._BLOCK_ELEMENTS, "cpu", 6 * 3)
    rng = np.random.default_rng(1)
    theta, delta = rng.standard_normal((2, 6, 10))
    decay = np.linspace(0.9, 1.0, 6)[:, None]
    params = [torch.tensor(decay[i] * theta[i] + delta[i]) for i in range(6)]
    before = torch.tensor(theta)
    op = WindowSmoothing(3)
    mixing.mix_updates(mixing.band_program(op.band(6), minus_identity=True), params, before, torch.tensor(decay))
    expected = decay * theta + window_smooth(delta, 3)
    np.testing.assert_allclose(np.stack([p.numpy() for p in params]), expected, rtol=1e-12)
