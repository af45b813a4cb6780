"""Planning on the torch side (backends/torch/groups.py): owners, Muon's rule, decay factors, the
warning for a plan that smooths nothing."""

import pytest
import torch

from gradsmooth.backends.torch.blocks import ModelParameters
from gradsmooth.backends.torch.groups import check_muon, decay_factors, owners, unclassified, warn_if_nothing_smoothed


def _model():
    return torch.nn.ModuleDict({"layers": torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))})


def test_a_parameter_claimed_by_two_optimizers_is_refused_by_name():
    model = _model()
    params = ModelParameters.of(model, from_structure=True)
    w = model["layers"][0].weight
    with pytest.raises(ValueError, match=r"parameter 'layers.0.weight' is claimed by two optimizers: 0 and 1"):
        owners([torch.optim.SGD([w], lr=0.1), torch.optim.SGD([w], lr=0.1)], params)
    with pytest.raises(ValueError, match="optimizer does not own any parameter of model"):
        owners([torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)], params)


def test_muon_takes_matrices_only():
    muon = torch.optim.Muon([torch.nn.Parameter(torch.ones(2, 2))], lr=0.02)
    with pytest.raises(ValueError, match=r"Muon handles 2-D parameters only, but optimizer 0 holds 'b' of shape \(4,\)"):
        check_muon(muon, 0, torch.ones(4), "b")


def test_decay_factors_follow_each_groups_rule_at_this_step():
    model = _model()
    weights = [m.weight for m in model["layers"]]
    biases = [m.bias for m in model["layers"]]
    adamw = torch.optim.AdamW([{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0}],
                              lr=0.5)
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1, weight_decay=0.2)
    factors = decay_factors([adamw, sgd], None)
    assert {factors[id(w)] for w in weights} == {1 - 0.5 * 0.1} and {factors[id(b)] for b in biases} == {1.0}
    assert set(factors.values()) == {1 - 0.5 * 0.1, 1.0}  # SGD's L2 decay is coupled: 1
    adamw.param_groups[0]["lr"] = 0.25  # read at the step: a scheduler's change counts
    assert decay_factors([adamw], None)[id(weights[0])] == 1 - 0.25 * 0.1
    assert decay_factors([adamw], lambda g: 0.5)[id(weights[0])] == 0.5
    unknown = type("Fancy", (torch.optim.SGD,), {"__module__": "mylib"})([torch.nn.Parameter(torch.ones(1))], lr=0.1,
                                                                         weight_decay=0.1)
    assert unclassified([adamw, unknown], None) == [] and decay_factors([unknown], None)  # SGD's subclass: coupled


def test_nothing_smoothed_warns_with_the_callers_line():
    from gradsmooth import find_blocks

    with pytest.warns(UserWarning, match="smooths nothing") as caught:
        warn_if_nothing_smoothed(find_blocks({"w": (2,)}), stacklevel=1)
    assert caught[0].filename == __file__
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_nothing_smoothed(find_blocks({f"layers.{i}.w": (2,) for i in range(3)}), stacklevel=1)
