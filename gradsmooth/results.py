"""results.json: what reproduces a result ([`provenance`][gradsmooth.results.provenance],
[`machine`][gradsmooth.results.machine]), written as strict JSON ([`write_results`][gradsmooth.results.write_results])
and read back ([`read_results`][gradsmooth.results.read_results]).

Framework-free: the thread count of a framework is recorded only when that framework is
already imported by the run.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import numbers
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["KERNEL_ENVIRONMENT", "ResultsError", "machine", "provenance", "read_results", "strict", "write_results", "wrote"]

ROOT = pathlib.Path(__file__).resolve().parents[1]


class ResultsError(ValueError):
    """A folder holds no readable results.json."""


def _git(*args: str) -> str | None:
    """``git -C ROOT args`` 's output, or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def provenance(command: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """What reproduces a results.json: the exact ``command``, the git commit of gradsmooth's
    checkout and whether its tracked files had uncommitted changes (None when gradsmooth is
    installed from a wheel, not run from a checkout; untracked files, such as the results
    folders being written, do not count), the thread counts, and the seeds."""
    top = _git("rev-parse", "--show-toplevel")
    inside = top is not None and pathlib.Path(top.strip()).resolve() == ROOT
    commit = _git("rev-parse", "HEAD") if inside else None
    status = _git("status", "--porcelain", "--untracked-files=no") if inside else None
    threads: dict[str, Any] = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if "torch" in sys.modules:  # never imported here: only what the run itself uses
        threads["torch"] = sys.modules["torch"].get_num_threads()
    return {"command": shlex.join(command), "git_commit": commit.strip() if commit else None,
            "git_dirty": bool(status.strip()) if status is not None else None, "threads": threads,
            "seeds": list(seeds)}


# environment variables that change which CPU kernels run (torch's ATen, MKL, oneDNN), where set
KERNEL_ENVIRONMENT = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "MKL_DEBUG_CPU_TYPE",
                      "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def machine() -> dict[str, Any]:
    """The machine and the versions of the packages a run may use (those installed); and what
    selects the CPU kernels, on which a float32 run's numbers depend to the last bit beside the
    thread count ([`provenance`][gradsmooth.results.provenance]): the CPU model (MKL takes other code paths on other
    vendors and models), torch's CPU capability (its kernels' vector width, e.g. AVX2 or
    AVX512) and whether it has MKL and oneDNN (when the run uses torch), and the environment
    variables of `KERNEL_ENVIRONMENT` that are set."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": _cpu_model()}
    for name in ("numpy", "torch", "mlx", "gradsmooth", "scipy", "sklearn"):
        if name in ("torch", "mlx") and name not in sys.modules:
            continue  # a framework the run did not use is not imported to read its version
        try:
            module = importlib.import_module(name if name != "mlx" else "mlx.core")
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    if "torch" in sys.modules:
        backends = sys.modules["torch"].backends
        info["torch_cpu"] = {"capability": backends.cpu.get_cpu_capability(), "mkl": backends.mkl.is_available(),
                             "mkldnn": backends.mkldnn.is_available()}
    info["kernel_environment"] = {k: os.environ[k] for k in KERNEL_ENVIRONMENT if k in os.environ}
    return info


def _cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says, else None."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def strict(value: Any) -> Any:
    """``value`` with every NaN or infinity made None (JSON null), tuples made lists, NumPy
    scalars made Python's and dataclass instances (e.g. an alpha schedule) dicts of their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return strict(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value) if math.isfinite(value) else None


def write_results(out: str | pathlib.Path, payload: dict[str, Any]) -> pathlib.Path:
    """``out``/results.json in strict JSON (a NaN or infinite number is null); written to a
    temporary file first, so that a Ctrl-C while writing never leaves half a file."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, part = out / "results.json", out / f".results.json.{os.getpid()}"
    part.write_text(json.dumps(strict(payload), indent=1, default=str, allow_nan=False))
    part.replace(path)
    return path


def read_results(folder: str | pathlib.Path) -> dict[str, Any]:
    """``folder``/results.json as written by [`write_results`][gradsmooth.results.write_results];
    [`ResultsError`][gradsmooth.results.ResultsError] when it is missing or not JSON."""
    path = pathlib.Path(folder) / "results.json"
    if not pathlib.Path(folder).is_dir():
        raise ResultsError(f"DIR {str(folder)!r} does not exist" if not pathlib.Path(folder).exists()
                           else f"DIR {str(folder)!r} is a file, not a results folder")
    if not path.is_file():
        raise ResultsError(f"DIR {str(folder)!r} holds no results.json")
    try:
        payload = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"{str(path)!r} is not JSON: {err}") from None
    if not isinstance(payload, dict):
        raise ResultsError(f"{str(path)!r} is not a results.json of gradsmooth")
    return payload


def wrote(paths: Sequence[str | pathlib.Path]) -> str:
    """"wrote a, b and c": the closing line of a command that wrote the files ``paths`` (at least one)."""
    names = [str(p) for p in paths]
    return "wrote " + (", ".join(names[:-1]) + " and " if len(names) > 1 else "") + names[-1]
