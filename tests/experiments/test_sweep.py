"""gradsmooth.compare.sweep: the fair comparison for any training code, framework-free."""

import pytest

from gradsmooth.compare import Arm, summarize_records, sweep


def toy_train(make_optimizer, seed):
    """A fake training run: the optimizer is a tuple; val peaks at lr 1e-2 for smoothed, 1e-3 for base."""
    opt = make_optimizer(lambda lr: ("sgd", lr), lambda o, kw: ("smoothed", o, kw["window"]))
    best = 1e-2 if opt[0] == "smoothed" else 1e-3
    score = 0.9 - abs(make_optimizer.lr - best) * 10 + 0.001 * seed
    return {"val": score, "test": score + (0.02 if opt[0] == "smoothed" else 0.0) + 0.001 * (seed % 2), "opt": opt}


def test_sweep_runs_both_arms_everywhere_and_summarizes():
    seen = []
    out = sweep(toy_train, [1e-3, 1e-2], range(3), smoothing={"window": 3}, higher_is_better=True,
                on_record=seen.append)
    records = out["records"]
    assert len(records) == 2 * 3 * 2 and seen == records
    assert [r["arm"] for r in records[:2]] == ["base", "smoothed"]
    assert records[1]["opt"] == ("smoothed", ("sgd", 1e-3), 3)
    s = out["summary"]
    assert s["best"] == {"base": 1e-3, "smoothed": 1e-2}
    h = s["best_vs_best"]
    assert h["n"] == 3 and h["wins"] == 3 and h["verdict"] == "win"
    assert h["per_seed_diff"] == pytest.approx([0.02] * 3)


def test_lower_is_better_flips_the_choice_and_the_verdict():
    s = sweep(toy_train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, higher_is_better=False)["summary"]
    assert s["best"] == {"base": 1e-2, "smoothed": 1e-3}


def test_the_summary_of_records_is_the_cli_summary():
    from gradsmooth.experiments.runs import RunConfig, RunResult, summarize

    results, records = [], []
    for lr, seed, smoothed, val, test in [(1e-3, 0, False, 0.8, 0.7), (1e-3, 0, True, 0.9, 0.75),
                                          (1e-3, 1, False, 0.82, 0.71), (1e-3, 1, True, 0.88, 0.78)]:
        cfg = RunConfig(task="vit", lr=lr, seed=seed, smoothing={"window": 3} if smoothed else None)
        results.append(RunResult(cfg, [{"step": 1, "val_acc": val, "test_acc": test}], complete=True))
        records.append({"lr": lr, "arm": cfg.label, "seed": seed, "val": val, "test": test})
    assert summarize(results) == summarize_records(records, True, "val_acc", "test_acc")


def test_bad_arguments_name_the_argument_and_value():
    with pytest.raises(ValueError, match=r"lrs should be finite positive numbers, at least one, but are: \[0.1, -1\]"):
        sweep(toy_train, [0.1, -1], [0])
    with pytest.raises(ValueError, match=r"seeds should hold at least one seed but is: \[\]"):
        sweep(toy_train, [0.1], [])
    with pytest.raises(TypeError, match="train should return a mapping with 'val' and 'test' numbers but returned: 1"):
        sweep(lambda make, seed: 1, [0.1], [0])
    with pytest.raises(TypeError, match="the smoothed arm .* needs smooth"):
        Arm(0.1, {"window": 3})(lambda lr: lr)
