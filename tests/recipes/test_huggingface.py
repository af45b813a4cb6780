"""docs/recipes/huggingface.md runs as written: both ways of giving the Trainer the wrapper,
where its plan is, and resuming from a Trainer checkpoint reproduces the run."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from gradsmooth.backends.torch import GradientSmoothing


def test_huggingface_recipe(run_recipe, tmp_path):
    scope = run_recipe("huggingface")

    # 1. the ready optimizer: the Trainer stepped the wrapper (behind accelerate's) 8 times
    assert scope["opt"].state_dict()["param_groups"][0]["gradsmooth"]["step"] == 8

    # 2. the factory: the Trainer built it over its decay / no-decay groups, with the kwargs' lr
    smoothing = scope["smoothing"]
    assert isinstance(smoothing, GradientSmoothing) and isinstance(smoothing.optimizers[0], torch.optim.AdamW)
    assert [g["weight_decay"] for g in smoothing.param_groups] == [0.1, 0.0]
    assert all(g["initial_lr"] == 1e-3 and g["betas"] == (0.9, 0.95) for g in smoothing.param_groups)
    plan = {g.role: g.names for g in smoothing.plan.groups}
    assert plan["self_attn.q_proj.weight"] == tuple(f"model.layers.{i}.self_attn.q_proj.weight" for i in range(4))
    assert "model.embed_tokens.weight" not in {n for names in plan.values() for n in names}

    # SmoothedAdamW.factory: the Trainer built the native optimizer over its own groups
    native = scope["native"].optimizer.optimizer
    assert [g["weight_decay"] for g in native.param_groups] == [0.1, 0.0] and native.state_dict()["state"]

    # before training, create_optimizer() builds the same wrapper (the page's "where the plan is")
    early = scope["make_trainer"]("hf-early").create_optimizer()
    assert isinstance(early, GradientSmoothing) and str(early.plan) == str(smoothing.plan)

    # 3. resume: the checkpoint holds the smoothing step; the resumed run continued from it
    saved = torch.load(tmp_path / "hf-factory" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert saved["param_groups"][0]["gradsmooth"]["step"] == 4
    resumed = scope["resumed"]
    assert resumed.state.global_step == 8
    assert resumed.optimizer.optimizer.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 8
    for p, q in zip(scope["trainer"].model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)


def test_resuming_without_the_optimizer_state_would_differ(run_recipe, tmp_path):
    """The recipe's equality is not vacuous: a run resumed from the same weights but with a
    fresh optimizer (no moments, smoothing step 0) ends elsewhere."""
    scope = run_recipe("huggingface")
    (tmp_path / "hf-factory" / "checkpoint-4" / "optimizer.pt").unlink()
    fresh = scope["make_trainer"]("hf-fresh")
    fresh.train(resume_from_checkpoint="hf-factory/checkpoint-4")
    assert any(not torch.equal(p, q) for p, q in zip(scope["trainer"].model.parameters(), fresh.model.parameters()))
