"""The PyTorch models and trainer of the demo: shapes, the optimizers, one step, a tiny run through the loop."""

from dataclasses import replace

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


TINY = dict(steps=3, eval_every=2, depth=2, width=16)


def test_patches_and_unpatch_are_inverse():
    images = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 8, 8)
    assert torch.equal(tm.patches(images)[0, 1], torch.tensor([2.0, 3.0, 10.0, 11.0]))  # the second patch, row by row
    assert torch.equal(tm.unpatch(tm.patches(images)), images)


def test_the_dit_starts_as_identity_blocks_and_predicts_zero_noise():
    outputs = []
    model = tm.DiT(depth=3, dim=16, heads=2)
    x, t, y = torch.randn(5, 8, 8), torch.randn(5, 16), torch.arange(5)
    eps = model(x, t, y, outputs=outputs)
    assert eps.shape == (5, 8, 8) and torch.count_nonzero(eps) == 0  # adaLN-Zero: the output layer starts at zero
    embedded = model.embed(tm.patches(x)) + model.pos
    assert [o.shape for o in outputs] == [(5, 16, 16)] * 3 and all(torch.equal(o, embedded) for o in outputs)
    assert {n for n, _ in model.named_parameters() if n.startswith("blocks.0.")} >= {
        "blocks.0.modulation.weight", "blocks.0.attn.qkv.weight", "blocks.0.fc.weight"}


def test_devices_resolve_to_what_this_machine_has_and_refuse_what_it_lacks(monkeypatch):
    assert tm.resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert tm.resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda' is not available here .*: use cpu or auto"):
        tm.resolve_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'mps' is not available here"):
        tm.resolve_device("mps")
    with pytest.raises(ValueError, match="device should be one of .* but is: 'gpu': that is MLX's name"):
        tm.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tm.resolve_device("auto") == tm.resolve_device("cuda") == "cuda"


def test_a_cuda_run_sets_cublas_deterministic_workspace_and_restores_it(monkeypatch):
    import os

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with tm.running(RunConfig(device="cuda")):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with tm.running(RunConfig(device="cpu")):
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_tiny_diffusion_run_is_reproducible_and_the_diagnostics_change_nothing(one_thread):
    data = load_digits_split(val_fraction=0.2)
    config = RunConfig(task="diffusion", batch_size=8, smoothing={"window": 3}, **TINY)
    first, second = run(config, data, diagnose=True), run(config, data)
    assert first.history == second.history and first.config.device == "cpu"
    assert set(first.history[-1]) == {"step", "train_loss", "test_loss", "val_loss", "sample_acc"}
    assert first.diagnostics["samples"].shape == (100, 8, 8) and first.diagnostics["update_similarity"].shape == (2, 2)


def test_a_tiny_rl_run_trains_phase1_once_per_seed_and_the_diagnostics_change_nothing(quick_phase1, one_thread):
    from gradsmooth.experiments.data import load_problems

    data = load_problems()
    config = RunConfig(task="rl", batch_size=2, group=3, smoothing={"window": 3}, **TINY)
    with pytest.warns(RuntimeWarning, match="phase 1 stopped after 4 steps"):
        first = run(config, data, diagnose=True)
    second = run(config, data)
    assert first.history == second.history and quick_phase1 == [0]  # seed 0's phase 1, once
    assert [row["step"] for row in first.history] == [0, 2, 3] and set(first.history[0]) == {"step", "val_acc",
                                                                                               "test_acc"}
    assert {"train_loss", "train_reward"} <= set(first.history[1]) and "train_kl" not in first.history[1]
    assert first.phase1["steps"] == 4 and first.diagnostics["representation_similarity"].shape == (2, 2)
    with_kl = run(replace(config, kl=0.5, smoothing=None), data)
    assert quick_phase1 == [0] and with_kl.history[1]["train_kl"] >= 0  # the same phase 1; the KL term reported
    assert with_kl.history[0] == first.history[0]  # both start from it


def test_a_schedule_of_alpha_reaches_the_smoothing_step_by_step(one_thread):
    from gradsmooth.experiments.loop import AlphaSchedule

    data = load_digits_split()
    config = RunConfig(task="vit", batch_size=4, **TINY)
    constant = run(replace(config, smoothing={"window": 3, "alpha": 1.0}), data)
    same = run(replace(config, smoothing={"window": 3, "alpha": AlphaSchedule("linear", 1.0, 1.0, 3)}), data)
    decaying = run(replace(config, smoothing={"window": 3, "alpha": AlphaSchedule("linear", 1.0, 0.0, 3)}), data)
    assert same.history == constant.history and decaying.history[-1] != constant.history[-1]
