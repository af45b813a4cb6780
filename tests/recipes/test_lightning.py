"""docs/recipes/lightning.md runs as written: configure_optimizers' wrapper and scheduler step,
the checkpoint holds the smoothing step, and resuming with ckpt_path reproduces the run."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from gradsmooth.backends.torch import GradientSmoothing


def test_lightning_recipe(run_recipe, tmp_path, capsys):
    scope = run_recipe("lightning")  # asserts the resumed run's parameters equal the full run's
    assert "BlockPlan: 6 groups in 1 stack" in capsys.readouterr().out  # on_train_start printed the plan

    ckpt = torch.load(tmp_path / "lightning-ckpts" / "epoch=0-step=4.ckpt", weights_only=False)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["gradsmooth"]["step"] == 4
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 4

    full, resumed = scope["full"], scope["resumed"]
    for model in (full, resumed):
        opt = model.trainer.optimizers[0]
        assert isinstance(opt, GradientSmoothing) and opt.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 8
        assert model.trainer.global_step == 8
    # the cosine schedule ran to its end on the base's groups, which are the wrapper's
    assert resumed.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert resumed.optimizers().optimizer is resumed.trainer.optimizers[0]  # the page's "where the plan is"
