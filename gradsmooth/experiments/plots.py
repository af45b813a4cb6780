"""PNG figures of demo and compare results (matplotlib, drawn off-screen)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .runs import METRICS, RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_curves", "plot_compare", "plot_metric_vs_lr", "plot_depth_structure"]

COLORS = {"base": "tab:blue", "smoothed": "tab:orange"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(ax, results: Sequence[RunResult], key: str, label: str, style: str = "-") -> None:
    runs = [r for r in results if r.history]
    if not runs:
        return
    n = min(len(r.history) for r in runs)
    steps = [e["step"] for e in runs[0].history[:n]]
    values = np.array([[e[key] for e in r.history[:n]] for r in runs])  # (seeds, n)
    mean = values.mean(axis=0)
    ax.plot(steps, mean, style, marker="o", markersize=3, color=COLORS[runs[0].config.label], label=label)
    if len(runs) > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=COLORS[runs[0].config.label], alpha=0.15)


def plot_curves(base: Sequence[RunResult], smoothed: Sequence[RunResult], path: str | pathlib.Path,
                title: str = "") -> Figure:
    """Train and test curves of base vs smoothed (mean over seeds, range shaded), a marker at
    each checkpoint (so that a run with one checkpoint shows). Returns the (closed) figure."""
    plt = _pyplot()
    task = (base or smoothed)[0].config.task
    key, _ = METRICS[task]
    test_loss = "test_loss" if task == "vit" else "val_loss"
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for arm, runs in (("base", base), ("smoothed", smoothed)):
        lr = runs[0].config.lr if runs else 0
        _curve(axes[0], runs, "train_loss", f"{arm} train (lr {lr:g})", "--")
        _curve(axes[0], runs, test_loss, f"{arm} {test_loss.replace('_', ' ')}")
        _curve(axes[1], runs, key, f"{arm} (lr {lr:g})")
    steps = {e["step"] for r in (*base, *smoothed) for e in r.history}
    axes[0].set(xlabel="step", ylabel="loss", yscale="log")
    axes[1].set(xlabel="step", ylabel=key.replace("_", " "))
    for ax in axes[:2]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        if len(steps) == 1:  # one checkpoint: one tick at its step, not fractions of a step around it
            ax.set_xticks(sorted(steps))
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def _seed_count(results: Sequence[RunResult]) -> int:
    return len({r.config.seed for r in results if r.complete})


def plot_metric_vs_lr(summary: dict[str, Any], seeds: int, path: str | pathlib.Path) -> Figure:
    """Each arm's final metric against the learning rate: the mean over ``seeds`` seeds, error
    bars ±1 sample standard deviation (as in the summary table). Returns the (closed) figure."""
    plt = _pyplot()
    key = summary["metric"]
    fig, ax = plt.subplots(figsize=(5.4, 4))
    for arm in ("base", "smoothed"):
        rows = [r for r in summary["rows"] if not np.isnan(r[arm][0])]
        ax.errorbar([r["lr"] for r in rows], [r[arm][0] for r in rows], yerr=[r[arm][1] for r in rows],
                    marker="o", capsize=3, color=COLORS[arm], label=arm)
    better = "higher" if summary["higher_is_better"] else "lower"
    ax.set_title(f"final {key.replace('_', ' ')} vs learning rate ({better} is better)", fontsize=10)
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"final {key.replace('_', ' ')}")
    note = (f"mean over {seeds} seeds; error bars: ±1 standard deviation over the {seeds} seeds" if seeds > 1
            else "one seed: no error bars")
    ax.annotate(note, xy=(0.5, 0), xycoords="figure fraction", xytext=(0, 4), textcoords="offset points",
                ha="center", va="bottom", fontsize=8, color="0.3")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_compare(results: Sequence[RunResult], summary: dict[str, Any], out: str | pathlib.Path) -> list[pathlib.Path]:
    """``metric_vs_lr.png`` (both arms, mean and seeds) and ``curves_at_best_lr.png``."""
    out = pathlib.Path(out)
    paths = [out / "metric_vs_lr.png"]
    plot_metric_vs_lr(summary, _seed_count(results), paths[0])
    best = summary["best"]
    base = [r for r in results if r.config.label == "base" and r.config.lr == best["base"]]
    smoothed = [r for r in results if r.config.label == "smoothed" and r.config.lr == best["smoothed"]]
    if base or smoothed:
        paths.append(out / "curves_at_best_lr.png")
        plot_curves(base, smoothed, paths[1], title="loss curves at each arm's best learning rate (mean, range over seeds)")
    return paths


def _steps(history: Sequence[dict[str, float]]) -> str:
    """The checkpoints' steps, short: "50, 100, …, 600 (12 checkpoints)"."""
    steps = [int(e["step"]) for e in history]
    if len(steps) <= 4:
        return ", ".join(map(str, steps))
    return f"{steps[0]}, {steps[1]}, …, {steps[-1]} ({len(steps)} checkpoints)"


def plot_depth_structure(base: RunResult, smoothed: RunResult, path: str | pathlib.Path) -> Figure:
    """2 x 2 heatmaps, base beside smoothed: the blocks' update cosine similarity (the mean over
    the updates at the checkpoints' steps) and the linear CKA of their output representations
    after the last step (gradsmooth.diagnostics). Returns the (closed) figure."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8.4, 7.8))
    last = base.history[-1]["step"] if base.history else base.config.steps
    rows = (("update_similarity", "update cosine similarity", "cosine similarity", -1),
            ("representation_similarity", "representation linear CKA", "linear CKA", 0))
    for i, (key, name, label, vmin) in enumerate(rows):
        for j, r in enumerate((base, smoothed)):
            ax = axes[i, j]
            image = ax.imshow(np.asarray(r.diagnostics[key]), vmin=vmin, vmax=1, cmap="RdBu_r" if vmin < 0 else "viridis")
            ax.set_title(f"{r.config.label} (lr {r.config.lr:g}): {name}", fontsize=9)
            ax.set(xlabel="block", ylabel="block")
            fig.colorbar(image, ax=ax, fraction=0.046, label=label)
    cfg = base.config
    fig.suptitle(f"Depth structure across the blocks, {cfg.task} {cfg.optimizer}: base vs smoothed\n"
                 f"updates: mean over the updates at steps {_steps(base.history)}; "
                 f"representations: after step {last}, on held-out data", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
