"""PNG figures of comparisons (matplotlib, imported when a figure is drawn, drawn off-screen):
training curves of base vs smoothed, and the metric against the learning rate."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["COLORS", "plot_compare", "plot_curves", "plot_metric_vs_lr"]

COLORS = {"base": "tab:blue", "smoothed": "tab:orange"}
History = Sequence[Mapping[str, float]]  # one run's checkpoints: [{"step": 50, "train_loss": ...}, ...]


def pyplot():
    """matplotlib's pyplot on the off-screen Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(ax, histories: Sequence[History], key: str, color: str, label: str) -> None:
    """The mean over ``histories`` of ``key`` per checkpoint (markers), their range shaded; a
    checkpoint without ``key`` (rl's step 0 has no training metrics) is left out."""
    runs = [[row for row in h if key in row] for h in histories]
    runs = [h for h in runs if h]
    if not runs:
        return
    n = min(len(h) for h in runs)
    steps = [row["step"] for row in runs[0][:n]]
    values = np.array([[row[key] for row in h[:n]] for h in runs], dtype=float)  # (seeds, n)
    style = "--" if key.startswith("train") else ":" if key.startswith("val") else "-"
    ax.plot(steps, values.mean(axis=0), style, marker="o", markersize=3, color=color, label=label)
    if len(runs) > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15)


def _plain_ticks(axis) -> None:
    """A log axis's tick labels as plain numbers ("2.35", not "2.35×10⁰"), at the ticks matplotlib labels."""
    from matplotlib.ticker import Formatter

    class Plain(Formatter):
        def __init__(self, chooser: Formatter) -> None:
            self.chooser = chooser  # matplotlib's formatter: which ticks get a label

        def set_axis(self, axis) -> None:
            super().set_axis(axis)
            self.chooser.set_axis(axis)

        def set_locs(self, locs) -> None:
            super().set_locs(locs)
            self.chooser.set_locs(locs)

        def __call__(self, x: float, pos: int | None = None) -> str:
            return f"{x:g}" if self.chooser(x, pos) else ""

    axis.set_major_formatter(Plain(axis.get_major_formatter()))
    axis.set_minor_formatter(Plain(axis.get_minor_formatter()))


def plot_curves(arms: Mapping[str, tuple[float, Sequence[History]]], path: str | pathlib.Path,
                title: str = "") -> Figure:
    """Curves of each arm (``{"base": (lr, histories), "smoothed": (lr, histories)}``): the
    losses in one panel (log scale where every loss is positive; train dashed, validation dotted, test solid), any
    other metric (e.g. accuracy) in a second;
    the mean over the histories (seeds) with a marker at each checkpoint, their range shaded.
    Returns the (closed) figure."""
    plt = pyplot()
    keys = list(dict.fromkeys(k for _, hs in arms.values() for h in hs for row in h for k in row if k != "step"))
    panels = [[k for k in keys if "loss" in k], [k for k in keys if "loss" not in k]]
    panels = [p for p in panels if p] or [[]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for arm, (lr, histories) in arms.items():
            for key in panel:
                _curve(ax, histories, key, COLORS.get(arm, "tab:gray"), f"{arm} {key.replace('_', ' ')} (lr {lr:g})")
        losses = bool(panel) and "loss" in panel[0]
        ax.set(xlabel="step", ylabel="loss" if losses else ", ".join(k.replace("_", " ") for k in panel))
        if losses and all(row[k] > 0 for _, hs in arms.values() for h in hs for row in h for k in panel if k in row):
            ax.set_yscale("log")  # not where a loss goes to zero or below (rl's policy-gradient loss)
            _plain_ticks(ax.yaxis)
        steps = {row["step"] for _, hs in arms.values() for h in hs for row in h}
        if len(steps) == 1:  # one checkpoint: one tick at its step, not fractions of a step around it
            ax.set_xticks(sorted(steps))
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def plot_metric_vs_lr(summary: Mapping[str, Any], seeds: int, path: str | pathlib.Path) -> Figure:
    """Each arm's validation metric against the learning rate: the mean over ``seeds`` seeds,
    error bars ±1 sample standard deviation (as in the summary table). Returns the (closed) figure."""
    plt = pyplot()
    key = summary["metric"]
    fig, ax = plt.subplots(figsize=(5.4, 4))
    for arm in ("base", "smoothed"):
        rows = [r for r in summary["rows"] if not math.isnan(r[arm][0])]
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


def plot_compare(records: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                 out: str | pathlib.Path) -> list[pathlib.Path]:
    """A comparison's figures in ``out``: ``metric_vs_lr.png``, and ``curves_at_best_lr.png`` when
    the records hold a ``history`` (each arm's runs at its chosen learning rate)."""
    out = pathlib.Path(out)
    paths = [out / "metric_vs_lr.png"]
    plot_metric_vs_lr(summary, len({r["seed"] for r in records}), paths[0])
    best = summary["best"]
    arms = {arm: (best[arm], [r["history"] for r in records if r["arm"] == arm and r["lr"] == best[arm]
                              and r.get("history")]) for arm in ("base", "smoothed")}
    if any(histories for _, histories in arms.values()):
        paths.append(out / "curves_at_best_lr.png")
        plot_curves(arms, paths[1], title="curves at each arm's chosen learning rate (mean, range over seeds)")
    return paths
