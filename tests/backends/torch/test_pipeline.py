"""Pipeline stages (backends/torch/pipeline.py): one stage's mixing in one process (the
exchange between stages is tested with two ranks in test_distributed.py)."""

import copy

import pytest
import torch

from gradsmooth.backends.torch import GradientSmoothing, PipelineStages
from gradsmooth.backends.torch.pipeline import mix_stage, stage_layout
from gradsmooth import WindowSmoothing


def _ulps(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """|a - b| in units of bfloat16's last place at the larger of |a|, |b| and |scale| (the
    parameter before the step: near a result of zero, the sums' terms set the rounding)."""
    big = torch.maximum(torch.maximum(a.abs(), b.abs()), scale.abs()).to(torch.bfloat16)
    ulp = torch.nextafter(big, torch.tensor(float("inf"), dtype=torch.bfloat16)).float() - big.float()
    return (a.float() - b.float()).abs() / ulp


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_a_stage_mixes_low_precision_in_float32_and_rounds_once_as_the_eager_path(tiny_net, process_group, mode):
    # before, a stage mixed bfloat16 deltas in bfloat16 and rounded twice: off by a unit in the
    # last place in a large share of the elements
    models = [tiny_net(dtype=torch.bfloat16, seed=1), tiny_net(dtype=torch.bfloat16, seed=1)]
    opts = [GradientSmoothing(torch.optim.SGD(models[0].parameters(), lr=0.5), models[0], mode=mode, fused=False),
            GradientSmoothing(torch.optim.SGD(models[1].parameters(), lr=0.5), models[1], mode=mode,
                              pipeline=PipelineStages(len(models[1].blocks), 0))]
    gen = torch.Generator().manual_seed(0)
    grads = {k: torch.randn(p.shape, generator=gen).to(torch.bfloat16) for k, p in models[0].named_parameters()}
    before = [p.detach().clone() if mode == "update" else grads[k] for k, p in models[0].named_parameters()]
    for m, o in zip(models, opts):
        for k, p in m.named_parameters():
            p.grad = grads[k].clone()
        o.step()
    got = [p.detach() if mode == "update" else p.grad for p in models[1].parameters()]
    want = [p.detach() if mode == "update" else p.grad for p in models[0].parameters()]
    ulps = torch.cat([_ulps(a, b, s).view(-1) for a, b, s in zip(got, want, before)])
    assert float(ulps.max()) <= 1.0  # the sums' order differs: a rare last-place tie
    assert float((ulps > 0).float().mean()) < 0.02


def test_mix_stage_applies_the_global_band_over_received_members():
    band = WindowSmoothing(3).band(6)
    members = [torch.full((2,), float(j)) for j in range(6)]
    own, before, after = members[2:4], members[1:2], members[4:5]
    mix_stage(band, 2, own, (before, after))  # in place, by the eager kernel
    torch.testing.assert_close(torch.stack(own), torch.tensor([[2.0, 2.0], [3.0, 3.0]]))
    assert before[0].tolist() == [1.0, 1.0] and after[0].tolist() == [4.0, 4.0]  # received members kept
    with pytest.raises(ValueError, match="reaches past the neighbouring stages"):
        mix_stage(band, 2, own, ([], after))


def test_the_stage_layout_is_the_global_rows_and_identity_for_received_members():
    band = WindowSmoothing(3).band(6)
    stage = stage_layout(band, 2, 2, (1, 1))
    assert stage.pattern == ((0,), (0, 1, 2), (1, 2, 3), (3,))
    assert stage.values == (1.0, *(w for _, w in band.rows[2]), *(w for _, w in band.rows[3]), 1.0)


def test_a_stage_needs_every_gradient(tiny_net, process_group):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model,
                            pipeline=PipelineStages(len(model.blocks), 0))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    model.blocks[1].attn.weight.grad = None
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"pipeline stages smooth every block at every step, but 'blocks.1.attn.weight'"):
        opt.step()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
