"""The PyTorch models and trainer of the demo: shapes, the optimizers, one step, a tiny run through the loop."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from gradsmooth.backends.torch import GradientSmoothing  # noqa: E402
from gradsmooth.experiments import torch_models as tm  # noqa: E402
from gradsmooth.experiments.data import load_digits_split, load_text  # noqa: E402
from gradsmooth.experiments.loop import WarmupCosine  # noqa: E402
from gradsmooth.experiments.runs import RunConfig, run  # noqa: E402


def test_models_give_logits_and_one_output_per_block():
    outputs = []
    logits = tm.ViT(depth=3, dim=16, heads=2)(torch.zeros(5, 8, 8), outputs=outputs)
    assert logits.shape == (5, 10) and [o.shape for o in outputs] == [(5, 17, 16)] * 3
    assert tm.GPT(depth=2, dim=16, heads=2, context=8)(torch.zeros(3, 8, dtype=torch.long)).shape == (3, 8, 256)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_build_optimizer_gives_the_base_or_the_wrapper(optimizer):
    config = RunConfig(optimizer=optimizer, lr=1e-2)
    model = tm.build_model(config)
    base = tm.build_optimizer(model, config)
    assert isinstance(base, tm.Both if optimizer == "muon" else torch.optim.Optimizer)
    n = sum(len(g["params"]) for g in base.param_groups)
    assert n == len(list(model.parameters()))
    if optimizer == "muon":
        assert [g["lr"] for g in base.param_groups] == [1e-2, 1e-3]
    smoothed = tm.build_optimizer(model, RunConfig(optimizer=optimizer, smoothing={"window": 3}))
    assert isinstance(smoothed, GradientSmoothing)


def test_a_step_sets_the_scheduled_learning_rate_and_moves_the_weights():
    config = RunConfig(steps=10, warmup=0.3, batch_size=4, optimizer="muon")
    trainer = tm.Trainer(config, load_digits_split(), None)
    before = trainer.parameters()
    rng = np.random.default_rng(0)
    loss = trainer.step(1, rng.random((4, 8, 8), dtype=np.float32), rng.integers(0, 10, 4))
    factor = WarmupCosine.of(config).factor(1)
    assert isinstance(loss, float) and factor == 2 / 3
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [config.lr * factor, config.lr / 10 * factor]
    after = trainer.parameters()
    assert not np.array_equal(after["blocks.0.fc.weight"], before["blocks.0.fc.weight"])  # a copy, not a view


@pytest.mark.parametrize("task", ["vit", "lm"])
def test_a_tiny_run_through_the_loop_is_reproducible(task, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello gradient smoothing " * 200)
    data = load_digits_split() if task == "vit" else load_text(str(text), 8)
    config = RunConfig(task=task, steps=3, eval_every=2, batch_size=4, context=8, smoothing={"window": 3})
    first, second = (run(config, data, diagnose=True) for _ in range(2))
    assert first.complete and [row["step"] for row in first.history] == [2, 3]
    assert first.history == second.history
    depth = tm.SIZES[task]["depth"]
    assert first.diagnostics["update_similarity"].shape == (depth, depth)
    assert first.diagnostics["representation_similarity"].shape == (depth, depth)
