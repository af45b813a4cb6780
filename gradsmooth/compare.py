"""Compare fairly, for any training code: [`sweep`][gradsmooth.compare.sweep] runs the base and the smoothed optimizer
at every learning rate of one grid over the same seeds, chooses each arm's learning rate on the
validation metric, and reports the test metric there as per-seed paired differences with a
Student-t interval, a win count and a verdict (docs/method.md, "Comparing fairly").

Framework-free: the user's ``train(make_optimizer, seed)`` builds the model and the optimizer
(``make_optimizer``, an [`Arm`][gradsmooth.compare.Arm], says which learning rate and smoothing) and returns
``{"val": float, "test": float, ...}`` (and, for curves, ``"history"``: a list of
``{"step": ..., "<metric>": ...}``). With ``out`` it writes ``results.json`` after every run (on
Ctrl-C too) and draws the plots; ``gradsmooth report DIR`` prints the tables again. ``gradsmooth
compare`` is built on it.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .results import ResultsError, machine, provenance, read_results, strict, write_results, wrote
from .settings import OPTIONS, Settings
from .describe import describe

__all__ = [
    "CONFIDENCE",
    "Arm",
    "format_reported",
    "format_summary",
    "overview",
    "paired_difference",
    "render",
    "summarize_records",
    "sweep",
]

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
    excludes zero, else "no significant difference"; with fewer than two seeds "one seed: no
    interval" (or "no seeds"): there is no interval to tell."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence should be in (0, 1) but is: {confidence!r}")
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    # the interval needs two seeds or more: with one it is NaN, and the verdict says so
    mean = float(d.mean()) if n else math.nan
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    low = high = math.nan
    if n > 1:
        from scipy.stats import t

        half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    wins = int(np.sum(d > 0) if higher_is_better else np.sum(d < 0))
    ties = int(np.sum(d == 0))
    verdict = "no significant difference" if n > 1 else "one seed: no interval" if n == 1 else "no seeds"
    if low > 0 or high < 0:  # False for NaN
        verdict = "win" if (low > 0) == higher_is_better else "loss"
    return {"mean": mean, "std": std, "ci": [low, high], "confidence": confidence, "wins": wins, "ties": ties, "n": n,
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


def _grid_doubt(lrs: Sequence[float], best: Mapping[str, float]) -> str | None:
    """Why the learning rates ``best`` (each arm's choice) cannot carry a verdict on the grid
    ``lrs`` (sorted): a grid of one learning rate chooses none, and an arm that chose the grid's
    lowest or highest rate may do better beyond it. None when every choice lies inside the grid."""
    if len(lrs) == 1:
        return f"a grid of one learning rate ({lrs[0]:g}) chooses none; give several"
    edges = {arm: "lowest" if lr == lrs[0] else "highest" for arm, lr in best.items() if lr in (lrs[0], lrs[-1])}
    if not edges:
        return None
    if len(edges) == 2 and best["base"] == best["smoothed"]:
        said = f"both arms chose the grid's {edges['base']} lr ({best['base']:g})"
    else:
        said = " and ".join(f"{arm} chose the grid's {edge} lr ({best[arm]:g})" for arm, edge in edges.items())
    return f"{said}; widen the grid"


def summarize_records(records: Sequence[Mapping[str, Any]], higher_is_better: bool, metric: str = "val",
                      test_metric: str = "test") -> dict[str, Any]:
    """The summary of ``records`` (each ``{"lr", "arm", "seed", "val", "test"}``): per learning
    rate and arm the mean and std over seeds of ``val`` (``rows``); each arm's learning rate
    chosen on it (``best``); and at the chosen rates each arm's ``test`` and the per-seed paired
    difference smoothed - base (``best_vs_best``, [`paired_difference`][gradsmooth.compare.paired_difference]).
    ``metric`` and ``test_metric`` name the two metrics in the summary. Numbers the records report
    beside the metric (``"metrics"``: e.g. ``adjacent_cka``) are paired the same way, never chosen
    on, at the chosen rates and, under ``by_lr``, at each rate with both arms at it (``metrics``).

    The verdict rests on the choice: where an arm chose the lowest or highest learning rate of
    the grid, or the grid holds one rate, it is "inconclusive: <why>; widen the grid (the
    interval alone: <verdict>)", the interval's own verdict kept as ``interval_verdict``."""
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
        headline["interval_verdict"] = headline["verdict"]
        doubt = _grid_doubt([r["lr"] for r in rows], best)
        if doubt:
            headline["verdict"] = f"inconclusive: {doubt} (the interval alone: {headline['verdict']})"
    return {"metric": metric, "test_metric": test_metric, "higher_is_better": higher_is_better, "rows": rows,
            "best": best, "best_vs_best": headline, "metrics": _reported(records, best) if headline else {}}


def _reported(records: Sequence[Mapping[str, Any]], best: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Each number the records hold under ``"metrics"`` (reported, never chosen on), at each arm's
    chosen learning rate in ``best``: per arm its mean and std over the seeds both arms have, and
    the per-seed paired difference smoothed - base ([`paired_difference`][gradsmooth.compare.paired_difference]), whose
    verdict says "higher", "lower" or "no significant difference" and ``higher`` on how many seeds
    smoothed is higher: such a number has no better direction of its own. ``by_lr``: the same at
    each learning rate of the grid with both arms at it, which tells what the smoothing changes
    apart from the learning rate each arm chose."""
    nan = lambda v: math.nan if v is None else float(v)
    names = list(dict.fromkeys(k for r in records for k in (r.get("metrics") or {})))
    lrs = sorted({r["lr"] for r in records})
    out = {}
    for name in names:
        def at(arm: str, lr: float) -> dict[int, float]:
            return {r["seed"]: nan(r["metrics"][name]) for r in records
                    if r["arm"] == arm and r["lr"] == lr and name in (r.get("metrics") or {})}

        out[name] = _paired_number(at("base", best["base"]), at("smoothed", best["smoothed"]))
        out[name]["by_lr"] = [{"lr": lr} | _paired_number(at("base", lr), at("smoothed", lr)) for lr in lrs]
    return out


def _paired_number(base: Mapping[int, float], smoothed: Mapping[int, float]) -> dict[str, Any]:
    """A reported number of two arms, by seed: each arm's mean and std over the seeds both have and
    their paired difference smoothed - base, its verdict "higher", "lower" or "no significant difference"."""
    seeds = sorted(set(base) & set(smoothed))
    d = paired_difference([smoothed[k] - base[k] for k in seeds], higher_is_better=True)
    d["verdict"] = {"win": "higher", "loss": "lower"}.get(d["verdict"], d["verdict"])
    d["higher"] = d.pop("wins")
    return {"base": _mean_std([base[k] for k in seeds]), "smoothed": _mean_std([smoothed[k] for k in seeds]),
            "seeds": seeds} | d


def _signed(value: float | None) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:+.4f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary as a Markdown table: the validation metric per learning rate (the chosen
    rates marked), then the test metric at the chosen rates and the paired difference with its
    confidence interval, win count and verdict."""
    key = summary["metric"]
    lines = [f"| lr | base {key} | smoothed {key} |", "| --- | --- | --- |"]
    for row in summary["rows"]:
        mark = {arm: " *" if summary["best"][arm] == row["lr"] else "" for arm in ARMS}
        lines.append(f"| {row['lr']:g} | {row['base'][0]:.4f} ± {row['base'][1]:.4f}{mark['base']} | "
                     f"{row['smoothed'][0]:.4f} ± {row['smoothed'][1]:.4f}{mark['smoothed']} |")
    lines.append("")  # a line right under a Markdown table would be read as one more row
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
                     f"smoothed better on {h['wins']} of {h['n']} seeds"
                     + (f" (equal on {h['ties']})" if h.get("ties") else "") + f"; verdict: {h['verdict']}")
    if summary.get("metrics"):
        lines += ["", format_reported(summary["metrics"])]
    return "\n".join(lines)


def format_reported(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The reported numbers of a summary ([`summarize_records`][gradsmooth.compare.summarize_records]' ``"metrics"``) as
    a Markdown table: each arm's mean ± std at its chosen learning rate and the paired difference;
    on a grid of several learning rates, a second table of the paired difference at each of them."""
    lines = ["Reported beside the metric, never chosen on (each arm at its chosen learning rate; smoothed - base "
             "paired over seeds, Student t):", "",
             "| reported | base | smoothed | smoothed - base [95% CI] | smoothed higher | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, m in metrics.items():
        low, high = m["ci"]
        lines.append(f"| {name} | {m['base'][0]:.4f} ± {m['base'][1]:.4f} | {m['smoothed'][0]:.4f} ± "
                     f"{m['smoothed'][1]:.4f} | {_signed(m['mean'])} [{_signed(low)}, {_signed(high)}] | "
                     f"{m['higher']}/{m['n']} | {m['verdict']} |")
    lrs = [row["lr"] for row in next(iter(metrics.values()), {}).get("by_lr", [])]
    if len(lrs) < 2:
        return "\n".join(lines)
    lines += ["", "The same at each learning rate, both arms at it (smoothed - base paired over seeds, 95% CI, seeds where "
              "smoothed is higher): what the smoothing changes apart from each arm's choice of learning rate:", "",
              "| lr | " + " | ".join(metrics) + " |", "| --- |" + " --- |" * len(metrics)]
    for i, lr in enumerate(lrs):
        cells = []
        for m in metrics.values():
            d = m["by_lr"][i]
            cells.append(f"{_signed(d['mean'])} [{_signed(d['ci'][0])}, {_signed(d['ci'][1])}] {d['higher']}/{d['n']}")
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _record(arm: Arm, seed: int, out: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """One run's record: its learning rate, arm and seed, what ``train`` returned, and its time."""
    if not isinstance(out, Mapping) or not all(isinstance(out.get(k), (int, float)) for k in ("val", "test")):
        raise TypeError(f"train should return a mapping with 'val' and 'test' numbers but returned: {describe(out)} "
                        f"(lr {arm.lr:g}, {arm.label}, seed {seed})")
    return {"lr": arm.lr, "arm": arm.label, "seed": seed, "seconds": round(seconds, 2)} | dict(out)


def _repeated(values: Sequence[Any]) -> Any:
    """The first value of ``values`` that occurs twice, else None."""
    return next((v for i, v in enumerate(values) if v in values[:i]), None)


def _checked(lrs: Iterable[float], seeds: Iterable[int]) -> tuple[list[float], list[int]]:
    lrs, seeds = list(lrs), list(seeds)
    if not lrs or any(not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0) for lr in lrs):
        raise ValueError(f"lrs should be finite positive numbers, at least one, but are: {lrs!r}")
    if _repeated(lrs) is not None:
        raise ValueError(f"lrs should be distinct (each learning rate is run once per seed) but "
                         f"{_repeated(lrs):g} is repeated: {lrs!r}")
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds should hold at least one seed, distinct integers, but is: {seeds!r}")
    if _repeated(seeds) is not None:
        raise ValueError(f"seeds should be distinct (each is one paired run) but {_repeated(seeds)} is repeated: {seeds!r}")
    return lrs, seeds


def _draw(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], out: pathlib.Path) -> list[pathlib.Path]:
    """The plots of [`gradsmooth.plots.plot_compare`][gradsmooth.plots.plot_compare]; none, with a warning, without
    matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import warnings

        warnings.warn("matplotlib is not installed: no plots drawn (pip install matplotlib)", RuntimeWarning,
                      stacklevel=3)
        return []
    from .plots import plot_compare

    return plot_compare(records, summary, out)


def sweep(train: Callable[[Arm, int], Mapping[str, Any]], lrs: Sequence[float], seeds: Iterable[int],
          smoothing: Mapping[str, Any] | None = None, higher_is_better: bool = True, *,
          out: str | pathlib.Path | None = None, metric: str = "val", test_metric: str = "test",
          settings: Mapping[str, Any] | None = None, command: Sequence[str] | None = None, verbose: bool = True,
          resume: bool = False, overwrite: bool = False, base_from: str | pathlib.Path | None = None,
          on_record: Callable[[dict[str, Any]], None] | None = None,
          defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run ``train(make_optimizer, seed)`` for the base and the smoothed arm (``smoothing``: the
    wrapper's arguments, ``{}`` for its defaults) at every learning rate in ``lrs`` and every seed;
    ``train`` returns ``{"val": float, "test": float, ...}`` (``"history"``, a list of
    ``{"step": ..., "<metric>": ...}``, gives the curves plot). Each arm's learning rate is chosen
    on ``val``; ``test`` is compared there, seed by seed ([`summarize_records`][gradsmooth.compare.summarize_records]).

    ``verbose``: a line per run and the tables at the end (stderr, stdout). ``out``: a folder
    where ``results.json`` (records, summary, ``settings``, the ``command`` — default: this
    process's — git commit, threads, machine) is written after every run, and the plots at the
    end; ``gradsmooth report out`` prints the tables again. On Ctrl-C what was gathered is
    written (``"interrupted": true``) before the KeyboardInterrupt goes on up.
    ``resume``: continue ``out``/results.json (an interrupted sweep, or one with fewer learning
    rates or seeds) if there is one: its runs are kept, not run again; it must have been
    written with the same settings and its runs must lie in this grid (else ``ValueError``,
    before any training), and its provenance is kept under ``"resumed_from"``. Without
    ``resume`` or ``overwrite``, an ``out`` that holds a comparison already is refused
    (``FileExistsError``): nothing finished is lost by accident.
    ``base_from``: a folder whose results.json holds a comparison with the same settings but
    another ``smoothing`` (an ablation: window 5 against the headline's window 3): its base
    runs in this grid are reused, not trained again (the base arm does not depend on the
    smoothing; training is deterministic), each marked ``"reused_from"``, and its provenance is
    kept under ``"base_from"``; other settings are refused (``ValueError``, before any training).
    ``defaults``: settings a results.json written before they were recorded lacks, by dotted
    path (``{"config.device": "cpu"}``), with the value they had then: ``resume`` and
    ``base_from`` read such a results.json with them. ``train`` may return ``"metrics"``, numbers
    by name reported beside ``val`` and ``test`` (never chosen on): the summary compares each at
    the chosen learning rates, paired over seeds ([`summarize_records`][gradsmooth.compare.summarize_records]).
    ``metric``/``test_metric`` name ``val``/``test`` in the tables. Returns ``{"records": [...],
    "summary": ..., "written": [...]}`` (the files written into ``out``: results.json and the
    plots, said last when ``verbose``); ``on_record`` sees each record as it comes (kept ones
    included)."""
    lrs, seeds = _checked(lrs, seeds)
    smoothing = dict(smoothing or {})
    _check_smoothing(smoothing)
    records: list[dict[str, Any]] = []

    def summary() -> dict[str, Any]:
        return summarize_records(records, higher_is_better, metric, test_metric)

    payload = {"command": "compare", "interrupted": False,
               "provenance": provenance(command if command is not None else sys.orig_argv, seeds),
               "settings": {"lrs": lrs, "seeds": seeds, "smoothing": smoothing, "higher_is_better": higher_is_better,
                            "metric": metric, "test_metric": test_metric} | dict(settings or {}),
               "machine": machine(), "summary": None, "records": records}
    defaults = dict(defaults or {})
    reused = _base_runs(base_from, payload, lrs, seeds, defaults) if base_from is not None else {}
    kept = reused | (_resumed(out, payload, lrs, seeds, defaults) if resume else {})
    if out is not None and not resume and not overwrite:
        _refuse_to_replace(out)

    def save(interrupted: bool = False) -> pathlib.Path:
        # a resumed sweep's kept runs are written from the start, wherever the loop is
        done = {(r["lr"], r["arm"], r["seed"]) for r in records}
        written = records + [r for key, r in kept.items() if key not in done]
        payload["records"] = written
        payload["interrupted"] = interrupted
        payload["machine"] = machine()  # the frameworks imported by now: what selected their kernels too
        payload["summary"] = summarize_records(written, higher_is_better, metric, test_metric) if written else None
        return write_results(out, payload)

    if out is not None:
        out = pathlib.Path(out)
        save()  # an unwritable folder fails here, before any training
    runs = [(Arm(lr, smoothing if smoothed else None), seed) for lr in lrs for seed in seeds for smoothed in (False, True)]
    try:
        for i, (arm, seed) in enumerate(runs):
            key = (arm.lr, arm.label, seed)
            if key in kept:
                r = kept[key]
            else:
                start = time.perf_counter()
                r = _record(arm, seed, train(arm, seed), time.perf_counter() - start)
            records.append(r)
            if verbose:
                how = (f"reused from {r['reused_from']}" if "reused_from" in r else "kept from the earlier run"
                       if key in kept else f"{r['seconds']:.0f} s")
                print(f"[{i + 1}/{len(runs)}] lr {arm.lr:g} {arm.label} seed {seed}: {metric} {r['val']:.4f}, "
                      f"{test_metric} {r['test']:.4f} ({how})", file=sys.stderr, flush=True)
            if on_record:
                on_record(r)
            if out is not None:
                save()
    except KeyboardInterrupt:
        if out is not None:
            path = save(interrupted=True)
            sys.stderr.write(f"\ninterrupted: the results gathered so far are in {path} (continue with resume=True; "
                             f"gradsmooth compare: --resume)\n")
        raise
    result = {"records": records, "summary": summary(), "written": []}
    if out is not None:
        result["written"] = [save(), *_draw(records, result["summary"], out)]
    if verbose:
        print(format_summary(result["summary"]))
        if result["written"]:
            print(f"\n{wrote(result['written'])}")
    return result


def _check_smoothing(smoothing: Mapping[str, Any]) -> None:
    """The smoothing options in ``smoothing`` (gradsmooth.settings) are checked before any
    training; other keys are the user's smoothing function's to check."""
    known = {k: v for k, v in smoothing.items() if k in OPTIONS}
    Settings.of(known, OPTIONS, "smoothing")


def _refuse_to_replace(out: str | pathlib.Path) -> None:
    """A folder that holds a comparison already is not overwritten by accident."""
    path = pathlib.Path(out) / "results.json"
    if not path.is_file():
        return
    try:
        held = len(read_results(out).get("records") or [])
    except ResultsError:
        held = 0
    if held:
        raise FileExistsError(f"{str(path)!r} holds a comparison already ({held} runs): continue it with resume=True "
                              f"(gradsmooth compare: --resume), or replace it with overwrite=True (--overwrite)")


def _differences(before: Any, now: Any, key: str = "") -> list[str]:
    """``key: old -> new`` for each setting that differs, nested dicts by their keys."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [d for k in sorted(before.keys() | now.keys(), key=str)
                for d in _differences(before.get(k), now.get(k), f"{key}.{k}" if key else str(k))]
    return [] if before == now else [f"{key}: {before!r} -> {now!r}"]


def _with_defaults(settings: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with each of ``defaults`` (by dotted path) that it lacks set, where its parent is a dict."""
    out = json.loads(json.dumps(settings))
    for path, value in defaults.items():
        *parents, last = path.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(last, value)
    return out


def _same_settings(old: Mapping[str, Any], payload: Mapping[str, Any], ignore: tuple[str, ...],
                   defaults: Mapping[str, Any]) -> list[str]:
    """The settings in which ``old`` (a results.json, read with ``defaults`` where it lacks them)
    and ``payload`` differ, ``ignore``'s keys and the label (derived from them) left out:
    ``key: old -> new`` each."""
    before = {k: v for k, v in _with_defaults(old.get("settings", {}), defaults).items() if k not in ignore}
    now = {k: v for k, v in json.loads(json.dumps(strict(payload["settings"]), default=str)).items() if k not in ignore}
    return [d for d in _differences(before, now) if not d.startswith("label:")]


def _base_runs(base_from: str | pathlib.Path, payload: dict[str, Any], lrs: list[float], seeds: list[int],
               defaults: Mapping[str, Any]) -> dict[tuple[float, str, int], dict[str, Any]]:
    """The base runs of ``base_from``/results.json in this grid, by (lr, "base", seed), each
    marked ``"reused_from"``; its provenance goes into ``payload["base_from"]``. Its settings
    must be this sweep's but for the grid and the smoothing."""
    where = str(pathlib.Path(base_from) / "results.json")
    try:
        old = read_results(base_from)
    except ResultsError as err:
        raise ResultsError(f"base_from: {err}") from None
    records = _records(old, where)
    differ = _same_settings(old, payload, ("lrs", "seeds", "smoothing"), defaults)
    if differ:
        raise ValueError(f"base_from={str(base_from)!r} was written with other settings ({'; '.join(differ[:5])}): its "
                         f"base runs are not this comparison's base arm; pass a comparison that differs only in "
                         f"smoothing, or no base_from")
    runs = {(r["lr"], "base", r["seed"]): r | {"reused_from": str(base_from)} for r in records
            if r["arm"] == "base" and r["lr"] in lrs and r["seed"] in seeds}
    payload["base_from"] = {"folder": str(base_from), "runs": len(runs), "provenance": old.get("provenance")}
    return runs


def _resumed(out: str | pathlib.Path | None, payload: dict[str, Any], lrs: list[float], seeds: list[int],
             defaults: Mapping[str, Any]) -> dict[tuple[float, str, int], dict[str, Any]]:
    """The runs of ``out``/results.json that a resumed sweep keeps, by (lr, arm, seed); the old
    provenance goes into ``payload["resumed_from"]``. Nothing to resume: none."""
    if out is None:
        raise ValueError("resume=True needs out, the folder whose results.json it continues")
    if not (pathlib.Path(out) / "results.json").is_file():
        return {}
    old = read_results(out)
    where = str(pathlib.Path(out) / "results.json")
    records = _records(old, where)
    differ = _same_settings(old, payload, ("lrs", "seeds"), defaults)
    if differ:
        raise ValueError(f"{where!r} was written with other settings ({'; '.join(differ[:5])}): resume continues the "
                         f"same comparison only; pass another out, or overwrite=True (--overwrite) to start again")
    outside = [r for r in records if r["lr"] not in lrs or r["seed"] not in seeds]
    if outside:
        raise ValueError(f"{where!r} holds {len(outside)} runs outside this grid (e.g. lr {outside[0]['lr']:g}, seed "
                         f"{outside[0]['seed']}): resume keeps every finished run; give learning rates and seeds "
                         f"that include them")
    payload["resumed_from"] = [*old.get("resumed_from", []), old.get("provenance")]
    if "base_from" in old and "base_from" not in payload:  # resumed without base_from: what it reused stays said
        payload["base_from"] = old["base_from"]
    return {(r["lr"], r["arm"], r["seed"]): r for r in records}


def _records(payload: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """The records of a compare results.json, a null val or test (a diverged run) NaN again."""
    if payload.get("command") != "compare" or not isinstance(payload.get("records"), list):
        raise ResultsError(f"{where!r} holds no records of a comparison (a results.json written before "
                           f"gradsmooth compare chose learning rates on a validation split): run the comparison again")
    nan = lambda v: math.nan if v is None else v
    return [dict(r) | {"val": nan(r["val"]), "test": nan(r["test"])} for r in payload["records"]]


def _summary_of(payload: Mapping[str, Any], where: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = _records(payload, where)
    s = payload.get("settings", {})
    if not records:
        raise ResultsError(f"{where!r} holds no complete runs to report")
    return records, summarize_records(records, s.get("higher_is_better", True), s.get("metric", "val"),
                                      s.get("test_metric", "test"))


def _incomplete(payload: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str | None:
    """"n of m runs (interrupted)" when the comparison is not finished, else None."""
    s = payload.get("settings", {})
    expected = 2 * len(s.get("lrs", [])) * len(s.get("seeds", []))
    if not payload.get("interrupted") and len(records) >= expected:
        return None
    return f"{len(records)} of {expected} runs" + (" (interrupted)" if payload.get("interrupted") else "")


def render(folder: str | pathlib.Path, draw: bool = True) -> str:
    """The tables of ``folder``/results.json written by [`sweep`][gradsmooth.compare.sweep] (or ``gradsmooth compare``),
    as Markdown, recomputed from its records; with ``draw`` its plots are drawn into ``folder`` again.
    An unfinished comparison says so first: its choice and verdict are provisional."""
    folder = pathlib.Path(folder)
    payload = read_results(folder)
    records, summary = _summary_of(payload, str(folder / "results.json"))
    if draw:
        _draw(records, summary, folder)
    incomplete = _incomplete(payload, records)
    head = (f"**Incomplete: {incomplete}.** The learning-rate choice and the verdict below are provisional: "
            f"resume the comparison to finish it.\n\n") if incomplete else ""
    return head + format_summary(summary)


def _label(settings: Mapping[str, Any]) -> str:
    """A comparison's setting in a few words: its label, else its smoothing arguments."""
    if settings.get("label"):
        return str(settings["label"])
    smoothing = settings.get("smoothing") or {}
    return "smoothing: " + (", ".join(f"{k} {v}" for k, v in smoothing.items()) or "defaults")


def overview(folders: Sequence[str | pathlib.Path], reported: str | None = None) -> str:
    """One Markdown row per results folder: its setting, each arm's test metric at its chosen
    learning rate, the paired difference with its interval, the win count and the verdict.

    With ``reported`` (a number the runs report beside the metric, e.g. ``"adjacent_cka"``): the
    same rows for that number, each arm at the learning rate it chose on the validation metric
    (as `format_reported`); a folder whose runs do not report it is refused (``ResultsError``)."""
    if reported is not None and (not isinstance(reported, str) or not reported):
        raise TypeError(f"reported should be the name of a reported number (e.g. 'adjacent_cka') but is: "
                        f"{describe(reported)}")
    higher = "higher" if reported is not None else "wins"
    lines = [f"| results | setting | seeds | base (lr) | smoothed (lr) | smoothed - base [95% CI] | {higher} | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for folder in folders:
        payload = read_results(folder)
        where = str(pathlib.Path(folder) / "results.json")
        records, summary = _summary_of(payload, where)
        h = summary["best_vs_best"]
        label = _label(payload.get("settings", {}))
        incomplete = _incomplete(payload, records)
        note = f" (incomplete: {incomplete})" if incomplete else ""
        if h is None:
            lines.append(f"| {folder} | {label} | | | | | | no arm has a finite {summary['metric']}{note} |")
            continue
        if reported is not None:
            if reported not in summary["metrics"]:
                held = ", ".join(summary["metrics"]) or "nothing"
                raise ResultsError(f"{where!r} reports no {reported!r} beside its metric (it reports: {held})")
            m = summary["metrics"][reported]
            h = m | {"base_lr": h["base_lr"], "smoothed_lr": h["smoothed_lr"], "wins": m["higher"]}
        low, high = h["ci"]
        lines.append(f"| {folder} | {label} | {h['n']} | {h['base'][0]:.4f} ({h['base_lr']:g}) | "
                     f"{h['smoothed'][0]:.4f} ({h['smoothed_lr']:g}) | {_signed(h['mean'])} "
                     f"[{_signed(low)}, {_signed(high)}] | {h['wins']}/{h['n']} | {h['verdict']}{note} |")
    lines.append("")
    if reported is not None:
        lines.append(f"(reported: {reported}, never chosen on; each arm at the learning rate it chose on the validation "
                     f"metric; the interval is Student t over the paired seeds)")
        return "\n".join(lines)
    metrics = {read_results(f).get("settings", {}).get("test_metric", "test") for f in folders}
    lines.append(f"(test metric: {', '.join(sorted(metrics))}; each arm at the learning rate it chose on the "
                 f"validation metric; the interval is Student t over the paired seeds)")
    return "\n".join(lines)
