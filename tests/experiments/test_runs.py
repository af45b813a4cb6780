"""Summaries of a sweep: each arm's learning rate chosen on validation, the test metric there,
paired per-seed differences with a Student-t interval, win count and verdict; provenance;
deterministic runs."""

import math

import numpy as np
import pytest

from gradsmooth.experiments.runs import (RunConfig, RunResult, format_summary, paired_difference, provenance,
                                         summarize)


def result(lr, seed, smoothed, val, test, task="vit"):
    cfg = RunConfig(task=task, lr=lr, seed=seed, smoothing={"window": 3} if smoothed else None)
    keys = ("val_acc", "test_acc") if task == "vit" else ("val_loss", "test_loss")
    return RunResult(cfg, history=[{"step": 1, keys[0]: val, keys[1]: test}], complete=True)


def test_learning_rates_are_chosen_on_val_not_test():
    # on val base prefers 1e-3 and smoothed 1e-2; on test the opposite: the choice follows val
    results = [result(1e-3, 0, False, 0.80, 0.60), result(1e-3, 1, False, 0.82, 0.62),
               result(1e-2, 0, False, 0.70, 0.90), result(1e-2, 1, False, 0.72, 0.92),
               result(1e-3, 0, True, 0.75, 0.95), result(1e-3, 1, True, 0.77, 0.97),
               result(1e-2, 0, True, 0.85, 0.65), result(1e-2, 1, True, 0.89, 0.68)]
    s = summarize(results)
    assert s["metric"] == "val_acc" and s["test_metric"] == "test_acc"
    assert s["best"] == {"base": 1e-3, "smoothed": 1e-2}
    h = s["best_vs_best"]
    assert (h["base_lr"], h["smoothed_lr"]) == (1e-3, 1e-2)
    assert h["per_seed_diff"] == pytest.approx([0.05, 0.06])  # test at the chosen rates: 0.65 - 0.60, 0.68 - 0.62
    assert h["base"][0] == pytest.approx(0.61) and h["smoothed"][0] == pytest.approx(0.665)
    assert s["rows"][0]["base"][0] == pytest.approx(0.81)  # the table shows val
    text = format_summary(s)
    assert "| lr | base val_acc | smoothed val_acc |" in text and "0.8100 ± 0.0141 *" in text
    assert "test_acc at each arm's chosen learning rate (higher is better)" in text


def test_the_interval_is_students_t_over_seeds():
    from scipy import stats

    diffs = [0.01, 0.03, -0.005, 0.02, 0.015]
    p = paired_difference(diffs, higher_is_better=True)
    low, high = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert p["ci"] == pytest.approx([low, high])
    assert p["mean"] == pytest.approx(np.mean(diffs)) and p["std"] == pytest.approx(np.std(diffs, ddof=1))
    # a known case: two seeds, differences 1 and 3: mean 2, sem 1, t(0.975, 1) = 12.7062
    assert paired_difference([1.0, 3.0], True)["ci"] == pytest.approx([2 - 12.7062047, 2 + 12.7062047])


def test_the_win_count_respects_the_direction():
    assert paired_difference([0.1, -0.2, 0.3, 0.0], higher_is_better=True)["wins"] == 2
    assert paired_difference([0.1, -0.2, 0.3, 0.0], higher_is_better=False)["wins"] == 1


@pytest.mark.parametrize("diffs, higher, verdict", [
    ([0.05, 0.06, 0.055], True, "win"),
    ([0.05, 0.06, 0.055], False, "loss"),
    ([-0.05, -0.06, -0.055], False, "win"),
    ([-0.05, -0.06, -0.055], True, "loss"),
    ([0.05, -0.04, 0.01], True, "no significant difference"),
    ([0.05], True, "no significant difference"),  # one seed: no interval
])
def test_the_verdict_needs_an_interval_that_excludes_zero(diffs, higher, verdict):
    assert paired_difference(diffs, higher)["verdict"] == verdict


def test_the_headline_says_the_interval_wins_and_verdict():
    results = [result(1e-3, s, smoothed, 3.0, 3.0 - (0.1 + 0.01 * s if smoothed else 0), task="lm")
               for s in range(3) for smoothed in (False, True)]
    text = format_summary(summarize(results))
    assert "test_loss at each arm's chosen learning rate (lower is better)" in text
    assert "smoothed - base, paired over seeds [0, 1, 2]: mean -0.1100, 95% CI [" in text
    assert "smoothed better on 3 of 3 seeds; verdict: win" in text


def test_incomplete_runs_are_left_out():
    results = [result(1e-3, 0, False, 0.8, 0.8), result(1e-3, 0, True, 0.9, 0.9)]
    results.append(RunResult(RunConfig(task="vit", lr=1e-3, seed=1), history=[{"step": 1, "val_acc": 0.1, "test_acc": 0.1}]))
    h = summarize(results)["best_vs_best"]
    assert h["seeds"] == [0] and h["n"] == 1 and math.isnan(h["ci"][0])


def test_a_run_survives_json():
    r = result(1e-3, 2, True, 0.8, 0.7)
    r.history.append({"step": 2, "val_acc": math.nan, "test_acc": 0.5})
    entry = r.to_json()
    entry["history"][1]["val_acc"] = None  # as strict JSON writes NaN
    back = RunResult.from_json(entry)
    assert back.config == r.config and back.complete and math.isnan(back.history[1]["val_acc"])


def test_provenance_names_the_command_commit_threads_and_seeds():
    p = provenance(["compare", "--out", "my dir"], "torch", [0, 1])
    assert p["command"] == "gradsmooth compare --out 'my dir'" and p["seeds"] == [0, 1]
    assert p["threads"]["torch"] >= 1
    assert p["git_commit"] is None or len(p["git_commit"]) == 40
    assert "torch" not in provenance([], "mlx", [0])["threads"]


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
    first, second = run(config, data), run(config, data)
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
