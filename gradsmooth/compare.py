"""Compare fairly, for any training code: :func:`sweep` runs the base and the smoothed optimizer
at every learning rate of one grid over the same seeds, chooses each arm's learning rate on the
validation metric, and reports the test metric there as per-seed paired differences with a
Student-t interval, a win count and a verdict (docs/method.md, "Comparing fairly").

Framework-free: the user's ``train(make_optimizer, seed)`` builds the model and the optimizer
(``make_optimizer``, an :class:`Arm`, says which learning rate and smoothing) and returns
``{"val": float, "test": float, ...}``. ``gradsmooth compare`` is built on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = ["Arm", "sweep", "summarize_records", "paired_difference", "CONFIDENCE"]

CONFIDENCE = 0.95
ARMS = ("base", "smoothed")
Optimizer = TypeVar("Optimizer")


@dataclass(frozen=True)
class Arm:
    """One arm at one learning rate: what ``train`` builds its optimizer from. Call it with a
    factory of the base optimizer at a learning rate and, for the smoothed arm, a function that
    wraps a base optimizer with the smoothing arguments (e.g. ``lambda opt, kw:
    GradientSmoothing(opt, model, **kw)``)."""

    lr: float
    smoothing: Mapping[str, Any] | None = None

    @property
    def label(self) -> str:
        """"smoothed" or "base"."""
        return "smoothed" if self.smoothing is not None else "base"

    def __call__(self, base: Callable[[float], Optimizer],
                 smooth: Callable[[Optimizer, Mapping[str, Any]], Optimizer] | None = None) -> Optimizer:
        """``base(lr)``, wrapped by ``smooth(optimizer, smoothing)`` for the smoothed arm."""
        optimizer = base(self.lr)
        if self.smoothing is None:
            return optimizer
        if smooth is None:
            raise TypeError(f"the smoothed arm (smoothing={dict(self.smoothing)!r}) needs smooth, a function "
                            f"(optimizer, smoothing) -> smoothed optimizer, but smooth is None")
        return smooth(optimizer, self.smoothing)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    a = np.asarray(values, dtype=float)
    if not len(a):
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def paired_difference(diffs: Sequence[float], higher_is_better: bool, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Per-seed paired differences (smoothed - base): their mean, sample std, the Student-t
    ``confidence`` interval of the mean over the seeds, how many seeds smoothed wins on
    (respecting ``higher_is_better``), and a verdict: "win" or "loss" only when the interval
    excludes zero, else "no significant difference" (also with fewer than two seeds)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence should be in (0, 1) but is: {confidence!r}")
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    wins = int(np.sum(d > 0) if higher_is_better else np.sum(d < 0))
    verdict = "no significant difference"
    if low > 0 or high < 0:  # False for NaN
        verdict = "win" if (low > 0) == higher_is_better else "loss"
    return {"mean": mean, "std": std, "ci": [low, high], "confidence": confidence, "wins": wins, "n": n,
            "verdict": verdict, "per_seed_diff": d.tolist()}


def _table(records: Iterable[Mapping[str, Any]], key: str) -> dict[float, dict[str, dict[int, float]]]:
    """The records' ``key`` by learning rate, arm and seed."""
    table: dict[float, dict[str, dict[int, float]]] = {}
    for r in records:
        table.setdefault(r["lr"], {arm: {} for arm in ARMS})[r["arm"]][r["seed"]] = float(r[key])
    return table


def _chosen(rows: list[dict[str, Any]], higher: bool) -> dict[str, float]:
    """Each arm's learning rate with the best mean validation metric (NaN when the arm has none)."""
    pick = max if higher else min
    best = {}
    for arm in ARMS:
        candidates = [r for r in rows if not math.isnan(r[arm][0])]
        best[arm] = pick(candidates, key=lambda r: r[arm][0])["lr"] if candidates else math.nan
    return best


def summarize_records(records: Sequence[Mapping[str, Any]], higher_is_better: bool, metric: str = "val",
                      test_metric: str = "test") -> dict[str, Any]:
    """The summary of ``records`` (each ``{"lr", "arm", "seed", "val", "test"}``): per learning
    rate and arm the mean and std over seeds of ``val`` (``rows``); each arm's learning rate
    chosen on it (``best``); and at the chosen rates each arm's ``test`` and the per-seed paired
    difference smoothed - base (``best_vs_best``, :func:`paired_difference`). ``metric`` and
    ``test_metric`` name the two metrics in the summary."""
    val, test = _table(records, "val"), _table(records, "test")
    rows = [{"lr": lr} | {arm: _mean_std(list(val[lr][arm].values())) for arm in ARMS} for lr in sorted(val)]
    best = _chosen(rows, higher_is_better)
    headline = None
    if not any(math.isnan(v) for v in best.values()):
        b, s = test[best["base"]]["base"], test[best["smoothed"]]["smoothed"]
        seeds = sorted(set(b) & set(s))
        headline = {"metric": test_metric, "higher_is_better": higher_is_better, "base_lr": best["base"],
                    "smoothed_lr": best["smoothed"], "base": _mean_std([b[k] for k in seeds]),
                    "smoothed": _mean_std([s[k] for k in seeds]), "seeds": seeds}
        headline |= paired_difference([s[k] - b[k] for k in seeds], higher_is_better)
    return {"metric": metric, "test_metric": test_metric, "higher_is_better": higher_is_better, "rows": rows,
            "best": best, "best_vs_best": headline}


def _record(arm: Arm, seed: int, out: Mapping[str, Any]) -> dict[str, Any]:
    """One run's record: its learning rate, arm and seed, and what ``train`` returned."""
    if not isinstance(out, Mapping) or "val" not in out or "test" not in out:
        raise TypeError(f"train should return a mapping with 'val' and 'test' numbers but returned: {out!r} "
                        f"(lr {arm.lr:g}, {arm.label}, seed {seed})")
    return {"lr": arm.lr, "arm": arm.label, "seed": seed} | dict(out)


def sweep(train: Callable[[Arm, int], Mapping[str, Any]], lrs: Sequence[float], seeds: Iterable[int],
          smoothing: Mapping[str, Any] | None = None, higher_is_better: bool = True,
          on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``train(make_optimizer, seed)`` for the base and the smoothed arm (``smoothing``: the
    wrapper's arguments, ``{}`` for its defaults) at every learning rate in ``lrs`` and every seed;
    ``train`` returns ``{"val": float, "test": float, ...}``. Returns ``{"records": [...],
    "summary": ...}`` (:func:`summarize_records`); ``on_record`` sees each record as it comes."""
    lrs, seeds = list(lrs), list(seeds)
    if not lrs or any(not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs should be finite positive numbers, at least one, but are: {lrs!r}")
    if not seeds:
        raise ValueError(f"seeds should hold at least one seed but is: {seeds!r}")
    records = []
    for lr in lrs:
        for seed in seeds:
            for arm in (Arm(lr), Arm(lr, dict(smoothing or {}))):
                records.append(_record(arm, seed, train(arm, seed)))
                if on_record:
                    on_record(records[-1])
    return {"records": records, "summary": summarize_records(records, higher_is_better)}
