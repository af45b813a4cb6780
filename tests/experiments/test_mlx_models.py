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


TINY = dict(backend="mlx", steps=3, eval_every=2, depth=2, width=16)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("start, final, steps", [(1.0, 0.0, 300), (0.25, 0.75, 7), (0.5, 0.0, 1)])
def test_the_mlx_alpha_schedule_is_the_loops_schedule(kind, start, final, steps):
    from gradsmooth.experiments.loop import AlphaSchedule

    schedule = AlphaSchedule(kind, start, final, steps)
    mlx_schedule = mm._alpha_schedule(schedule)
    at = [0, 1, steps // 2, steps - 1, steps, 10 * steps + 5]
    got = [mlx_schedule(mx.array(t, mx.uint64)).item() for t in at]
    assert got == pytest.approx([schedule(t) for t in at], abs=1e-6)
    smoothed = mm.build_optimizer(RunConfig(smoothing={"window": 3, "alpha": schedule}))
    assert smoothed.operator.alpha is not schedule and callable(smoothed.operator.alpha)  # MLX's own


def test_devices_resolve_to_mlxs_and_refuse_what_it_lacks(monkeypatch):
    assert mm.resolve_device("cpu") == "cpu"
    assert mm.resolve_device("auto") == ("gpu" if mx.default_device() == mx.gpu else "cpu")
    with pytest.raises(ValueError, match="device should be one of .* for MLX but is: 'cuda': MLX names its devices"):
        mm.resolve_device("cuda")
    monkeypatch.setattr(mx, "is_available", lambda device: False)
    with pytest.raises(ValueError, match=r"device 'gpu' is not available to MLX .* \(mx.is_available\(mx.gpu\)"):
        mm.resolve_device("gpu")
    before = mx.default_device()
    with mm.running(RunConfig(backend="mlx", device="cpu")):
        assert mx.default_device() == mx.cpu
    assert mx.default_device() == before


def test_the_dit_starts_as_identity_blocks_and_predicts_zero_noise():
    outputs = []
    model = mm.DiT(depth=3, dim=16, heads=2)
    x = mx.random.normal((5, 8, 8))
    eps = model(x, mx.random.normal((5, 16)), mx.arange(5), outputs=outputs)
    assert eps.shape == (5, 8, 8) and not mx.any(eps).item()
    embedded = model.embed(mm.patches(x)) + model.pos
    assert all(mx.array_equal(o, embedded).item() for o in outputs) and len(outputs) == 3


def test_tiny_diffusion_and_rl_runs_are_reproducible(quick_phase1):
    from gradsmooth.experiments.data import load_problems

    data = load_digits_split(val_fraction=0.2)
    config = RunConfig(task="diffusion", batch_size=8, smoothing={"window": 3}, **TINY)
    first, second = run(config, data, diagnose=True), run(config, data)
    assert first.history == second.history and np.isfinite(first.final("val_loss"))
    assert 0 <= first.final("sample_acc") <= 1 and first.diagnostics["samples"].shape == (100, 8, 8)
    problems = load_problems()
    config = RunConfig(task="rl", batch_size=2, group=3, kl=0.1, smoothing={"window": 3}, **TINY)
    with pytest.warns(RuntimeWarning, match="phase 1 stopped"):
        first = run(config, problems, diagnose=True)
    second = run(config, problems)
    assert first.history == second.history and first.history[1]["train_kl"] >= 0 and first.phase1["steps"] == 4
    assert first.diagnostics["update_similarity"].shape == (2, 2)
