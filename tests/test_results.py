"""gradsmooth.results: provenance names the command, commit, threads and seeds; results.json is
strict JSON, written whole, and read back with errors that name the folder."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gradsmooth.results import ResultsError, machine, provenance, read_results, strict, write_results


def test_provenance_names_the_command_commit_threads_and_seeds():
    p = provenance(["gradsmooth", "compare", "--out", "my dir"], [0, 1])
    assert p["command"] == "gradsmooth compare --out 'my dir'" and p["seeds"] == [0, 1]
    assert p["git_commit"] is None or len(p["git_commit"]) == 40
    assert "OMP_NUM_THREADS" in p["threads"]


def test_provenance_reads_a_frameworks_threads_only_when_the_run_imported_it():
    code = ("import sys; from gradsmooth.results import provenance, machine; p = provenance([], [0]); m = machine();"
            "print('torch' in sys.modules, 'torch' in p['threads'], 'torch' in m)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]
    torch = pytest.importorskip("torch")
    assert provenance([], [0])["threads"]["torch"] == torch.get_num_threads()


def test_results_json_is_strict_and_reads_back(tmp_path):
    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5, np.float32(2.5), (np.int64(3), True)], "c": None}
    assert json.loads(json.dumps(strict(value), allow_nan=False)) == {"a": None, "b": [None, None, 1.5, 2.5, [3, True]],
                                                                      "c": None}
    path = write_results(tmp_path / "new", {"command": "compare", "x": math.nan})
    assert path == tmp_path / "new" / "results.json" and [p.name for p in (tmp_path / "new").iterdir()] == ["results.json"]
    assert read_results(tmp_path / "new") == {"command": "compare", "x": None}


def test_read_results_names_the_folder(tmp_path):
    with pytest.raises(ResultsError, match="holds no results.json"):
        read_results(tmp_path)
    with pytest.raises(ResultsError, match=r"DIR '.*nowhere' does not exist"):
        read_results(tmp_path / "nowhere")
    (tmp_path / "results.json").write_text("{oops")
    with pytest.raises(ResultsError, match="is not JSON"):
        read_results(tmp_path)


def test_machine_records_what_selects_the_cpu_kernels(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    m = machine()
    assert m["torch_cpu"] == {"capability": torch.backends.cpu.get_cpu_capability(),
                              "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available()}
    assert m["kernel_environment"] == {"MKL_CBWR": "AVX2"}
    assert m["cpu"] is None or isinstance(m["cpu"], str) and m["cpu"]


def test_the_capability_recorded_is_the_one_torch_ran_with():
    pytest.importorskip("torch")
    code = "import torch; from gradsmooth.results import machine; m = machine(); " \
           "print(m['torch_cpu']['capability'], m['kernel_environment'])"
    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")  # torch's kernels without vector instructions
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out == "DEFAULT {'ATEN_CPU_CAPABILITY': 'default'}\n"


def test_a_dataclass_is_written_as_its_fields():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Schedule:
        kind: str
        start: float

    assert strict({"alpha": Schedule("linear", math.nan)}) == {"alpha": {"kind": "linear", "start": None}}
    assert strict(Schedule) is Schedule  # a class is not an instance


def test_provenance_counts_changes_to_tracked_files_not_new_results_folders(monkeypatch):
    from gradsmooth import results

    calls = []
    monkeypatch.setattr(results, "_git", lambda *args: calls.append(args) or (str(results.ROOT) + "\n"
                                                                              if args[0] == "rev-parse" else ""))
    origin = results.provenance(["gradsmooth", "compare"], [0])
    assert origin["git_dirty"] is False
    assert ("status", "--porcelain", "--untracked-files=no") in calls
