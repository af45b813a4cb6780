"""Runs and sweeps: one training run, and ``compare`` — base vs smoothed at every learning rate.

docs/method.md, "Comparing fairly": smoothing changes the effective step size, so the base and the
smoothed optimizer are each run at every learning rate of one grid, over the same seeds
(same initial weights and data order per seed). Each arm's learning rate is chosen on a
validation split, and the test metric at that rate is compared seed by seed: the mean paired
difference, its 95 % Student-t interval, the win count and a verdict.
"""

from __future__ import annotations

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
    "LEGACY_SETTINGS",
    "METRICS",
    "REPORTED",
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
METRICS = {"vit": ("test_acc", True), "lm": ("val_loss", False), "diffusion": ("test_loss", False),
           "rl": ("test_acc", True)}
# compare's metrics per task: (the validation key learning rates are chosen on, the test key
# reported at the chosen rate, True when higher is better)
SELECTION = {"vit": ("val_acc", "test_acc", True), "lm": ("val_loss", "test_loss", False),
             "diffusion": ("val_loss", "test_loss", False), "rl": ("val_acc", "test_acc", True)}
# what compare records beside its two metrics, at the end of each run and never chosen on: the
# depth structure (loop.depth_summary) for every task, and these history keys of the last row
REPORTED = {"diffusion": ("sample_acc",)}
# the value a setting had before results.json recorded it: a comparison written before is read
# with it (compare.sweep's ``defaults``), so that --resume and --base-from still accept it
LEGACY_SETTINGS = {"config.device": "cpu"}


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
    device: str = "auto"  # the framework's device (cpu, cuda, mps; MLX: cpu, gpu); auto: the best there is
    # rl only (None elsewhere; None: reasoning.RL_DEFAULTS): answers sampled per prompt, the KL
    # coefficient to the phase-1 model, phase 1's target accuracy on the validation problems
    group: int | None = None
    kl: float | None = None
    sft_target: float | None = None

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
    phase1: dict[str, Any] | None = None  # rl: what phase 1 did (reasoning.train_phase1), trained or kept

    def final(self, key: str) -> float:
        return self.history[-1][key] if self.history else math.nan

    def to_json(self) -> dict[str, Any]:
        out = {"config": asdict(self.config), "history": self.history, "seconds": round(self.seconds, 2),
               "complete": self.complete}
        out["diagnostics"] = {k: np.asarray(v).round(4).tolist() for k, v in self.diagnostics.items()}
        if self.phase1 is not None:
            out["phase1"] = self.phase1
        return out

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> RunResult:
        """A run as `to_json` wrote it (a null number, written for NaN or infinity, is NaN again)."""
        nan = lambda v: math.nan if v is None else v
        history = [{k: nan(v) for k, v in row.items()} for row in entry.get("history", [])]
        diagnostics = {k: np.asarray(v, dtype=float) for k, v in entry.get("diagnostics", {}).items()}
        config = dict(entry["config"])
        if isinstance((config.get("smoothing") or {}).get("alpha"), dict):  # a schedule, as strict JSON writes it
            config["smoothing"] = config["smoothing"] | {"alpha": loop.AlphaSchedule(**config["smoothing"]["alpha"])}
        return cls(RunConfig(**config), history, diagnostics, entry.get("seconds", 0.0), entry.get("complete", False),
                   entry.get("phase1"))


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
    module = backend_module(config.backend)
    config = replace(config, device=module.resolve_device(config.device))  # an unknown device: before training
    result = RunResult(config)
    if into is not None:
        into.append(result)
    start = time.perf_counter()
    try:
        with module.running(config):
            loop.train(config, data, result, module.TRAINERS[config.task], progress=progress, diagnose=diagnose)
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
    [`gradsmooth.compare.sweep`][gradsmooth.compare.sweep] over `run`; each record holds the run's history and,
    under ``metrics``, the numbers reported beside the two metrics (never chosen on): the depth
    structure (`depth_summary`) and the task's ``REPORTED``."""
    val_key, test_key, higher = SELECTION[config.task]

    def train(arm: Arm, seed: int) -> dict[str, Any]:
        cfg = replace(config, lr=arm.lr, seed=seed, smoothing=arm.smoothing)
        result = run(cfg, data, progress=progress_for(cfg) if progress_for else None, diagnose=True)
        metrics = loop.depth_summary(result.diagnostics) | {k: _final(result, k) for k in REPORTED.get(config.task, ())}
        record = {"val": _final(result, val_key), "test": _final(result, test_key), "history": result.history,
                  "metrics": metrics}
        return record | ({"phase1": result.phase1} if result.phase1 is not None else {})

    return sweep(train, lrs, seeds, smoothing=smoothing, higher_is_better=higher, out=out, metric=val_key,
                 test_metric=test_key, settings=settings, command=command, verbose=verbose, resume=resume,
                 overwrite=overwrite, base_from=base_from, defaults=LEGACY_SETTINGS)


def _final(result: RunResult, key: str) -> float:
    """The run's last ``key``; NaN when its history has none (e.g. a test metric never evaluated)."""
    return result.history[-1].get(key, math.nan) if result.history else math.nan
