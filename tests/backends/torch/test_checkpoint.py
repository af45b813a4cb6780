"""The wrapper's state-dict format (backends/torch/checkpoint.py): the bases' dicts in the standard
shape with "gradsmooth" in each group, checked whole and loaded all or none."""

import pytest
import torch

from gradsmooth.backends.torch import checkpoint


def _bases():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opts = [torch.optim.SGD([a], lr=0.1, momentum=0.9), torch.optim.SGD([b], lr=0.2, momentum=0.9)]
    for p, o in zip((a, b), opts):
        p.grad = torch.ones_like(p)
        o.step()
    return opts


def test_pack_numbers_parameters_across_bases_and_split_undoes_it():
    bases = _bases()
    packed = checkpoint.pack(bases, {"step": 3, "mode": "update"})
    assert [g["params"] for g in packed["param_groups"]] == [[0], [1]] and set(packed["state"]) == {0, 1}
    assert all(g["gradsmooth"] == {"step": 3, "mode": "update"} for g in packed["param_groups"])
    assert checkpoint.checked_own_state(packed["param_groups"]) == (3, {"step": 3, "mode": "update"})
    parts = checkpoint.split(packed["param_groups"], packed["state"], bases)
    assert [list(p["state"]) for p in parts] == [[0], [0]] and "gradsmooth" not in parts[1]["param_groups"][0]


@pytest.mark.parametrize("groups, message", [
    ([{"params": [0], "gradsmooth": {"step": -1}}], r"\['step'\] should be an integer >= 0 but is: -1"),
    ([{"params": [0], "gradsmooth": "x"}], r"should be a dict with a 'step'"),
    ([{"params": [0], "gradsmooth": {"step": 1}}, {"params": [1], "gradsmooth": {"step": 2}}], r"disagree"),
])
def test_a_bad_own_state_is_refused(groups, message):
    with pytest.raises(ValueError, match=message):
        checkpoint.checked_own_state(groups)


def test_a_failed_load_gives_the_loaded_bases_their_state_back(monkeypatch):
    bases = _bases()
    before = [b.state_dict() for b in bases]
    parts = checkpoint.split(*(lambda p: (p["param_groups"], p["state"]))(checkpoint.pack(bases, {"step": 1})), bases)
    parts[0]["state"][0]["momentum_buffer"] = torch.zeros(2)
    monkeypatch.setattr(bases[1], "load_state_dict", lambda sd: (_ for _ in ()).throw(RuntimeError("disk")))
    with pytest.raises(RuntimeError, match="disk"):
        checkpoint.load_all_or_none(bases, parts)
    assert torch.equal(bases[0].state_dict()["state"][0]["momentum_buffer"], before[0]["state"][0]["momentum_buffer"])


def test_other_settings_warn_once_naming_both_and_addresses_do_not_count():
    with pytest.warns(UserWarning, match=r"saved with operator=A; this wrapper uses operator=B"):
        checkpoint.warn_other_settings({"operator": "A", "mode": "update"}, {"operator": "B", "mode": "update"})
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checkpoint.warn_other_settings({"operator": "f at 0x1"}, {"operator": "f at 0x2", "mode": "update"})
