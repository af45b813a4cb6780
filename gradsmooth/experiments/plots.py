"""PNG figures of demo and compare results (matplotlib, drawn off-screen)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from .runs import METRICS, RunResult

__all__ = ["plot_curves", "plot_compare", "plot_depth_structure"]

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
    ax.plot(steps, mean, style, color=COLORS[runs[0].config.label], label=label)
    if len(runs) > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=COLORS[runs[0].config.label], alpha=0.15)


def plot_curves(base: Sequence[RunResult], smoothed: Sequence[RunResult], path: str | pathlib.Path,
                title: str = "") -> None:
    """Train and test curves of base vs smoothed (mean over seeds, range shaded)."""
    plt = _pyplot()
    task = (base or smoothed)[0].config.task
    key, _ = METRICS[task]
    test_loss = "test_loss" if task == "vit" else "val_loss"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for arm, runs in (("base", base), ("smoothed", smoothed)):
        lr = runs[0].config.lr if runs else 0
        _curve(axes[0], runs, "train_loss", f"{arm} train (lr {lr:g})", "--")
        _curve(axes[0], runs, test_loss, f"{arm} {test_loss.replace('_', ' ')}")
        _curve(axes[1], runs, key, f"{arm} (lr {lr:g})")
    axes[0].set(xlabel="step", ylabel="loss", yscale="log")
    axes[1].set(xlabel="step", ylabel=key.replace("_", " "))
    for ax in axes[:2]:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_compare(results: Sequence[RunResult], summary: dict[str, Any], out: str | pathlib.Path) -> list[pathlib.Path]:
    """``metric_vs_lr.png`` (both arms, mean and seeds) and ``curves_at_best_lr.png``."""
    plt = _pyplot()
    out = pathlib.Path(out)
    key = summary["metric"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for arm in ("base", "smoothed"):
        rows = [r for r in summary["rows"] if not np.isnan(r[arm][0])]
        ax.errorbar([r["lr"] for r in rows], [r[arm][0] for r in rows], yerr=[r[arm][1] for r in rows],
                    marker="o", capsize=3, color=COLORS[arm], label=arm)
    ax.set(xscale="log", xlabel="learning rate", ylabel=key.replace("_", " "))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out / "metric_vs_lr.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    best = summary["best"]
    base = [r for r in results if r.config.label == "base" and r.config.lr == best["base"]]
    smoothed = [r for r in results if r.config.label == "smoothed" and r.config.lr == best["smoothed"]]
    if base or smoothed:
        paths.append(out / "curves_at_best_lr.png")
        plot_curves(base, smoothed, paths[1], title="loss curves at each arm's best learning rate (mean, range over seeds)")
    return paths


def plot_depth_structure(base: RunResult, smoothed: RunResult, path: str | pathlib.Path) -> None:
    """2 x 2 heatmaps, base beside smoothed: the blocks' update cosine similarity and the
    linear CKA of their output representations (gradsmooth.diagnostics)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(8, 7))
    rows = (("update_similarity", "update cosine similarity", -1), ("representation_similarity", "representation CKA", 0))
    for i, (key, name, vmin) in enumerate(rows):
        for j, r in enumerate((base, smoothed)):
            ax = axes[i, j]
            image = ax.imshow(np.asarray(r.diagnostics[key]), vmin=vmin, vmax=1, cmap="RdBu_r" if vmin < 0 else "viridis")
            ax.set(title=f"{r.config.label} (lr {r.config.lr:g}): {name}", xlabel="block", ylabel="block")
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
