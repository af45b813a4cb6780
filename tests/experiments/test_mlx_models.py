"""The MLX models and trainer of the demo: shapes, the schedule as the loop's, a tiny run through the loop."""

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
optim = pytest.importorskip("mlx.optimizers")
pytest.importorskip("sklearn")

from gradsmooth.backends.mlx import GradientSmoothing  # noqa: E402
from gradsmooth.experiments import mlx_models as mm  # noqa: E402
from gradsmooth.experiments.data import load_digits_split  # noqa: E402
from gradsmooth.experiments.loop import WarmupCosine  # noqa: E402
from gradsmooth.experiments.runs import RunConfig, run  # noqa: E402


def test_models_give_logits_and_one_output_per_block():
    outputs = []
    logits = mm.ViT(depth=3, dim=16, heads=2)(mx.zeros((5, 8, 8)), outputs=outputs)
    assert logits.shape == (5, 10) and [o.shape for o in outputs] == [(5, 17, 16)] * 3
    assert mm.GPT(depth=2, dim=16, heads=2, context=8)(mx.zeros((3, 8), dtype=mx.int32)).shape == (3, 8, 256)


@pytest.mark.parametrize("steps, warmup", [(20, 0.05), (100, 0.1), (7, 0.0)])
def test_the_mlx_schedule_is_the_loops_schedule(steps, warmup):
    config = RunConfig(steps=steps, warmup=warmup, lr=3e-3)
    schedule, shape = mm._schedule(config, config.lr), WarmupCosine.of(config)
    got = [schedule(mx.array(i)).item() for i in range(steps)]
    assert got == pytest.approx([config.lr * shape.factor(i) for i in range(steps)], rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_build_optimizer_gives_the_base_or_the_wrapper(optimizer):
    base = mm.build_optimizer(RunConfig(optimizer=optimizer))
    assert isinstance(base, optim.MultiOptimizer if optimizer == "muon" else optim.Optimizer)
    assert isinstance(mm.build_optimizer(RunConfig(optimizer=optimizer, smoothing={"window": 3})), GradientSmoothing)


def test_a_tiny_run_through_the_loop_is_reproducible():
    data = load_digits_split()
    config = RunConfig(task="vit", backend="mlx", steps=3, eval_every=2, batch_size=4, smoothing={"window": 3})
    first, second = (run(config, data, diagnose=True) for _ in range(2))
    assert first.complete and [row["step"] for row in first.history] == [2, 3]
    assert first.history == second.history and np.isfinite(first.final("test_acc"))
    assert first.diagnostics["update_similarity"].shape == (8, 8)
    assert first.diagnostics["representation_similarity"].shape == (8, 8)
