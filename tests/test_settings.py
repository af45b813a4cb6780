"""The smoothing options, declared, checked and documented once (gradsmooth.settings)."""

import re

import pytest

from gradsmooth import WindowSmoothing
from gradsmooth.operators import WINDOW_OPTIONS
from gradsmooth.settings import OPTIONS, Settings, SmoothingOptions


def test_every_option_is_declared_documented_and_typed_once():
    assert set(OPTIONS) == set(SmoothingOptions.__annotations__)
    assert set(WINDOW_OPTIONS) <= set(OPTIONS)
    assert {f for f in Settings.__dataclass_fields__} | set(WINDOW_OPTIONS) == set(OPTIONS)


def test_of_builds_the_operator_and_keeps_the_rest():
    s = Settings.of({"window": 5, "kernel": "triangular", "mode": "gradient", "fused": False},
                    takes=("mode", "fused"), who="test")
    assert s.mode == "gradient" and s.fused is False and s.operator.window == 5
    op = WindowSmoothing(3, alpha=0.5)
    assert Settings.of({"operator": op}, takes=("operator",), who="test").operator is op
    assert Settings.of({}, takes=(), who="test").summary() == {
        "mode": "update", "operator": repr(WindowSmoothing()), "check_finite": False, "fused": None}


@pytest.mark.parametrize("options, error, message", [
    ({"mode": "grad"}, ValueError, r"mode should be one of \('update', 'gradient'\) but is: 'grad'"),
    ({"fused": 1}, TypeError, r"fused should be None, True or False but is: 1$"),
    ({"check_finite": "yes"}, TypeError, r"check_finite should be True or False but is: 'yes'$"),
    ({"decoupled_decay": 3}, TypeError, r"decoupled_decay should be None, True, False or a function"),
    ({"window": 2}, ValueError, r"window should be an odd integer >= 1 but is: 2"),
    ({"windw": 3}, TypeError, r"test got an unexpected keyword argument 'windw'; its options: check_finite, .*window"),
    ({"stacks": "layers"}, TypeError, r"test has no option 'stacks': use something else$"),
    ({"operator": WindowSmoothing(3), "window": 5}, ValueError, r"operator replaces the window arguments"),
])
def test_a_bad_option_is_refused_by_name_and_value(options, error, message):
    takes = ("mode", "check_finite", "decoupled_decay", "operator", "fused")
    with pytest.raises(error, match=message):
        Settings.of(options, takes=takes, who="test", instead={"stacks": "use something else"})


def test_the_adapters_take_their_options_from_it():
    torch = pytest.importorskip("torch")
    from gradsmooth.backends.torch import GradientSmoothing, SmoothedAdamW

    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(3))})
    with pytest.raises(TypeError, match=re.escape("SmoothedAdamW has no option 'mode': it smooths AdamW's update")):
        SmoothedAdamW(model, mode="gradient")
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, window=5, mode="gradient")
    assert isinstance(opt.settings, Settings) and opt.settings.operator.window == 5 and opt.mode == "gradient"
