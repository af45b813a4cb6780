"""Runs: a run survives JSON; two runs of one config are identical (deterministic on a CPU)."""

import math

import pytest

from gradsmooth.experiments.runs import RunConfig, RunResult


def test_a_run_survives_json():
    r = RunResult(RunConfig(task="vit", lr=1e-3, seed=2, smoothing={"window": 3}),
                  history=[{"step": 1, "val_acc": 0.8, "test_acc": 0.7}], complete=True)
    r.history.append({"step": 2, "val_acc": math.nan, "test_acc": 0.5})
    entry = r.to_json()
    entry["history"][1]["val_acc"] = None  # as strict JSON writes NaN
    back = RunResult.from_json(entry)
    assert back.config == r.config and back.complete and math.isnan(back.history[1]["val_acc"])


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("task", ["vit", "lm"])
def test_two_runs_of_one_config_give_identical_histories(backend, task, tmp_path):
    pytest.importorskip("torch" if backend == "torch" else "mlx.core")
    pytest.importorskip("sklearn")
    from gradsmooth.experiments.data import load_digits_split, load_text
    from gradsmooth.experiments.runs import run

    if task == "vit":
        data = load_digits_split(val_fraction=0.2)
    else:
        (tmp_path / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
        data = load_text(str(tmp_path / "t.txt"), 8, test_fraction=0.1)
    config = RunConfig(task=task, backend=backend, steps=3, eval_every=1, batch_size=4, context=8, depth=2, width=16,
                       smoothing={"window": 3})
    first, second = run(config, data, diagnose=True), run(config, data)  # the diagnostics change nothing
    assert first.complete and first.history == second.history
    assert {"val_" + ("acc" if task == "vit" else "loss"), "test_" + ("acc" if task == "vit" else "loss")} <= set(
        first.history[-1])


def test_a_torch_run_restores_the_deterministic_setting():
    torch = pytest.importorskip("torch")
    from gradsmooth.experiments import torch_models

    before = torch.are_deterministic_algorithms_enabled()
    with torch_models.deterministic():
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_a_run_with_an_alpha_schedule_and_a_phase1_survives_json():
    from gradsmooth.experiments.loop import AlphaSchedule
    from gradsmooth.results import strict

    schedule = AlphaSchedule("cosine", 1.0, 0.0, 300)
    r = RunResult(RunConfig(task="rl", smoothing={"window": 3, "alpha": schedule}, group=4, device="cpu"),
                  history=[{"step": 0, "val_acc": 0.3}], complete=True,
                  phase1={"steps": 650, "val_acc": 0.31, "reached": True, "seconds": 24.0})
    entry = strict(r.to_json())
    assert entry["config"]["smoothing"]["alpha"] == {"kind": "cosine", "start": 1.0, "final": 0.0, "steps": 300}
    back = RunResult.from_json(entry)
    assert back.config == r.config and back.config.smoothing["alpha"] is not schedule and back.phase1 == r.phase1
    assert RunResult.from_json({"config": {"task": "vit"}}).phase1 is None  # written before phase 1 was
