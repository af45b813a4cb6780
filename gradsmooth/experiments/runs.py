"""Runs and sweeps: one training run, and ``compare`` — base vs smoothed at every learning rate.

docs/method.md, "Comparing fairly": smoothing changes the effective step size, so the base and the
smoothed optimizer are each run at every learning rate of one grid, over the same seeds
(same initial weights and data order per seed). Each arm's learning rate is chosen on a
validation split, and the test metric at that rate is compared seed by seed: the mean paired
difference, its 95 % Student-t interval, the win count and a verdict.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pathlib
import platform
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

from ..compare import Arm, paired_difference, summarize_records, sweep
from . import loop

__all__ = ["RunConfig", "RunResult", "run", "compare", "summarize", "METRICS", "SELECTION", "BACKENDS", "Backend",
           "backend_module", "BackendMissing", "paired_difference", "provenance", "machine", "format_summary"]

# the headline metric of each task in the demo: (history key, True when higher is better)
METRICS = {"vit": ("test_acc", True), "lm": ("val_loss", False)}
# compare's metrics per task: (the validation key learning rates are chosen on, the test key
# reported at the chosen rate, True when higher is better)
SELECTION = {"vit": ("val_acc", "test_acc", True), "lm": ("val_loss", "test_loss", False)}


@dataclass(frozen=True)
class Backend:
    """Where a backend's models and training step live, and what to install for it."""

    module: str  # the framework module of gradsmooth.experiments: models, build_optimizer, Trainer
    framework: str  # what must import for the backend to be installed
    extra: str  # pip install 'gradsmooth[extra]'


# the one registry of backends: nothing here is imported until a run needs it
BACKENDS = {
    "torch": Backend("gradsmooth.experiments.torch_models", framework="torch", extra="torch"),
    "mlx": Backend("gradsmooth.experiments.mlx_models", framework="mlx.core", extra="mlx"),
}


class BackendMissing(ImportError):
    """The backend's framework is not installed: the message names the extra to install."""


@dataclass(frozen=True)
class RunConfig:
    """One training run. ``smoothing`` is None for the base optimizer, else the wrapper's
    arguments (window, kernel, boundary, normalize, alpha, mode)."""

    task: str = "vit"
    backend: str = "torch"
    optimizer: str = "adamw"
    lr: float = 1e-3
    smoothing: dict[str, Any] | None = None
    steps: int = 1000
    seed: int = 0
    batch_size: int = 64
    eval_every: int = 100
    data: str | None = None
    context: int = 64
    weight_decay: float = 0.05
    warmup: float = 0.05
    depth: int | None = None  # blocks; None: the task's default (loop.MODEL_SIZES)
    width: int | None = None  # model dimension; None: the task's default

    @property
    def label(self) -> str:
        return "smoothed" if self.smoothing else "base"


@dataclass
class RunResult:
    config: RunConfig
    history: list[dict[str, float]] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = False

    def final(self, key: str) -> float:
        return self.history[-1][key] if self.history else math.nan

    def to_json(self) -> dict[str, Any]:
        out = {"config": asdict(self.config), "history": self.history, "seconds": round(self.seconds, 2),
               "complete": self.complete}
        out["diagnostics"] = {k: np.asarray(v).round(4).tolist() for k, v in self.diagnostics.items()}
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> RunResult:
        """A run as :meth:`to_json` wrote it (a null number, written for NaN or infinity, is NaN again)."""
        nan = lambda v: math.nan if v is None else v  # noqa: E731
        history = [{k: nan(v) for k, v in row.items()} for row in entry.get("history", [])]
        diagnostics = {k: np.asarray(v, dtype=float) for k, v in entry.get("diagnostics", {}).items()}
        return cls(RunConfig(**entry["config"]), history, diagnostics, entry.get("seconds", 0.0),
                   entry.get("complete", False))


def backend_module(backend: str) -> ModuleType:
    """The backend's framework module (see ``BACKENDS``), imported on demand; ``BackendMissing``
    when its framework is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend should be one of {tuple(BACKENDS)} but is: {backend!r}")
    entry = BACKENDS[backend]
    try:
        importlib.import_module(entry.framework)
    except ImportError:
        raise BackendMissing(f"backend {backend!r} is not installed: pip install 'gradsmooth[{entry.extra}]'") from None
    return importlib.import_module(entry.module)


def run(config: RunConfig, data: Any, progress: Callable[[int], None] | None = None, diagnose: bool = False,
        into: list[RunResult] | None = None) -> RunResult:
    """Train once. The result is appended to ``into`` before training starts, so that on
    Ctrl-C (the KeyboardInterrupt goes on up) what was gathered so far is there, ``complete=False``."""
    result = RunResult(config)
    if into is not None:
        into.append(result)
    start = time.perf_counter()
    try:
        module = backend_module(config.backend)
        with getattr(module, "deterministic", contextlib.nullcontext)():
            loop.train(config, data, result, module.Trainer, progress=progress, diagnose=diagnose)
        result.complete = True
    finally:
        result.seconds = time.perf_counter() - start
    return result


def compare(config: RunConfig, smoothing: dict[str, Any], lrs: Sequence[float], seeds: Sequence[int], data: Any,
            into: list[RunResult], on_result: Callable[[RunResult], None] | None = None,
            progress_for: Callable[[RunConfig], Callable[[int], None] | None] | None = None) -> list[RunResult]:
    """Base and smoothed at every learning rate in ``lrs`` for every seed, appended to ``into``:
    :func:`gradsmooth.compare.sweep` over :func:`run`."""
    val_key, test_key, higher = SELECTION[config.task]

    def train(arm: Arm, seed: int) -> dict[str, Any]:
        cfg = replace(config, lr=arm.lr, seed=seed, smoothing=arm.smoothing)
        result = run(cfg, data, progress=progress_for(cfg) if progress_for else None, into=into)
        if on_result:
            on_result(result)
        return {"val": _final(result, val_key), "test": _final(result, test_key)}

    sweep(train, lrs, seeds, smoothing=smoothing, higher_is_better=higher)
    return into


def _final(result: RunResult, key: str) -> float:
    """The run's last ``key``; NaN when its history has none (e.g. a test metric never evaluated)."""
    return result.history[-1].get(key, math.nan) if result.history else math.nan


def summarize(results: Sequence[RunResult]) -> dict[str, Any]:
    """The complete runs' summary (:func:`gradsmooth.compare.summarize_records`): per learning
    rate and arm the mean and std over seeds of the final validation metric; each arm's learning
    rate chosen on it (``best``); and, at the chosen rates, the test metric of each arm and the
    per-seed paired difference smoothed - base (:func:`paired_difference`)."""
    val_key, test_key, higher = SELECTION[results[0].config.task]
    records = [{"lr": r.config.lr, "arm": r.config.label, "seed": r.config.seed, "val": _final(r, val_key),
                "test": _final(r, test_key)} for r in results if r.complete]
    return summarize_records(records, higher, val_key, test_key)


def _signed(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:+.4f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (also valid Markdown): the validation metric per
    learning rate (chosen rates marked), then the test metric at the chosen rates and the
    paired difference with its confidence interval, win count and verdict."""
    key = summary["metric"]
    lines = [f"| lr | base {key} | smoothed {key} |", "| --- | --- | --- |"]
    for row in summary["rows"]:
        mark = {arm: " *" if summary["best"][arm] == row["lr"] else "" for arm in ("base", "smoothed")}
        lines.append(f"| {row['lr']:g} | {row['base'][0]:.4f} ± {row['base'][1]:.4f}{mark['base']} | "
                     f"{row['smoothed'][0]:.4f} ± {row['smoothed'][1]:.4f}{mark['smoothed']} |")
    lines.append(f"(* the learning rate each arm chose on {key}; ± is the standard deviation over seeds)")
    h = summary["best_vs_best"]
    if h:
        better = "higher" if h["higher_is_better"] else "lower"
        low, high = h["ci"]
        lines.append("")
        lines.append(f"{h['metric']} at each arm's chosen learning rate ({better} is better): base "
                     f"{h['base'][0]:.4f} ± {h['base'][1]:.4f} at lr {h['base_lr']:g}; smoothed "
                     f"{h['smoothed'][0]:.4f} ± {h['smoothed'][1]:.4f} at lr {h['smoothed_lr']:g}")
        lines.append(f"smoothed - base, paired over seeds {h['seeds']}: mean {_signed(h['mean'])}, "
                     f"{round(100 * h['confidence'])}% CI [{_signed(low)}, {_signed(high)}] (Student t); "
                     f"smoothed better on {h['wins']} of {h['n']} seeds; verdict: {h['verdict']}")
    return "\n".join(lines)


def _git(root: pathlib.Path, *args: str) -> str | None:
    """``git -C root args`` 's output, or None when git is missing or fails."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def provenance(argv: Sequence[str], backend: str, seeds: Sequence[int]) -> dict[str, Any]:
    """What reproduces a results.json: the exact command, the code's git commit and whether its
    checkout had uncommitted changes (None when the package is not in a git checkout), the
    thread counts, and the seeds."""
    root = pathlib.Path(__file__).resolve().parents[2]
    top = _git(root, "rev-parse", "--show-toplevel")
    inside = top is not None and pathlib.Path(top.strip()).resolve() == root
    commit = _git(root, "rev-parse", "HEAD") if inside else None
    status = _git(root, "status", "--porcelain") if inside else None
    threads: dict[str, Any] = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if backend == "torch":
        import torch

        threads["torch"] = torch.get_num_threads()
    return {"command": shlex.join(["gradsmooth", *argv]), "git_commit": commit.strip() if commit else None,
            "git_dirty": bool(status.strip()) if status is not None else None, "threads": threads,
            "seeds": list(seeds)}


def machine() -> dict[str, Any]:
    """The machine and versions, for results.json."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    for name in ("torch", "mlx", "gradsmooth", "scipy", "sklearn"):
        try:
            module = importlib.import_module(name if name != "mlx" else "mlx.core")
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return info
