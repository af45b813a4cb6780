"""examples/mlx_distributed.py under ``mlx.launch -n 2 --backend ring``: both ranks end equal,
and equal to one process trained on the global batch (docs/recipes/mlx-distributed.md)."""

import os
import pathlib
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "mlx_distributed.py"
PAGE = ROOT / "docs" / "recipes" / "mlx-distributed.md"
COMMAND = "mlx.launch -n 2 --backend ring -- python examples/mlx_distributed.py"
STEPS = ["--steps", "10"]
# float32, the same computation summed in another order (mean of two half-batch means against one
# mean); AdamW amplifies the rounding where second moments are tiny. Measured: 2.6e-6 at most after 10 steps.
RTOL, ATOL = 1e-4, 1e-5
TIMEOUT_S = 120


def launcher() -> list[str]:
    """The ``mlx.launch`` console script of this interpreter's environment (or on PATH)."""
    if sys.platform == "win32":
        pytest.skip("mlx.launch starts its processes through /bin/bash: not on Windows")
    beside = pathlib.Path(sys.executable).with_name("mlx.launch")
    found = str(beside) if beside.exists() else shutil.which("mlx.launch")
    if found is None:
        pytest.skip("the mlx.launch console script (installed with mlx) is neither beside sys.executable nor on PATH")
    return [found]


def free_ports(n: int = 2) -> int:
    """A port p with p, ..., p + n - 1 free on 127.0.0.1 now: the ring backend listens on p + rank."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        if first + n > 65535:
            continue
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"found no {n} consecutive free ports on 127.0.0.1")


def launch(out: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the example on two ranks; the whole process group is killed if it outlives TIMEOUT_S."""
    cmd = [*launcher(), "-n", "2", "--backend", "ring", "--starting-port", str(free_ports(2)), "--",
           sys.executable, str(SCRIPT), *STEPS, "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks: one session of their own
        stdout, stderr = proc.communicate()
        pytest.fail(f"mlx.launch did not finish in {TIMEOUT_S} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def load(path: pathlib.Path) -> dict[str, np.ndarray]:
    return {name: np.array(value) for name, value in mx.load(str(path)).items()}


def run_one_process(args: list[str], out: pathlib.Path) -> dict[str, np.ndarray]:
    """The example's main() in this process (a distributed group of one); its final parameters."""
    runpy.run_path(str(SCRIPT))["main"]([*args, "--out", str(out)])
    return load(out / "rank0.safetensors")


def test_two_ranks_stay_equal_and_match_one_process_on_the_global_batch(tmp_path):
    done = launch(tmp_path / "two")
    report = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    # mlx.launch exits 0 even when a rank fails: each rank's line and file are the evidence
    for rank in (0, 1):
        assert f"rank {rank} of 2: final loss" in done.stdout, report
        assert (tmp_path / "two" / f"rank{rank}.safetensors").exists(), report
    assert done.stdout.count("BlockPlan:") == 1, report  # printed by rank 0 only
    rank0, rank1 = (load(tmp_path / "two" / f"rank{r}.safetensors") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)

    # the same script without mlx.launch: a group of one on the whole global batch
    one = run_one_process(STEPS, tmp_path / "one")
    assert one.keys() == rank0.keys()
    for name in one:
        np.testing.assert_allclose(rank0[name], one[name], rtol=RTOL, atol=ATOL, err_msg=name)
    initial = run_one_process(["--steps", "0"], tmp_path / "initial")
    moved = max(np.abs(one[name] - initial[name]).max() for name in one)
    assert moved > 100 * ATOL, "the models hardly trained: the comparison would prove little"


def test_docs_show_the_command_and_the_step_the_script_runs():
    page, script = PAGE.read_text(), SCRIPT.read_text()
    assert COMMAND in page and COMMAND in script
    block = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    for line in block.splitlines():
        code = line.split("#", 1)[0].strip()
        assert code in script, f"{PAGE.name} shows {code!r}, which {SCRIPT.name} does not run"
