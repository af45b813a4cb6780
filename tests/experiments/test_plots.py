"""The PNG figures say what they show: titles, colourbar labels, the error bars' meaning, markers."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradsmooth.experiments import plots  # noqa: E402
from gradsmooth.experiments.runs import RunConfig, RunResult, summarize  # noqa: E402


def result(lr, seed, smoothed, steps=(50, 100, 150), acc=0.5):
    cfg = RunConfig(task="vit", lr=lr, seed=seed, smoothing={"window": 3} if smoothed else None, steps=steps[-1])
    history = [{"step": s, "train_loss": 1.0 / s, "test_loss": 2.0 / s, "test_acc": acc + 0.01 * seed,
                "val_acc": acc + 0.02 * seed} for s in steps]
    diagnostics = {"update_similarity": np.eye(4), "representation_similarity": np.ones((4, 4))}
    return RunResult(cfg, history, diagnostics, complete=True)


def test_curves_with_one_checkpoint_are_drawn_as_markers(tmp_path):
    base, smoothed = result(1e-3, 0, False, steps=(4,)), result(1e-3, 0, True, steps=(4,))
    fig = plots.plot_curves([base], [smoothed], tmp_path / "c.png")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 6 and all(line.get_marker() == "o" for line in lines)
    assert [list(ax.get_xticks()) for ax in fig.axes] == [[4], [4]]
    assert (tmp_path / "c.png").stat().st_size > 0


def test_depth_structure_has_titles_colourbar_labels_and_its_steps(tmp_path):
    fig = plots.plot_depth_structure(result(3e-3, 0, False), result(3e-3, 0, True), tmp_path / "d.png")
    title = fig._suptitle.get_text()
    assert "base vs smoothed" in title
    assert "mean over the updates at steps 50, 100, 150" in title and "after step 150" in title
    heatmaps = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in heatmaps] == [
        "base (lr 0.003): update cosine similarity", "smoothed (lr 0.003): update cosine similarity",
        "base (lr 0.003): representation linear CKA", "smoothed (lr 0.003): representation linear CKA"]
    colourbars = [ax.get_ylabel() for ax in fig.axes if not ax.get_images()]
    assert colourbars == ["cosine similarity"] * 2 + ["linear CKA"] * 2


def test_metric_vs_lr_has_a_title_and_says_what_the_error_bars_are(tmp_path):
    results = [result(lr, seed, smoothed) for lr in (1e-3, 1e-2) for seed in (0, 1, 2) for smoothed in (False, True)]
    summary = summarize(results)
    fig = plots.plot_metric_vs_lr(summary, 3, tmp_path / "m.png")
    ax = fig.axes[0]
    assert ax.get_title() == "final val acc vs learning rate (higher is better)"
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["mean over 3 seeds; error bars: ±1 standard deviation over the 3 seeds"]
    one = plots.plot_metric_vs_lr(summary, 1, tmp_path / "m1.png")
    assert [t.get_text() for t in one.axes[0].texts] == ["one seed: no error bars"]
    paths = plots.plot_compare(results, summary, tmp_path)
    assert [p.name for p in paths] == ["metric_vs_lr.png", "curves_at_best_lr.png"]
