"""gradsmooth.compare: the fair comparison for any training code, framework-free — each arm's
learning rate chosen on validation, the test metric there as paired per-seed differences with a
Student-t interval, win count and verdict; sweep's progress, results.json, Ctrl-C and report."""

import json
import math

import numpy as np
import pytest

from gradsmooth.compare import Arm, format_summary, overview, paired_difference, render, summarize_records, sweep
from gradsmooth.results import ResultsError


def result(lr, seed, smoothed, val, test):
    return {"lr": lr, "arm": "smoothed" if smoothed else "base", "seed": seed, "val": val, "test": test}


def summarize(records, task="vit"):
    return summarize_records(records, task == "vit", *(("val_acc", "test_acc") if task == "vit"
                                                         else ("val_loss", "test_loss")))


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


def test_the_win_count_respects_the_direction_and_counts_ties():
    assert paired_difference([0.1, -0.2, 0.3, 0.0], higher_is_better=True)["wins"] == 2
    assert paired_difference([0.1, -0.2, 0.3, 0.0], higher_is_better=False)["wins"] == 1
    assert paired_difference([0.1, -0.2, 0.3, 0.0], higher_is_better=False)["ties"] == 1


@pytest.mark.parametrize("diffs, higher, verdict", [
    ([0.05, 0.06, 0.055], True, "win"),
    ([0.05, 0.06, 0.055], False, "loss"),
    ([-0.05, -0.06, -0.055], False, "win"),
    ([-0.05, -0.06, -0.055], True, "loss"),
    ([0.05, -0.04, 0.01], True, "no significant difference"),
    ([0.05], True, "one seed: no interval"),
    ([], True, "no seeds"),
])
def test_the_verdict_needs_an_interval_that_excludes_zero(diffs, higher, verdict):
    assert paired_difference(diffs, higher)["verdict"] == verdict


def test_the_headline_says_the_interval_wins_and_verdict():
    # both arms choose 1e-3 on val_loss, inside the grid
    results = [result(lr, s, smoothed, 3.0 + abs(math.log10(lr) + 3), 3.0 - (0.1 + 0.01 * s if smoothed else 0))
               for lr in (1e-4, 1e-3, 1e-2) for s in range(3) for smoothed in (False, True)]
    text = format_summary(summarize(results, task="lm"))
    assert "test_loss at each arm's chosen learning rate (lower is better)" in text
    assert "smoothed - base, paired over seeds [0, 1, 2]: mean -0.1100, 95% CI [" in text
    assert "smoothed better on 3 of 3 seeds; verdict: win" in text


def test_a_seed_run_by_one_arm_only_is_not_paired():
    results = [result(1e-3, 0, False, 0.8, 0.8), result(1e-3, 0, True, 0.9, 0.9), result(1e-3, 1, False, 0.1, 0.1)]
    h = summarize(results)["best_vs_best"]
    assert h["seeds"] == [0] and h["n"] == 1 and math.isnan(h["ci"][0])


def test_a_diverged_learning_rate_is_not_chosen():
    results = [result(1e-3, 0, False, 0.8, 0.8), result(1e-3, 0, True, 0.7, 0.7),
               result(1e-2, 0, False, math.nan, math.nan), result(1e-2, 0, True, 0.9, 0.9)]
    assert summarize(results)["best"] == {"base": 1e-3, "smoothed": 1e-2}


def toy_train(make_optimizer, seed):
    """A fake training run: the optimizer is a tuple; val peaks at lr 1e-2 for smoothed, 1e-3 for base."""
    opt = make_optimizer(lambda lr: ("sgd", lr), lambda o, kw: ("smoothed", o, kw["window"]))
    best = 1e-2 if opt[0] == "smoothed" else 1e-3
    score = 0.9 - abs(make_optimizer.lr - best) * 10 + 0.001 * seed
    return {"val": score, "test": score + (0.02 if opt[0] == "smoothed" else 0.0) + 0.001 * (seed % 2), "opt": opt}


def test_sweep_runs_both_arms_everywhere_and_summarizes():
    seen = []
    out = sweep(toy_train, [1e-4, 1e-3, 1e-2, 1e-1], range(3), smoothing={"window": 3}, higher_is_better=True,
                on_record=seen.append)
    records = out["records"]
    assert len(records) == 4 * 3 * 2 and seen == records
    assert [r["arm"] for r in records[:2]] == ["base", "smoothed"]
    assert records[1]["opt"] == ("smoothed", ("sgd", 1e-4), 3)
    s = out["summary"]
    assert s["best"] == {"base": 1e-3, "smoothed": 1e-2}
    h = s["best_vs_best"]
    assert h["n"] == 3 and h["wins"] == 3 and h["verdict"] == "win"
    assert h["per_seed_diff"] == pytest.approx([0.02] * 3)


def test_lower_is_better_flips_the_choice_and_the_verdict():
    s = sweep(toy_train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, higher_is_better=False)["summary"]
    assert s["best"] == {"base": 1e-2, "smoothed": 1e-3}


def test_bad_arguments_name_the_argument_and_value():
    with pytest.raises(ValueError, match=r"lrs should be finite positive numbers, at least one, but are: \[0.1, -1\]"):
        sweep(toy_train, [0.1, -1], [0])
    with pytest.raises(ValueError, match=r"seeds should hold at least one seed, distinct integers, but is: \[\]"):
        sweep(toy_train, [0.1], [])
    with pytest.raises(TypeError, match="train should return a mapping with 'val' and 'test' numbers but returned: 1"):
        sweep(lambda make, seed: 1, [0.1], [0])
    with pytest.raises(TypeError, match="the smoothed arm .* needs smooth"):
        Arm(0.1, {"window": 3})(lambda lr: lr)


def test_sweep_writes_results_after_every_run_and_report_renders_them(tmp_path, capsys):
    def train(make_optimizer, seed):
        out = toy_train(make_optimizer, seed)
        saved = json.loads((tmp_path / "results.json").read_text())  # what the earlier runs wrote
        assert len(saved["records"]) == len(seen) and not saved["interrupted"]
        return out | {"history": [{"step": 1, "loss": 1.0 - out["val"]}]}

    seen = []
    result = sweep(train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, metric="val_score",
                   test_metric="test_score", settings={"label": "toy"}, command=["python", "train.py"],
                   on_record=seen.append)
    captured = capsys.readouterr()
    assert "[1/8] lr 0.001 base seed 0: val_score" in captured.err and "[8/8]" in captured.err
    tables, closing = captured.out.strip().split("\n\nwrote ")
    assert tables == format_summary(result["summary"])  # the tables, as report prints them
    assert closing == f"{tmp_path / 'results.json'}, {tmp_path / 'metric_vs_lr.png'} and " \
                      f"{tmp_path / 'curves_at_best_lr.png'}"  # what it wrote, as compare says
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["provenance"]["command"] == "python train.py" and saved["settings"]["label"] == "toy"
    assert saved["settings"]["smoothing"] == {"window": 3} and saved["settings"]["seeds"] == [0, 1]
    assert len(saved["records"]) == 8 and all(r["seconds"] >= 0 for r in saved["records"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves_at_best_lr.png", "metric_vs_lr.png", "results.json"]
    assert render(tmp_path, draw=False) == format_summary(result["summary"])
    assert "| toy | 2 |" in overview([tmp_path])


def test_ctrl_c_keeps_what_was_gathered_and_goes_on_up(tmp_path, capsys):
    def train(make_optimizer, seed):
        if make_optimizer.lr == 1e-2:
            raise KeyboardInterrupt
        return toy_train(make_optimizer, seed)

    with pytest.raises(KeyboardInterrupt):
        sweep(train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, verbose=False)
    assert f"interrupted: the results gathered so far are in {tmp_path / 'results.json'}" in capsys.readouterr().err
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["interrupted"] and len(saved["records"]) == 4
    text = render(tmp_path, draw=False)
    assert text.startswith("**Incomplete: 4 of 8 runs (interrupted).** The learning-rate choice and the verdict")
    assert "| lr | base val | smoothed val |" in text
    assert "(incomplete: 4 of 8 runs (interrupted))" in overview([tmp_path])


def test_a_diverged_run_is_written_as_null_and_read_back_as_nan(tmp_path):
    def train(make_optimizer, seed):
        out = toy_train(make_optimizer, seed)
        return out | {"val": math.nan, "test": math.nan} if make_optimizer.lr == 1e-2 else out

    sweep(train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, verbose=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"][-1]["val"] is None
    assert "| 0.01 | nan ± nan | nan ± nan |" in render(tmp_path, draw=False)


def test_an_unwritable_out_fails_before_any_training(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        sweep(lambda make, seed: pytest.fail("trained"), [1e-3], [0], out=tmp_path / "file" / "sub", verbose=False)


def test_window_options_are_checked_before_any_training():
    with pytest.raises(ValueError, match="window"):
        sweep(lambda make, seed: pytest.fail("trained"), [1e-3], [0], smoothing={"window": 4}, verbose=False)
    with pytest.raises(ValueError, match="mode"):
        sweep(lambda make, seed: pytest.fail("trained"), [1e-3], [0], smoothing={"mode": "updates"}, verbose=False)


def test_the_overview_describes_a_sweep_without_a_label(tmp_path):
    sweep(toy_train, [1e-3], [0, 1], smoothing={"window": 5}, out=tmp_path, verbose=False)
    assert "| smoothing: window 5 | 2 |" in overview([tmp_path])


def test_seeds_and_learning_rates_are_distinct_before_any_training():
    never = lambda make, seed: pytest.fail("trained before the check")  # noqa: E731
    with pytest.raises(ValueError, match=r"seeds should be distinct \(each is one paired run\) but 0 is repeated: "
                                         r"\[0, 1, 0\]"):
        sweep(never, [0.1], [0, 1, 0])
    with pytest.raises(ValueError, match=r"lrs should be distinct \(each learning rate is run once per seed\) but "
                                         r"0.001 is repeated: \[0.001, 0.001\]"):
        sweep(never, [1e-3, 1e-3], [0])


GRID = (1e-4, 1e-3, 1e-2)


def grid_records(base_best, smoothed_best, lrs=GRID, gain=0.05):
    """Records on ``lrs`` (3 seeds) whose val peaks at each arm's ``*_best``; smoothed's test is ``gain`` above base's."""
    return [result(lr, seed, smoothed, 0.9 - abs(math.log10(lr) - math.log10(smoothed_best if smoothed else base_best)),
                   0.8 + 0.01 * seed + (gain + 0.001 * seed if smoothed else 0))
            for lr in lrs for seed in range(3) for smoothed in (False, True)]


@pytest.mark.parametrize("base_best, smoothed_best, doubt", [
    (1e-4, 1e-3, "base chose the grid's lowest lr (0.0001); widen the grid"),
    (1e-3, 1e-2, "smoothed chose the grid's highest lr (0.01); widen the grid"),
    (1e-4, 1e-4, "both arms chose the grid's lowest lr (0.0001); widen the grid"),
    (1e-4, 1e-2, "base chose the grid's lowest lr (0.0001) and smoothed chose the grid's highest lr (0.01); widen "
                 "the grid"),
])
def test_a_verdict_on_a_learning_rate_at_the_grid_edge_is_inconclusive(base_best, smoothed_best, doubt):
    h = summarize(grid_records(base_best, smoothed_best))["best_vs_best"]
    assert h["interval_verdict"] == "win"  # the interval alone excludes zero
    assert h["verdict"] == f"inconclusive: {doubt} (the interval alone: win)"
    assert f"verdict: inconclusive: {doubt}" in format_summary(summarize(grid_records(base_best, smoothed_best)))


def test_a_verdict_inside_the_grid_is_the_intervals_and_one_learning_rate_chooses_none():
    inside = summarize(grid_records(1e-3, 1e-3))["best_vs_best"]
    assert inside["verdict"] == inside["interval_verdict"] == "win"
    one = summarize(grid_records(1e-3, 1e-3, lrs=[1e-3]))["best_vs_best"]
    assert one["verdict"] == "inconclusive: a grid of one learning rate (0.001) chooses none; give several " \
                             "(the interval alone: win)"


def test_sweep_and_report_say_a_verdict_rests_on_the_grid_edge(tmp_path, capsys):
    """The README's sweep example, in small: both arms choose the grid's lowest rate, and the
    verdict sweep prints, and report prints again from results.json, says so."""
    def train(make_optimizer, seed):  # val falls with the learning rate for both arms
        score = 0.9 - make_optimizer.lr + 0.001 * seed
        return {"val": score, "test": score + (0.05 if make_optimizer.smoothing is not None else 0)}

    sweep(train, [1e-3, 3e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, out=tmp_path)
    said = "verdict: inconclusive: both arms chose the grid's lowest lr (0.001); widen the grid (the interval alone: win)"
    assert said in capsys.readouterr().out
    assert said in render(tmp_path, draw=False)
    assert "| inconclusive: both arms chose the grid's lowest lr (0.001); widen the grid (the interval alone: win) |" \
           in overview([tmp_path])


def test_resume_keeps_the_runs_it_has_and_runs_the_rest(tmp_path):
    calls = []

    def train(make_optimizer, seed):
        calls.append((make_optimizer.lr, make_optimizer.label, seed))
        if len(calls) == 3 and first_pass:
            raise KeyboardInterrupt
        return toy_train(make_optimizer, seed)

    first_pass = True
    with pytest.raises(KeyboardInterrupt):
        sweep(train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, verbose=False,
              command=["first"])
    first_pass, calls[:] = False, []
    with pytest.raises(KeyboardInterrupt):  # interrupted again, at the first new run: nothing kept is lost
        sweep(lambda make, seed: (_ for _ in ()).throw(KeyboardInterrupt), [3e-4, 1e-3, 1e-2], [0, 1],
              smoothing={"window": 3}, out=tmp_path, verbose=False, resume=True, command=["between"])
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 2
    with pytest.raises(ValueError, match="outside this grid"):  # the grid 3e-4 was never finished: still 1e-3, 1e-2
        sweep(toy_train, [1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, verbose=False, resume=True)
    result = sweep(train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, out=tmp_path, verbose=False,
                   resume=True, command=["second"])
    assert (1e-3, "base", 0) not in calls and (1e-3, "smoothed", 0) not in calls and len(calls) == 12 - 2
    fresh = sweep(toy_train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, verbose=False)
    strip = lambda rs: json.loads(json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in rs]))  # noqa: E731
    assert strip(result["records"]) == strip(fresh["records"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["provenance"]["command"] == "second"
    assert [p["command"] for p in saved["resumed_from"]] == ["first", "between"]
    with pytest.raises(ValueError, match=r"was written with other settings \(smoothing.window: 3 -> 5\): resume"):
        sweep(toy_train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 5}, out=tmp_path, resume=True, verbose=False)
    with pytest.raises(ValueError, match=r"holds 4 runs outside this grid \(e.g. lr 0.001, seed 2\): resume keeps"):
        sweep(toy_train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path, resume=True, verbose=False)
    with pytest.raises(FileExistsError, match=r"holds a comparison already \(12 runs\): continue it with resume=True"):
        sweep(toy_train, [1e-3], [0], smoothing={"window": 3}, out=tmp_path, verbose=False)
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 12  # nothing was lost
    sweep(toy_train, [1e-3], [0], smoothing={"window": 3}, out=tmp_path, verbose=False, overwrite=True)
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 2
    with pytest.raises(ValueError, match="resume=True needs out"):
        sweep(toy_train, [1e-3], [0], resume=True)


def test_base_from_reuses_the_base_runs_of_a_comparison_that_differs_in_smoothing_only(tmp_path):
    calls = []

    def train(make_optimizer, seed):
        calls.append((make_optimizer.lr, make_optimizer.label, seed))
        return toy_train(make_optimizer, seed)

    sweep(toy_train, [1e-3, 1e-2], [0, 1], smoothing={"window": 3}, out=tmp_path / "w3", verbose=False,
          command=["headline"])
    result = sweep(train, [1e-3, 1e-2, 3e-2], [0, 1], smoothing={"window": 5}, out=tmp_path / "w5",
                   verbose=False, base_from=tmp_path / "w3")
    # the base ran only at the learning rate the headline lacks; every smoothed run trained
    assert sorted(c for c in calls if c[1] == "base") == [(3e-2, "base", 0), (3e-2, "base", 1)]
    assert len([c for c in calls if c[1] == "smoothed"]) == 6
    fresh = sweep(toy_train, [1e-3, 1e-2, 3e-2], [0, 1], smoothing={"window": 5}, verbose=False)
    strip = lambda rs: json.loads(json.dumps([{k: v for k, v in r.items() if k not in ("seconds", "reused_from")}  # noqa: E731
                                              for r in rs]))
    assert strip(result["records"]) == strip(fresh["records"])
    assert result["summary"] == fresh["summary"]
    saved = json.loads((tmp_path / "w5" / "results.json").read_text())
    assert saved["base_from"]["folder"] == str(tmp_path / "w3") and saved["base_from"]["runs"] == 4
    assert saved["base_from"]["provenance"]["command"] == "headline"
    assert sum(r.get("reused_from") == str(tmp_path / "w3") for r in saved["records"]) == 4
    # a resume without base_from keeps what was reused and says so
    sweep(toy_train, [1e-3, 1e-2, 3e-2], [0, 1, 2], smoothing={"window": 5}, out=tmp_path / "w5", verbose=False,
          resume=True)
    assert json.loads((tmp_path / "w5" / "results.json").read_text())["base_from"] == saved["base_from"]


def test_base_from_refuses_a_comparison_with_other_settings_before_training(tmp_path):
    sweep(toy_train, [1e-3], [0], smoothing={"window": 3}, out=tmp_path / "a", verbose=False, settings={"depth": 4})
    never = lambda make, seed: pytest.fail("trained before the check")  # noqa: E731
    with pytest.raises(ValueError, match=r"base_from='.*a' was written with other settings \(depth: 4 -> 8\): its "
                                         r"base runs are not this comparison's base arm"):
        sweep(never, [1e-3], [0], smoothing={"window": 5}, out=tmp_path / "b", base_from=tmp_path / "a",
              settings={"depth": 8}, verbose=False)
    with pytest.raises(ResultsError, match=r"base_from: DIR '.*nowhere' does not exist"):
        sweep(never, [1e-3], [0], smoothing={"window": 5}, base_from=tmp_path / "nowhere", verbose=False)
    assert not (tmp_path / "b").exists()


def test_reported_metrics_are_paired_at_each_arms_chosen_rate_and_never_chosen_on():
    records = []
    for seed in range(4):
        for lr, base_val, smoothed_val in ((1e-3, 0.9, 0.5), (1e-2, 0.5, 0.9)):
            # the reported number would choose the other rate: it must not be chosen on
            records.append(result(lr, seed, False, base_val, 0.8) | {"metrics": {"cka": 0.5 + 0.01 * seed + lr,
                                                                                 "acc": None}})
            records.append(result(lr, seed, True, smoothed_val, 0.8) | {"metrics": {"cka": 0.6 + 0.02 * seed - lr,
                                                                                    "acc": 0.5}})
    summary = summarize(records)
    assert summary["best"] == {"base": 1e-3, "smoothed": 1e-2}
    cka = summary["metrics"]["cka"]
    diffs = [(0.6 + 0.02 * s - 1e-2) - (0.5 + 0.01 * s + 1e-3) for s in range(4)]
    assert cka["per_seed_diff"] == pytest.approx(diffs) and cka["n"] == 4 and cka["higher"] == 4
    assert cka["verdict"] == "higher" and cka["base"][0] == pytest.approx(0.5 + 0.015 + 1e-3)
    assert summary["metrics"]["acc"]["verdict"] == "no significant difference"  # NaN (null) base values
    table = format_summary(summary)
    assert "Reported beside the metric, never chosen on" in table
    assert "| reported | base | smoothed | smoothed - base [95% CI] | smoothed higher | verdict |" in table
    assert "| cka | 0.5160 ± 0.0129 | 0.6200 ± 0.0258 | +0.1040 [" in table and "| 4/4 | higher |" in table
    flipped = [r | {"metrics": {"cka": -r["metrics"]["cka"]}} for r in records]
    assert summarize(flipped)["metrics"]["cka"]["verdict"] == "lower"
    assert "Reported" not in format_summary(summarize([{k: v for k, v in r.items() if k != "metrics"}
                                                       for r in records]))  # none recorded: no table


def test_reported_numbers_are_also_paired_at_each_learning_rate_with_both_arms_at_it():
    records = []
    for seed in range(3):
        for lr, lift in ((1e-3, 0.1), (1e-2, -0.2)):
            records.append(result(lr, seed, False, 0.5 + lr, 0.8) | {"metrics": {"cka": 0.5 + 0.01 * seed}})
            records.append(result(lr, seed, True, 0.5 - lr, 0.8) | {"metrics": {"cka": 0.5 + lift + 0.02 * seed}})
    summary = summarize(records)
    assert summary["best"] == {"base": 1e-2, "smoothed": 1e-3}
    by_lr = summary["metrics"]["cka"]["by_lr"]
    assert [row["lr"] for row in by_lr] == [1e-3, 1e-2]
    assert by_lr[0]["per_seed_diff"] == pytest.approx([0.1 + 0.01 * s for s in range(3)])
    assert by_lr[0]["verdict"] == "higher" and by_lr[0]["higher"] == 3 and by_lr[1]["verdict"] == "lower"
    assert by_lr[1]["base"][0] == pytest.approx(0.51) and by_lr[1]["seeds"] == [0, 1, 2]
    table = format_summary(summary)
    assert "The same at each learning rate, both arms at it" in table
    assert "| lr | cka |" in table and "| 0.001 | +0.1100 [" in table and "] 3/3 |" in table
    assert "| 0.01 | -0.1900 [" in table and "] 0/3 |" in table
    one_rate = summarize([r for r in records if r["lr"] == 1e-3])
    assert "The same at each learning rate" not in format_summary(one_rate)  # one rate: the first table says it


def test_the_overview_of_a_reported_number_pairs_it_at_each_arms_chosen_rate(tmp_path):
    def train(make_optimizer, seed):  # cka higher for smoothed by 0.1 + 0.01 * seed, chosen on nothing
        out = toy_train(make_optimizer, seed)
        smoothed = out["opt"][0] == "smoothed"
        return out | {"metrics": {"cka": 0.5 + (0.1 + 0.01 * seed if smoothed else 0.0) + make_optimizer.lr}}

    sweep(train, [1e-3, 1e-2], [0, 1, 2], smoothing={"window": 3}, out=tmp_path / "a", settings={"label": "toy"},
          verbose=False)
    sweep(toy_train, [1e-3], [0, 1], smoothing={"window": 3}, out=tmp_path / "none", verbose=False)
    lines = overview([tmp_path / "a"], reported="cka").splitlines()
    assert lines[0] == "| results | setting | seeds | base (lr) | smoothed (lr) | smoothed - base [95% CI] | higher | verdict |"
    # base at 1e-3 (0.501), smoothed at 1e-2 (0.61 + 0.01 * seed): each at the rate it chose on val
    assert lines[2].startswith(f"| {tmp_path / 'a'} | toy | 3 | 0.5010 (0.001) | 0.6200 (0.01) | +0.1190 [")
    assert lines[2].endswith("| 3/3 | higher |")
    assert lines[-1].startswith("(reported: cka, never chosen on;")
    with pytest.raises(ResultsError, match=r"results.json' reports no 'cka' beside its metric \(it reports: nothing\)"):
        overview([tmp_path / "a", tmp_path / "none"], reported="cka")
    with pytest.raises(ResultsError, match=r"reports no 'CKA' beside its metric \(it reports: cka\)"):
        overview([tmp_path / "a"], reported="CKA")
    with pytest.raises(TypeError, match="reported should be the name of a reported number .* but is: 3"):
        overview([tmp_path / "a"], reported=3)


def test_defaults_read_an_older_results_json_with_the_value_a_new_setting_had(tmp_path):
    sweep(toy_train, [1e-3], [0], smoothing={"window": 3}, out=tmp_path / "old", verbose=False,
          settings={"config": {"depth": 4}})  # written before "device" was recorded
    now = {"config": {"depth": 4, "device": "cpu"}}
    never = lambda make, seed: pytest.fail("trained again")  # noqa: E731
    with pytest.raises(ValueError, match=r"config.device: None -> 'cpu'"):  # without defaults: refused
        sweep(never, [1e-3], [0], smoothing={"window": 3}, out=tmp_path / "old", verbose=False, settings=now,
              resume=True)
    sweep(never, [1e-3], [0], smoothing={"window": 3}, out=tmp_path / "old", verbose=False, settings=now,
          resume=True, defaults={"config.device": "cpu"})
    sweep(toy_train, [1e-3], [0], smoothing={"window": 5}, out=tmp_path / "ablation", verbose=False, settings=now,
          base_from=tmp_path / "old", defaults={"config.device": "cpu", "absent.parent": 1})
    with pytest.raises(ValueError, match=r"other settings \(config.device: 'cpu' -> 'cuda'\)"):
        sweep(never, [1e-3], [0], smoothing={"window": 5}, out=tmp_path / "gpu", verbose=False,
              settings={"config": {"depth": 4, "device": "cuda"}}, base_from=tmp_path / "old",
              defaults={"config.device": "cpu"})
