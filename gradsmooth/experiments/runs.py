"""Runs and sweeps: one training run, and ``compare`` — base vs smoothed at every learning rate.

docs/method.md, "Comparing fairly": smoothing changes the effective step size, so the base and the
smoothed optimizer are each run at every learning rate of one grid, over the same seeds
(same initial weights and data order per seed), and compared best with best.
"""

from __future__ import annotations

import importlib
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any

import numpy as np

from . import loop

__all__ = ["RunConfig", "RunResult", "run", "compare", "summarize", "METRICS", "BACKENDS", "Backend",
           "backend_module", "BackendMissing"]

# the headline metric of each task: (history key, True when higher is better)
METRICS = {"vit": ("test_acc", True), "lm": ("val_loss", False)}


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
        trainer = backend_module(config.backend).Trainer
        loop.train(config, data, result, trainer, progress=progress, diagnose=diagnose)
        result.complete = True
    finally:
        result.seconds = time.perf_counter() - start
    return result


def compare(config: RunConfig, smoothing: dict[str, Any], lrs: Sequence[float], seeds: Sequence[int], data: Any,
            into: list[RunResult], on_result: Callable[[RunResult], None] | None = None,
            progress_for: Callable[[RunConfig], Callable[[int], None] | None] | None = None) -> list[RunResult]:
    """Base and smoothed at every learning rate in ``lrs`` for every seed, appended to ``into``."""
    for lr in lrs:
        for seed in seeds:
            for smooth in (None, smoothing):
                cfg = replace(config, lr=lr, seed=seed, smoothing=smooth)
                result = run(cfg, data, progress=progress_for(cfg) if progress_for else None, into=into)
                if on_result:
                    on_result(result)
    return into


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(results: Sequence[RunResult]) -> dict[str, Any]:
    """Per learning rate and arm: mean and std of the final metric; the best learning rate of
    each arm; and best vs best: the per-seed difference smoothed - base at their best rates."""
    task = results[0].config.task
    key, higher = METRICS[task]
    table: dict[float, dict[str, dict[int, float]]] = {}
    for r in results:
        if r.complete:
            table.setdefault(r.config.lr, {"base": {}, "smoothed": {}})[r.config.label][r.config.seed] = r.final(key)
    rows = []
    for lr in sorted(table):
        row = {"lr": lr}
        for arm in ("base", "smoothed"):
            row[arm] = _mean_std(list(table[lr][arm].values())) if table[lr][arm] else (math.nan, math.nan)
        seeds = sorted(set(table[lr]["base"]) & set(table[lr]["smoothed"]))
        row["diff"] = _mean_std([table[lr]["smoothed"][s] - table[lr]["base"][s] for s in seeds]) if seeds else (math.nan, math.nan)
        rows.append(row)
    pick = max if higher else min
    best = {}
    for arm in ("base", "smoothed"):
        candidates = [r for r in rows if not math.isnan(r[arm][0])]
        best[arm] = pick(candidates, key=lambda r: r[arm][0])["lr"] if candidates else math.nan
    headline = None
    if not any(math.isnan(v) for v in best.values()):
        b, s = table[best["base"]]["base"], table[best["smoothed"]]["smoothed"]
        seeds = sorted(set(b) & set(s))
        diffs = [s[k] - b[k] for k in seeds]
        headline = {"metric": key, "higher_is_better": higher, "base_lr": best["base"], "smoothed_lr": best["smoothed"],
                    "base": _mean_std([b[k] for k in seeds]), "smoothed": _mean_std([s[k] for k in seeds]),
                    "diff": _mean_std(diffs), "per_seed_diff": diffs, "seeds": seeds}
    return {"metric": key, "higher_is_better": higher, "rows": rows, "best": best, "best_vs_best": headline}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (also valid Markdown)."""
    key = summary["metric"]
    lines = [f"| lr | base {key} | smoothed {key} | smoothed - base (per seed) |", "| --- | --- | --- | --- |"]
    for row in summary["rows"]:
        mark = {arm: " *" if summary["best"][arm] == row["lr"] else "" for arm in ("base", "smoothed")}
        lines.append(f"| {row['lr']:g} | {row['base'][0]:.4f} ± {row['base'][1]:.4f}{mark['base']} | "
                     f"{row['smoothed'][0]:.4f} ± {row['smoothed'][1]:.4f}{mark['smoothed']} | "
                     f"{row['diff'][0]:+.4f} ± {row['diff'][1]:.4f} |")
    h = summary["best_vs_best"]
    if h:
        better = "higher" if h["higher_is_better"] else "lower"
        lines.append("")
        lines.append(f"best vs best ({key}, {better} is better): base {h['base'][0]:.4f} ± {h['base'][1]:.4f} "
                     f"at lr {h['base_lr']:g}; smoothed {h['smoothed'][0]:.4f} ± {h['smoothed'][1]:.4f} at lr "
                     f"{h['smoothed_lr']:g}; difference {h['diff'][0]:+.4f} ± {h['diff'][1]:.4f} over seeds {h['seeds']}")
    lines.append("(* best learning rate of each arm; ± is the standard deviation over seeds)")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """The machine and versions, for results.json."""
    import os

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "numpy": np.__version__}
    for name in ("torch", "mlx", "gradsmooth"):
        try:
            module = importlib.import_module(name if name != "mlx" else "mlx.core")
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return info
