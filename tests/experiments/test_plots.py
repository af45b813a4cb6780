"""The demo's depth-structure figure says what it shows: titles, colourbar labels, its steps."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradsmooth.experiments import plots  # noqa: E402
from gradsmooth.experiments.runs import RunConfig, RunResult  # noqa: E402


def result(lr, seed, smoothed, steps=(50, 100, 150), acc=0.5):
    cfg = RunConfig(task="vit", lr=lr, seed=seed, smoothing={"window": 3} if smoothed else None, steps=steps[-1])
    history = [{"step": s, "train_loss": 1.0 / s, "test_loss": 2.0 / s, "test_acc": acc + 0.01 * seed,
                "val_acc": acc + 0.02 * seed} for s in steps]
    diagnostics = {"update_similarity": np.eye(4), "representation_similarity": np.ones((4, 4))}
    return RunResult(cfg, history, diagnostics, complete=True)


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


def test_samples_are_drawn_one_row_per_class_with_their_accuracy(tmp_path):
    runs = []
    for smoothed in (False, True):
        r = result(1e-2, 0, smoothed)
        r.history[-1]["sample_acc"] = 0.5 + 0.25 * smoothed
        r.diagnostics["samples"] = np.zeros((100, 8, 8))
        runs.append(r)
    fig = plots.plot_samples(*runs, tmp_path / "s.png")
    assert [ax.get_title() for ax in fig.axes] == ["base (lr 0.01): sample accuracy 0.50",
                                                   "smoothed (lr 0.01): sample accuracy 0.75"]
    assert fig.axes[0].get_images()[0].get_array().shape == (80, 80)  # 10 classes x 10 samples of 8 x 8
    assert "after step 150" in fig._suptitle.get_text() and (tmp_path / "s.png").stat().st_size > 0
