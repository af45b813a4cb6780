"""Summaries of a sweep: mean and std per learning rate, best of each arm, best vs best per seed."""

import math

import pytest

from gradsmooth.experiments.runs import RunConfig, RunResult, format_summary, summarize


def result(lr, seed, smoothed, acc):
    cfg = RunConfig(task="vit", lr=lr, seed=seed, smoothing={"window": 3} if smoothed else None)
    return RunResult(cfg, history=[{"step": 1, "test_acc": acc}], complete=True)


def test_best_vs_best_pairs_seeds_at_each_arms_best_rate():
    results = [result(1e-3, 0, False, 0.80), result(1e-3, 1, False, 0.82),
               result(1e-2, 0, False, 0.70), result(1e-2, 1, False, 0.72),
               result(1e-3, 0, True, 0.75), result(1e-3, 1, True, 0.77),
               result(1e-2, 0, True, 0.85), result(1e-2, 1, True, 0.89)]
    s = summarize(results)
    assert s["best"] == {"base": 1e-3, "smoothed": 1e-2}
    h = s["best_vs_best"]
    assert h["per_seed_diff"] == pytest.approx([0.05, 0.07])
    assert h["diff"][0] == pytest.approx(0.06) and h["diff"][1] == pytest.approx(math.sqrt(2) * 0.01)
    assert s["rows"][0]["base"][0] == pytest.approx(0.81)
    text = format_summary(s)
    assert "0.8100 ± 0.0141 *" in text and "difference +0.0600" in text


def test_incomplete_runs_are_left_out():
    results = [result(1e-3, 0, False, 0.8), result(1e-3, 0, True, 0.9)]
    results.append(RunResult(RunConfig(task="vit", lr=1e-3, seed=1), history=[{"step": 1, "test_acc": 0.1}]))
    assert summarize(results)["best_vs_best"]["seeds"] == [0]
