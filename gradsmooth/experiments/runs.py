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
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

from ..compare import Arm, sweep
from . import loop

__all__ = [
    "BACKENDS",
    "METRICS",
    "SELECTION",
    "Backend",
    "BackendMissing",
    "RunConfig",
    "RunResult",
    "backend_module",
    "compare",
    "run",
]

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
        """A run as `to_json` wrote it (a null number, written for NaN or infinity, is NaN again)."""
        nan = lambda v: math.nan if v is None else v
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
            out: str | pathlib.Path | None = None, verbose: bool = True,
            progress_for: Callable[[RunConfig], Callable[[int], None] | None] | None = None,
            command: Sequence[str] | None = None, settings: dict[str, Any] | None = None,
            resume: bool = False, overwrite: bool = False,
            base_from: str | pathlib.Path | None = None) -> dict[str, Any]:
    """Base and smoothed at every learning rate in ``lrs`` for every seed:
    [`gradsmooth.compare.sweep`][gradsmooth.compare.sweep] over `run`; each record holds the run's history."""
    val_key, test_key, higher = SELECTION[config.task]

    def train(arm: Arm, seed: int) -> dict[str, Any]:
        cfg = replace(config, lr=arm.lr, seed=seed, smoothing=arm.smoothing)
        result = run(cfg, data, progress=progress_for(cfg) if progress_for else None)
        return {"val": _final(result, val_key), "test": _final(result, test_key), "history": result.history}

    return sweep(train, lrs, seeds, smoothing=smoothing, higher_is_better=higher, out=out, metric=val_key,
                 test_metric=test_key, settings=settings, command=command, verbose=verbose, resume=resume,
                 overwrite=overwrite, base_from=base_from)


def _final(result: RunResult, key: str) -> float:
    """The run's last ``key``; NaN when its history has none (e.g. a test metric never evaluated)."""
    return result.history[-1].get(key, math.nan) if result.history else math.nan
