"""The gradsmooth command: demo and compare end to end on tiny budgets, help, errors, Ctrl-C."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from gradsmooth import cli  # noqa: E402

TINY = ["--steps", "4", "--eval-every", "2", "--quiet"]


def test_demo_writes_table_curves_and_results(tmp_path, capsys):
    assert cli.main(["demo", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base test_acc" in out and "smoothed test_acc" in out and "final test_acc" in out
    for name in ("curves.png", "depth_structure.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [r["config"]["smoothing"] is None for r in runs] == [True, False]
    assert len(runs[1]["diagnostics"]["update_similarity"]) == 8


COMPARE_LM = ["compare", "--task", "lm", "--lrs", "1e-3,1e-2", "--seeds", "2", "--context", "16", "--batch-size", "4",
              "--window", "5", "--kernel", "triangular", "--mode", "gradient", "--depth", "2", "--width", "32",
              "--weight-decay", "0.1", "--warmup", "0.25", *TINY]


def test_compare_chooses_on_val_and_reports_the_paired_test_difference(tmp_path, capsys):
    args = [*COMPARE_LM, "--out", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| lr | base val_loss | smoothed val_loss |" in out
    assert "test_loss at each arm's chosen learning rate (lower is better)" in out
    assert "95% CI [" in out and "smoothed better on" in out and "of 2 seeds; verdict: " in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["records"]) == 2 * 2 * 2 and not result["interrupted"]
    assert result["settings"]["smoothing"]["window"] == 5 and result["machine"]["torch"]
    config = result["settings"]["config"]
    assert (config["depth"], config["width"], config["weight_decay"], config["warmup"]) == (2, 32, 0.1, 0.25)
    assert {"val_loss", "test_loss"} <= set(result["records"][0]["history"][-1])
    assert result["records"][0]["val"] == result["records"][0]["history"][-1]["val_loss"]
    assert result["settings"]["metric"] == "val_loss" and result["settings"]["higher_is_better"] is False
    headline = result["summary"]["best_vs_best"]
    assert len(headline["per_seed_diff"]) == 2 and headline["n"] == 2 and len(headline["ci"]) == 2
    assert headline["interval_verdict"] in ("win", "loss", "no significant difference")
    assert headline["verdict"].startswith("inconclusive: ")  # two learning rates: each arm chose an edge
    origin = result["provenance"]
    assert origin["command"] == "gradsmooth " + " ".join(args) and origin["seeds"] == [0, 1]
    assert origin["threads"]["torch"] >= 1 and "OMP_NUM_THREADS" in origin["threads"]
    assert origin["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", origin["git_commit"])
    assert origin["git_dirty"] in (None, True, False)
    assert (tmp_path / "metric_vs_lr.png").exists() and (tmp_path / "curves_at_best_lr.png").exists()


def test_report_reprints_compare_tables_from_results_json(tmp_path, capsys):
    assert cli.main([*COMPARE_LM, "--seeds", "1", "--lrs", "1e-3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split("\nwrote ")[0]
    for name in ("metric_vs_lr.png", "curves_at_best_lr.png"):
        (tmp_path / name).unlink()
    assert cli.main(["report", str(tmp_path)]) == 0
    reported = capsys.readouterr().out
    assert reported.split("\nwrote ")[0] == printed
    assert (tmp_path / "metric_vs_lr.png").exists() and (tmp_path / "curves_at_best_lr.png").exists()


def test_report_reprints_the_demo_table(tmp_path, capsys):
    assert cli.main(["demo", *TINY, "--depth", "2", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split("\nwrote ")[0]
    assert cli.main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split("\nwrote ")[0] == printed


def test_report_refuses_a_compare_result_without_validation(tmp_path, capsys):
    run = {"config": {"task": "vit", "lr": 1e-3, "seed": 0}, "history": [{"step": 1, "test_acc": 0.5}],
           "complete": True}
    (tmp_path / "results.json").write_text(json.dumps({"command": "compare", "runs": [run]}))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", str(tmp_path)])
    assert exit_.value.code == 2
    assert "holds no records of a comparison (a results.json written before gradsmooth compare chose learning " \
           "rates on a validation split): run the comparison again" in capsys.readouterr().err


def test_report_of_several_folders_is_one_overview_table(tmp_path, capsys):
    for name, window in (("w3", "3"), ("w5", "5")):
        assert cli.main(["compare", "--lrs", "1e-3", "--seeds", "2", "--window", window, "--depth", "2", *TINY,
                         "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "w3"), str(tmp_path / "w5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| results | setting | seeds | base (lr) | smoothed (lr) |") and len(lines) == 6
    assert f"| {tmp_path / 'w5'} | vit adamw, 2 blocks, width 64, 4 steps; update mode, window 5 | 2 |" in lines[3]


def test_report_reported_prints_the_overview_of_that_number(tmp_path, capsys):
    for name, window in (("w3", "3"), ("w5", "5")):
        assert cli.main(["compare", "--lrs", "1e-3", "--seeds", "2", "--window", window, "--depth", "2", *TINY,
                         "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert cli.main(["report", "--reported", "adjacent_cka", str(tmp_path / "w3"), str(tmp_path / "w5")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| smoothed - base [95% CI] | higher | verdict |") and len(lines) == 6
    assert lines[3].startswith(f"| {tmp_path / 'w5'} | vit adamw, 2 blocks, width 64, 4 steps; update mode, window 5 | 2 |")
    assert lines[5].startswith("(reported: adjacent_cka, never chosen on;")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--reported", "loss", str(tmp_path / "w3")])
    assert exit_.value.code == 2
    assert "reports no 'loss' beside its metric (it reports: adjacent_cka, adjacent_update_cosine" in capsys.readouterr().err


def test_report_refuses_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"gradsmooth report: error: DIR {str(tmp_path)!r} holds no results.json"


def test_help_explains_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--task", "--backend", "--optimizer", "--window", "--kernel", "--boundary", "--normalize",
                   "--alpha", "--mode", "--lrs", "--steps", "--seeds", "--out", "--quiet", "--data", "--depth",
                   "--width", "--weight-decay", "--warmup"):
        assert option in text
    assert text.count("default") >= 18


def _no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(cli, "run", train)
    monkeypatch.setattr(cli, "compare", train)


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gradsmooth", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "lm", "--data", "missing.txt"], "data file 'missing.txt' does not exist"),
        (["--task", "lm", "--data", "empty.txt"], "is empty"),
        (["--task", "lm", "--data", "short.txt"], "too short for the context length 64"),
        (["--boundary", "wrap"], "invalid choice: 'wrap'"),
        (["--alpha-schedule", "step"], "argument --alpha-schedule: invalid choice: 'step'"),
        (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["--window", "4"], "argument --window: should be an odd integer >= 1 but is: '4'"),
        (["--kernel", "1,2,3"], "kernel should be symmetric"),
        (["--lrs", "0.1,x"], "learning rates should be comma-separated numbers"),
        (["--task", "lm", "--data", "."], "data file '.' is a directory, not a file"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "short.txt").write_text("print('hi')\n" * 10)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", *args, "--quiet"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.mark.parametrize(
    "args, message",
    [
        (["compare", "--lrs", "nan"], "argument --lrs: learning rates should be finite and positive but nan is not"),
        (["compare", "--lrs", "1e-3,inf"], "argument --lrs: learning rates should be finite and positive but inf is"),
        (["compare", "--lrs=-1e-3"], "argument --lrs: learning rates should be finite and positive but -0.001 is not"),
        (["demo", "--lr-base", "inf"], "argument --lr-base: should be a finite positive number but is: 'inf'"),
        (["demo", "--lr-smoothed", "nan"], "argument --lr-smoothed: should be a finite positive number but is: 'nan'"),
        (["demo", "--lr-base", "0"], "argument --lr-base: should be a finite positive number but is: '0'"),
        (["compare", "--alpha", "nan"], "argument --alpha: should be a number in [0, 1] but is: 'nan'"),
        (["compare", "--steps", "abc"], "argument --steps: should be a positive integer but is: 'abc'"),
        (["compare", "--seeds", "0"], "argument --seeds: should be a positive integer but is: '0'"),
        (["demo", "--seed", "-1"], "argument --seed: should be an integer >= 0 but is: '-1'"),
        (["compare", "--window", "abc"], "argument --window: should be an odd integer >= 1 but is: 'abc'"),
        (["compare", "--depth", "0"], "argument --depth: should be an integer >= 2 (one block has no neighbour to "
                                      "smooth with) but is: '0'"),
        (["demo", "--depth", "1"], "argument --depth: should be an integer >= 2 (one block has no neighbour to smooth "
                                   "with) but is: '1'"),
        (["compare", "--lrs", "1e-3,3e-3,0.001"], "argument --lrs: learning rates should be distinct (each runs once "
                                                  "per seed) but 0.001 is repeated: '1e-3,3e-3,0.001'"),
        (["demo", "--lrs", "1e-3,3e-3"], "gradsmooth demo: error: unrecognized arguments: --lrs 1e-3,3e-3 (see "
                                         "--help); demo takes --lr-base and --lr-smoothed (compare takes --lrs)"),
        (["compare", "--lr-base=1e-3"], "gradsmooth compare: error: unrecognized arguments: --lr-base=1e-3 (see "
                                        "--help); compare takes --lrs, one grid for both arms (demo takes --lr-base"),
        (["demo", "--threads", "0"], "argument --threads: should be a positive integer but is: '0'"),
        (["demo", "--width", "30"], "argument --width: should be a positive multiple of 4 (the attention heads) but is: '30'"),
        (["compare", "--weight-decay", "-1"], "argument --weight-decay: should be a finite number >= 0 but is: '-1'"),
        (["demo", "--warmup", "1.5"], "argument --warmup: should be a number in [0, 1] but is: '1.5'"),
        (["compare", "--kernel", "0.5,1"], "--kernel 0.5,1 has 2 weights: an explicit kernel needs an odd number of "
                                           "symmetric weights, one per block of the window, and --window set to that"),
        (["compare", "--kernel", "1,2,1,2,1"], "--kernel 1,2,1,2,1 has 5 weights but --window is 3: pass --window 5"),
        (["compare", "--alpha-final", "0.5"], "error: --alpha-final 0.5 needs --alpha-schedule linear or cosine"),
        (["demo", "--alpha-final", "2"], "argument --alpha-final: should be a number in [0, 1] but is: '2'"),
        (["compare", "--kl", "0.1"], "error: --kl applies to --task rl only, not --task vit"),
        (["demo", "--task", "diffusion", "--group", "4", "--sft-target", "0.5"],
         "error: --group, --sft-target applies to --task rl only, not --task diffusion"),
        (["compare", "--task", "rl", "--group", "1"], "argument --group: should be an integer >= 2 but is: '1'"),
        (["compare", "--task", "rl", "--kl", "-1"], "argument --kl: should be a finite number >= 0 but is: '-1'"),
        (["demo", "--task", "rl", "--sft-target", "0"], "argument --sft-target: should be a number in (0, 1] but is: '0'"),
        (["compare", "--device", "gpu"], "error: --device gpu: device should be one of ('auto', 'cpu', 'cuda', 'mps') "
                                         "for torch but is: 'gpu': that is MLX's name"),
    ],
)
def test_bad_values_name_the_option_and_the_value(monkeypatch, capsys, args, message):
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--quiet"])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "invalid" not in lines[0] and "_positive" not in lines[0]


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_out_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch, capsys, command):
    _no_training(monkeypatch)
    (tmp_path / "f").write_text("keep me")
    for out, why in ((tmp_path / "f", "is an existing file, not a folder"),
                     (tmp_path / "f" / "sub", "cannot be created: Not a directory")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, *TINY, "--out", str(out)])
        assert exit_.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"gradsmooth {command}: error: --out {str(out)!r} {why}"]
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_out_that_cannot_be_written_is_refused_before_training(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out, why in ((locked, "is not writable: Permission denied"),
                         (locked / "sub", "cannot be created: Permission denied")):
            with pytest.raises(SystemExit) as exit_:
                cli.main(["compare", *TINY, "--out", str(out)])
            assert exit_.value.code == 2
            assert capsys.readouterr().err.strip() == f"gradsmooth compare: error: --out {str(out)!r} {why}"
    finally:
        locked.chmod(0o700)


def test_out_is_probed_and_left_clean(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    with pytest.raises(AssertionError, match="training started"):
        cli.main(["compare", *TINY, "--out", str(tmp_path / "new" / "folder")])
    assert list((tmp_path / "new" / "folder").iterdir()) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == "gradsmooth 0.1.0\n"


@pytest.mark.parametrize("command", [[], ["demo"], ["compare"]])
def test_help_is_plain_text(capsys, command):
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "`" not in text
    if command == ["demo"]:
        flat = " ".join(text.split())
        assert "README sweep's best)" not in flat
        assert "--lr-base LR_BASE base learning rate (default: adamw 0.001 (vit), 0.003 (lm), 0.01 (diffusion), " \
               "0.001 (rl); sgd 0.1 (vit), 0.3 (lm), 0.3 (diffusion), 0.03 (rl); muon 0.01 (vit), 0.02 (lm), 0.03 " \
               "(diffusion), 0.003 (rl); AdamW's on vit and lm, and Muon's on vit, are each arm's choice in the " \
               "published comparisons, docs/results; diffusion's and rl's from short sweeps)" in flat


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_ctrl_c_writes_strict_json_and_its_message_on_its_own_line(tmp_path, monkeypatch, capsys, command):
    real = cli._progress

    def progress(quiet):  # the real progress bars, and a Ctrl-C in the second run's second step
        make = real(quiet)

        def make_tick(config):
            tick = make(config)

            def interrupting(step):
                tick(step)
                if config.label == "smoothed" and step == 1:
                    raise KeyboardInterrupt

            return interrupting

        return make_tick

    monkeypatch.setattr(cli, "_progress", progress)
    args = ["--steps", "4", "--eval-every", "2", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *args] if command == "demo" else [command, "--lrs", "1e-3", "--seeds", "1", *args])
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "it/s]" in err or "%|" in err  # the bar was drawn
    message = f"interrupted: the results gathered so far are in {tmp_path / 'results.json'}"
    assert any(line.startswith(message) for line in re.split(r"[\r\n]", err))  # not glued to the bar's line
    result = _strict_json((tmp_path / "results.json").read_text())
    if command == "demo":
        assert result["interrupted"] and [r["complete"] for r in result["runs"]] == [True, False]
    else:  # the base run finished, the smoothed one did not: one record
        assert result["interrupted"] and [r["arm"] for r in result["records"]] == ["base"]  # no complete smoothed run: its mean and best are null, not NaN
        summary = result["summary"]
        assert summary["rows"][0]["smoothed"] == [None, None] and summary["best"]["smoothed"] is None


def test_python_dash_m_gradsmooth_is_the_command(tmp_path):
    proc = run_cli("demo", "--task", "lm", "--data", "missing.txt", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == "gradsmooth demo: error: data file 'missing.txt' does not exist"
    assert run_cli("--help", cwd=tmp_path).stdout.startswith("usage: gradsmooth")


def test_missing_backend_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # import mlx.core now fails
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--backend", "mlx", *TINY])
    assert exit_.value.code == 2
    assert "backend 'mlx' is not installed: pip install 'gradsmooth[mlx]'" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_keeps_what_was_gathered(tmp_path, monkeypatch, capsys):
    calls = []

    def progress_for(config):
        def tick(step):
            calls.append(step)
            if len(calls) == 10:  # in the third run
                raise KeyboardInterrupt

        return tick

    monkeypatch.setattr(cli, "_progress", lambda quiet: progress_for)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--lrs", "1e-3", "--seeds", "2", *TINY, "--out", str(tmp_path)])
    assert exit_.value.code == 130
    assert "interrupted: the results gathered so far are in" in capsys.readouterr().err
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["interrupted"] and [r["seed"] for r in result["records"]] == [0, 0]
    assert result["summary"]["rows"][0]["lr"] == 1e-3


def test_mlx_backend_runs_the_same_task(tmp_path, capsys):
    pytest.importorskip("mlx.core")
    assert cli.main(["demo", "--backend", "mlx", "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--quiet",
                     "--out", str(tmp_path)]) == 0
    assert "final test_acc" in capsys.readouterr().out


def test_resume_continues_a_comparison_and_refuses_other_settings(tmp_path, capsys):
    args = ["compare", "--lrs", "1e-3", "--depth", "2", *TINY, "--out", str(tmp_path)]
    assert cli.main([*args, "--seeds", "1"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())["records"]
    assert cli.main([*args, "--seeds", "2", "--resume"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["records"][:2] == first and [r["seed"] for r in saved["records"]] == [0, 0, 1, 1]
    assert saved["resumed_from"][0]["command"].endswith("--seeds 1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--seeds", "2", "--window", "5", "--resume"])
    assert exit_.value.code == 2 and "was written with other settings (smoothing.window: 3 -> 5)" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # without --resume or --overwrite, a finished comparison is kept
        cli.main([*args, "--seeds", "1"])
    assert exit_.value.code == 2 and "holds a comparison already (4 runs)" in capsys.readouterr().err
    assert cli.main([*args, "--seeds", "1", "--overwrite"]) == 0


def test_base_from_trains_only_the_smoothed_arm_of_an_ablation(tmp_path, capsys):
    args = ["compare", "--lrs", "1e-3", "--seeds", "1", "--depth", "2", *TINY]
    assert cli.main([*args, "--out", str(tmp_path / "w3")]) == 0
    assert cli.main([*args, "--window", "5", "--base-from", str(tmp_path / "w3"), "--out", str(tmp_path / "w5")]) == 0
    headline, ablation = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("w3", "w5"))
    assert ablation["records"][0] == headline["records"][0] | {"reused_from": str(tmp_path / "w3")}
    assert ablation["base_from"]["provenance"] == headline["provenance"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--steps", "3", "--base-from", str(tmp_path / "w3"), "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "other settings (config.steps:" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_a_depth_of_one_is_refused_before_training_and_leaves_no_folder(tmp_path, monkeypatch, capsys, command):
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--depth", "1", *TINY, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "argument --depth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, module, name", [
    (["demo"], "sklearn", "scikit-learn (module sklearn)"),
    (["demo", "--task", "lm", "--steps", "2"], "tqdm", "tqdm (module tqdm)"),  # the progress bars
    (["compare", "--quiet"], "scipy", "scipy (module scipy)"),
    (["demo", "--quiet"], "matplotlib", "matplotlib (module matplotlib)"),
    (["report", "."], "matplotlib", "matplotlib (module matplotlib)"),
])
def test_a_missing_extra_names_the_pip_install_before_any_work(monkeypatch, capsys, args, module, name):
    _no_training(monkeypatch)
    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"gradsmooth {args[0]}: error: {name} is not installed: " \
                                              f"pip install 'gradsmooth[demo]'"


def test_a_missing_extra_is_one_line_not_a_traceback(tmp_path):
    code = "import sys; sys.modules['sklearn'] = None; from gradsmooth.cli import main; sys.exit(main(['demo']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == "gradsmooth demo: error: scikit-learn (module sklearn) is not " \
                                                   "installed: pip install 'gradsmooth[demo]'\n"
    assert not (tmp_path / "gradsmooth-demo").exists()


def test_missing_torch_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", *TINY])
    assert exit_.value.code == 2
    assert "backend 'torch' is not installed: pip install 'gradsmooth[torch]'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "compare"])
def test_fewer_steps_than_eval_every_still_evaluate_the_last_step(tmp_path, capsys, command):
    args = ["--steps", "3", "--eval-every", "10", "--depth", "2", "--quiet", "--out", str(tmp_path)]
    assert cli.main([command, *args] if command == "demo" else [command, "--lrs", "1e-3", "--seeds", "1", *args]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    runs = saved["runs"] if command == "demo" else saved["records"]
    assert [[row["step"] for row in r["history"]] for r in runs] == [[3], [3]]
    if command == "compare":
        assert all(r["val"] == r["history"][-1]["val_acc"] and r["test"] is not None for r in runs)
        assert saved["summary"]["best"] == {"base": 1e-3, "smoothed": 1e-3}
    else:
        assert "final test_acc: base 0." in capsys.readouterr().out


@pytest.fixture
def no_thread_setting(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize("given, threads, why", [([], 1, "the default for these small models; --threads N to change"),
                                                 (["--threads", "2"], 2, "--threads")])
def test_demo_chooses_its_threads_says_so_and_records_them(tmp_path, capsys, no_thread_setting, given, threads, why):
    import torch

    before = torch.get_num_threads()
    assert cli.main(["demo", *TINY, "--depth", "2", *given, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert f"gradsmooth demo: torch on {threads} CPU thread{'s' if threads > 1 else ''} ({why})" in captured.err
    assert f" s on {threads} thread" in captured.out
    recorded = json.loads((tmp_path / "results.json").read_text())["provenance"]["threads"]
    assert recorded == {"OMP_NUM_THREADS": None, "torch": threads}
    assert torch.get_num_threads() == before  # the process's setting is left as it was


def test_omp_num_threads_is_respected(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # as torch read it at its start
    assert cli.main(["compare", "--lrs", "1e-3", "--seeds", "1", *TINY, "--depth", "2", "--out", str(tmp_path)]) == 0
    assert f"torch on {torch.get_num_threads()} CPU thread" in capsys.readouterr().err
    recorded = json.loads((tmp_path / "results.json").read_text())["provenance"]["threads"]
    assert recorded["torch"] == torch.get_num_threads()


def test_the_demo_closes_with_what_one_seed_can_and_cannot_show(tmp_path, capsys):
    assert cli.main(["demo", *TINY, "--depth", "2", "--out", str(tmp_path)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "One seed shows how the two arms train at these learning rates. It cannot show whether the difference " \
           "is larger than what another seed changes" in out
    assert "`gradsmooth compare` runs both arms over a grid of learning rates and several seeds" in out
    assert out.endswith(f"wrote {tmp_path / 'curves.png'}, {tmp_path / 'depth_structure.png'} and "
                        f"{tmp_path / 'results.json'}")


def test_report_of_a_demo_beside_comparisons_prints_its_table_and_their_overview(tmp_path, capsys):
    assert cli.main(["demo", *TINY, "--depth", "2", "--out", str(tmp_path / "demo")]) == 0
    table = capsys.readouterr().out.split("\nwrote ")[0]
    for name in ("c1", "c2"):
        assert cli.main(["compare", "--lrs", "1e-3", "--seeds", "1", *TINY, "--depth", "2",
                         "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "demo"), str(tmp_path / "c1"), str(tmp_path / "c2")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"demo {tmp_path / 'demo'}:\n\n{table}\n")
    assert "| results | setting | seeds |" in out and f"| {tmp_path / 'c2'} |" in out
    with pytest.raises(SystemExit) as exit_:  # --reported compares comparisons' runs: a demo is named, not skipped
        cli.main(["report", "--reported", "adjacent_cka", str(tmp_path / "c1"), str(tmp_path / "demo")])
    assert exit_.value.code == 2
    assert f"--reported compares the runs of comparisons, but {str(tmp_path / 'demo')!r} holds a demo's results: " \
           "leave it out" in capsys.readouterr().err


def test_compare_says_what_it_wrote(tmp_path, capsys):
    assert cli.main(["compare", "--lrs", "1e-3", "--seeds", "1", *TINY, "--depth", "2", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        f"wrote {tmp_path / 'results.json'}, {tmp_path / 'metric_vs_lr.png'} and {tmp_path / 'curves_at_best_lr.png'}")


def test_the_default_output_folders_are_ignored_by_git():
    root = pathlib.Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for folder in ("gradsmooth-demo", "gradsmooth-compare"):
        assert subprocess.run(["git", "check-ignore", "-q", f"{folder}/results.json"], cwd=root).returncode == 0, folder


def test_threads_with_another_backend_is_refused(monkeypatch, capsys):
    _no_training(monkeypatch)
    monkeypatch.setattr(cli, "backend_module", lambda backend: None)  # as if MLX were installed
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--backend", "mlx", "--threads", "2", *TINY])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "gradsmooth demo: error: --threads 2 sets torch's CPU threads; " \
                                              "--backend mlx does not take it"


SMALL = ["--depth", "2", "--width", "16", *TINY]


def test_demo_diffusion_draws_its_samples(tmp_path, capsys):
    assert cli.main(["demo", "--task", "diffusion", "--batch-size", "8", *SMALL, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base sample_acc" in out and "smoothed test_loss" in out and "final test_loss" in out
    for name in ("curves.png", "depth_structure.png", "samples.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert len(runs[1]["diagnostics"]["samples"]) == 100 and runs[0]["config"]["device"] == "cpu"
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 0  # the samples drawn again from results.json
    assert "samples.png" in capsys.readouterr().out
    assert cli.main(["demo", *SMALL, "--out", str(tmp_path)]) == 0  # another task's demo in the same folder
    assert not (tmp_path / "samples.png").exists()  # no plot of the diffusion run left beside its results


def test_demo_rl_starts_both_arms_from_one_phase1_and_reports_the_reward(tmp_path, capsys, quick_phase1):
    with pytest.warns(RuntimeWarning, match="phase 1 stopped"):
        assert cli.main(["demo", "--task", "rl", "--batch-size", "2", "--group", "2", *SMALL,
                         "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base train_reward" in out and "smoothed test_acc" in out and "\n0 | - | - | " in out
    assert "phase 1 (the same for both, not compared): 4 supervised steps to validation accuracy" in out
    assert "(target 0.3, not reached)" in out and quick_phase1 == [0]
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert runs[0]["phase1"] == runs[1]["phase1"] and runs[1]["config"]["group"] == 2
    assert len(list((tmp_path / "phase1").glob("*.npz"))) == 1


def test_compare_rl_records_the_depth_structure_and_reuses_phase1_when_resumed(tmp_path, capsys, quick_phase1):
    args = ["compare", "--task", "rl", "--lrs", "1e-3,3e-3", "--seeds", "2", "--batch-size", "2", "--group", "2",
            "--kl", "0.1", *SMALL, "--out", str(tmp_path)]
    with pytest.warns(RuntimeWarning, match="phase 1 stopped"):
        assert cli.main(args) == 0
    assert quick_phase1 == [0, 1]  # once per seed, for both arms and both learning rates
    out = capsys.readouterr().out
    assert "| lr | base val_acc | smoothed val_acc |" in out and "test_acc at each arm's chosen" in out
    assert "| adjacent_cka |" in out and "| adjacent_update_cosine |" in out
    result = json.loads((tmp_path / "results.json").read_text())
    record = result["records"][0]
    assert set(record["metrics"]) == {"adjacent_cka", "adjacent_update_cosine"} and record["phase1"]["steps"] == 4
    assert {"train_reward", "train_kl"} <= set(record["history"][-1]) and record["history"][0]["step"] == 0
    config = result["settings"]["config"]
    assert (config["group"], config["kl"], config["sft_target"], config["device"]) == (2, 0.1, 0.3, "cpu")
    assert result["settings"]["problems"] == {"digits": 2, "held_out": 500}
    with pytest.warns(RuntimeWarning):  # a third seed: its phase 1 trained; seeds 0 and 1's kept in the folder
        assert cli.main([*args[:6], "3", *args[7:], "--resume"]) == 0
    assert quick_phase1 == [0, 1, 2]


def test_compare_diffusion_reports_sample_accuracy_beside_the_loss(tmp_path, capsys):
    assert cli.main(["compare", "--task", "diffusion", "--lrs", "1e-3", "--seeds", "2", "--batch-size", "8", *SMALL,
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| lr | base val_loss | smoothed val_loss |" in out and "| sample_acc |" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["settings"]["val_fraction"] == 0.2 and result["settings"]["metric"] == "val_loss"
    assert set(result["records"][0]["metrics"]) == {"adjacent_cka", "adjacent_update_cosine", "sample_acc"}
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "| sample_acc |" in capsys.readouterr().out


def test_an_alpha_schedule_is_recorded_and_base_from_accepts_a_comparison_that_differs_only_in_it(tmp_path, capsys):
    common = ["compare", "--lrs", "1e-3", "--seeds", "1", "--depth", "2", *TINY]
    assert cli.main([*common, "--out", str(tmp_path / "constant")]) == 0
    assert cli.main([*common, "--alpha", "0.8", "--alpha-schedule", "cosine", "--alpha-final", "0.1",
                     "--base-from", str(tmp_path / "constant"), "--out", str(tmp_path / "decay")]) == 0
    result = json.loads((tmp_path / "decay" / "results.json").read_text())
    assert result["settings"]["smoothing"]["alpha"] == {"kind": "cosine", "start": 0.8, "final": 0.1, "steps": 4}
    assert "alpha cosine 0.8 to 0.1 over 4 steps" in result["settings"]["label"]
    (base,) = [r for r in result["records"] if r["arm"] == "base"]
    assert base["reused_from"] == str(tmp_path / "constant")
    smoothed = [r for r in result["records"] if r["arm"] == "smoothed"][0]
    constant = json.loads((tmp_path / "constant" / "results.json").read_text())["records"]
    assert smoothed["history"] != [r for r in constant if r["arm"] == "smoothed"][0]["history"]
    assert cli.main([*common, "--alpha-schedule", "linear", "--out", str(tmp_path / "linear")]) == 0
    linear = json.loads((tmp_path / "linear" / "results.json").read_text())["settings"]["smoothing"]["alpha"]
    assert linear == {"kind": "linear", "start": 1.0, "final": 0.0, "steps": 4}  # --alpha-final's default: 0


def test_a_device_mlx_does_not_name_is_refused_before_training(monkeypatch, capsys):
    pytest.importorskip("mlx.core")
    _no_training(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--backend", "mlx", "--device", "cuda", "--quiet"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("gradsmooth demo: error: --device cuda: device should be one of ('auto', "
                                               "'cpu', 'gpu') for MLX but is: 'cuda': MLX names its devices cpu and gpu")


def test_a_device_the_machine_lacks_is_refused_before_training(monkeypatch, capsys):
    import torch

    _no_training(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        cli.main(["compare", "--device", "cuda", "--quiet"])
    assert "error: --device cuda: device 'cuda' is not available here" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []
    monkeypatch.setattr(cli, "run", lambda config, *a, **k: seen.append(config.device) or pytest.skip("seen"))
    with pytest.raises(pytest.skip.Exception):  # auto picks the GPU torch sees (training itself stubbed)
        cli.main(["demo", "--quiet", "--out", "unused"])
    assert seen == ["cuda"]


def test_a_comparison_written_before_devices_were_recorded_is_resumed_as_a_cpu_one(tmp_path, capsys):
    args = ["compare", "--lrs", "1e-3", "--seeds", "1", "--depth", "2", *TINY, "--out", str(tmp_path)]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    del saved["settings"]["config"]["device"]  # as the published comparisons were written
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert cli.main([*args, "--resume"]) == 0
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert len(resumed["resumed_from"]) == 1 and resumed["records"] == saved["records"]  # kept, not trained again
    assert resumed["settings"]["config"]["device"] == "cpu"
