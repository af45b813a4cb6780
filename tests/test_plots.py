"""The comparison figures say what they show: titles, panels, the error bars' meaning, markers."""

import pytest

pytest.importorskip("matplotlib")

from gradsmooth import plots as core_plots  # noqa: E402
from gradsmooth.compare import summarize_records  # noqa: E402


def history(seed, steps=(50, 100, 150), acc=0.5):
    return [{"step": s, "train_loss": 1.0 / s, "test_loss": 2.0 / s, "test_acc": acc + 0.01 * seed,
             "val_acc": acc + 0.02 * seed} for s in steps]


def test_curves_with_one_checkpoint_are_drawn_as_markers(tmp_path):
    fig = core_plots.plot_curves({"base": (1e-3, [history(0, steps=(4,))]), "smoothed": (1e-3, [history(0, steps=(4,))])},
                                 tmp_path / "c.png")
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert len(lines) == 2 * 4 and all(line.get_marker() == "o" for line in lines)  # 2 arms x 4 metrics
    assert [list(ax.get_xticks()) for ax in fig.axes] == [[4], [4]]
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear"]  # losses apart from accuracies
    assert (tmp_path / "c.png").stat().st_size > 0


def test_metric_vs_lr_has_a_title_and_says_what_the_error_bars_are(tmp_path):
    records = [{"lr": lr, "arm": arm, "seed": seed, "val": h[-1]["val_acc"], "test": h[-1]["test_acc"], "history": h}
               for lr in (1e-3, 1e-2) for seed in (0, 1, 2) for arm in ("base", "smoothed") for h in [history(seed)]]
    summary = summarize_records(records, True, "val_acc", "test_acc")
    fig = core_plots.plot_metric_vs_lr(summary, 3, tmp_path / "m.png")
    ax = fig.axes[0]
    assert ax.get_title() == "final val acc vs learning rate (higher is better)"
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["mean over 3 seeds; error bars: ±1 standard deviation over the 3 seeds"]
    one = core_plots.plot_metric_vs_lr(summary, 1, tmp_path / "m1.png")
    assert [t.get_text() for t in one.axes[0].texts] == ["one seed: no error bars"]
    paths = core_plots.plot_compare(records, summary, tmp_path)
    assert [p.name for p in paths] == ["metric_vs_lr.png", "curves_at_best_lr.png"]


@pytest.mark.parametrize("scale", [1.0, 0.01, 100.0])  # within a decade, and across several
def test_loss_ticks_are_plain_numbers(tmp_path, scale):
    h = [{"step": s, "train_loss": scale * (2.5 - 0.001 * s), "val_loss": scale * (2.45 - 0.0008 * s) ** (s / 50)}
         for s in (50, 100, 200, 300)]
    fig = core_plots.plot_curves({"base": (1e-3, [h]), "smoothed": (3e-3, [h])}, tmp_path / "c.png")
    ax = fig.axes[0]
    labels = [t.get_text() for minor in (False, True) for t in ax.get_yticklabels(minor=minor) if t.get_text()]
    assert labels and all(float(label) > 0 for label in labels), labels  # "2.35", not "$2.35\times10^{0}$"


def test_curves_leave_out_checkpoints_without_a_metric_and_losses_below_zero_stay_linear(tmp_path):
    rl = [{"step": 0, "val_acc": 0.3}] + [{"step": s, "train_loss": -0.1, "train_reward": 0.2, "val_acc": 0.4}
                                          for s in (10, 20)]
    fig = core_plots.plot_curves({"base": (1e-3, [rl, rl]), "smoothed": (1e-3, [rl])}, tmp_path / "rl.png")
    losses, others = fig.axes
    assert losses.get_yscale() == "linear"  # a policy-gradient loss is not positive
    train = [line for line in losses.get_lines() if "train loss" in line.get_label()]
    assert [list(line.get_xdata()) for line in train] == [[10, 20], [10, 20]]
    accuracy = [line for line in others.get_lines() if "val acc" in line.get_label()]
    assert [list(line.get_xdata()) for line in accuracy] == [[0, 10, 20], [0, 10, 20]]  # from phase 1's step 0
