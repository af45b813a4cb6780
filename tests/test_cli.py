"""The gradsmooth command: demo and compare end to end on tiny budgets, help, errors, Ctrl-C."""

import json
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


def test_compare_sweeps_and_reports_best_vs_best(tmp_path, capsys):
    args = ["compare", "--task", "lm", "--lrs", "1e-3,1e-2", "--seeds", "2", "--context", "16", "--batch-size", "4",
            "--window", "5", "--kernel", "triangular", "--mode", "gradient", *TINY, "--out", str(tmp_path)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "best vs best (val_loss, lower is better)" in out
    result = json.loads((tmp_path / "results.json").read_text())
    assert len(result["runs"]) == 2 * 2 * 2 and not result["interrupted"]
    assert result["settings"]["smoothing"]["window"] == 5 and result["machine"]["torch"]
    assert len(result["summary"]["best_vs_best"]["per_seed_diff"]) == 2
    assert (tmp_path / "metric_vs_lr.png").exists() and (tmp_path / "curves_at_best_lr.png").exists()


def test_help_explains_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["compare", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--task", "--backend", "--optimizer", "--window", "--kernel", "--boundary", "--normalize",
                   "--alpha", "--mode", "--lrs", "--steps", "--seeds", "--out", "--quiet", "--data"):
        assert option in text
    assert text.count("default") >= 14


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "gradsmooth", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "lm", "--data", "missing.txt"], "data file 'missing.txt' does not exist"),
        (["--task", "lm", "--data", "empty.txt"], "is empty"),
        (["--task", "lm", "--data", "short.txt"], "too short for the context length 64"),
        (["--boundary", "wrap"], "invalid choice: 'wrap'"),
        (["--window", "4"], "window should be an odd integer >= 1 but is: 4"),
        (["--kernel", "1,2,3"], "kernel should be symmetric"),
        (["--lrs", "0.1,x"], "learning rates should be comma-separated numbers"),
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
    assert result["interrupted"] and [r["complete"] for r in result["runs"]] == [True, True, False]
    assert result["summary"]["rows"][0]["lr"] == 1e-3


def test_mlx_backend_runs_the_same_task(tmp_path, capsys):
    pytest.importorskip("mlx.core")
    assert cli.main(["demo", "--backend", "mlx", "--steps", "2", "--eval-every", "1", "--batch-size", "4", "--quiet",
                     "--out", str(tmp_path)]) == 0
    assert "final test_acc" in capsys.readouterr().out
