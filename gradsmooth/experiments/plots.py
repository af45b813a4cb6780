"""The demo's figures (matplotlib, drawn off-screen): the depth structure, and the diffusion
task's samples; the comparisons' figures are [`gradsmooth.plots`][gradsmooth.plots]."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..plots import pyplot
from .diffusion import CLASSES
from .runs import RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_depth_structure", "plot_samples"]


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
    plt = pyplot()
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


def plot_samples(base: RunResult, smoothed: RunResult, path: str | pathlib.Path) -> Figure:
    """The diffusion task's samples after training, base beside smoothed: one row per class,
    drawn by the fixed deterministic sampler (gradsmooth.experiments.diffusion.ddim_sample),
    with the judge's accuracy on them. Returns the (closed) figure."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.6))
    for ax, r in zip(axes, (base, smoothed)):
        samples = np.asarray(r.diagnostics["samples"])  # (classes * per class, 8, 8) in [-1, 1], class by class
        per = len(samples) // CLASSES
        grid = samples[: CLASSES * per].reshape(CLASSES, per, 8, 8).transpose(0, 2, 1, 3).reshape(CLASSES * 8, per * 8)
        ax.imshow(grid, cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(f"{r.config.label} (lr {r.config.lr:g}): sample accuracy {r.final('sample_acc'):.2f}", fontsize=9)
        ax.set_yticks(np.arange(CLASSES) * 8 + 3.5, [str(c) for c in range(CLASSES)])
        ax.set_xticks([])
        ax.set_ylabel("class")
    fig.suptitle(f"Samples after step {base.history[-1]['step'] if base.history else base.config.steps}: DDIM (eta 0) "
                 f"from fixed noise, the same for both; accuracy of a classifier fitted on the training images",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig
