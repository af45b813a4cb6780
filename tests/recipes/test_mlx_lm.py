"""docs/recipes/mlx-lm.md runs as written: mlx-lm's trainer with GradientSmoothing, full
training and LoRA, on a tiny randomly initialised Llama (no download). Checked: the plans (every
group depth-ordered in model.layers; for LoRA the LoRA matrices only), that the trainer stepped
the wrapper and the loss fell, and that LoRA left the frozen weights as they were."""

import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
from mlx.utils import tree_flatten  # noqa: E402

STACK, LAYERS, ITERS = "model.layers", 4, 30
LORA_LAYERS = (1, 2, 3)  # linear_to_lora_layers(num_layers=3): the last 3 of 4
LINEARS = 7  # q, k, v, o, gate, up, down


def check_depth_ordered(plan, depths: tuple[int, ...]) -> None:
    """Every group lies in ``model.layers`` with one member per layer of ``depths``, in that order."""
    assert plan.groups
    for group in plan.groups:
        assert group.stack == STACK and group.depths == depths
        assert group.names == tuple(f"{STACK}.{d}.{group.role}" for d in depths)


def check_full_training(scope: dict) -> None:
    model, opt, losses = scope["full_model"], scope["full_opt"], scope["full_losses"]
    trainable = dict(tree_flatten(model.trainable_parameters()))
    roles = {name[len(f"{STACK}.0.") :] for name in trainable if name.startswith(f"{STACK}.0.")}
    assert {g.role for g in opt.plan.groups} == roles and len(roles) == LINEARS + 2  # + the two norms
    check_depth_ordered(opt.plan, tuple(range(LAYERS)))
    assert set(opt.plan.ungrouped) == {"model.embed_tokens.weight", "model.norm.weight"}
    assert opt.state["step"].item() == ITERS  # the trainer stepped the wrapper once per iteration
    assert len(losses.train) == 3 and losses.train[-1] < 0.5 * losses.train[0]


def check_lora(scope: dict) -> None:
    model, opt, losses = scope["lora_model"], scope["lora_opt"], scope["lora_losses"]
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert trainable and all(name.rsplit(".", 1)[1] in ("lora_a", "lora_b") for name in trainable)
    # the plan: exactly the LoRA matrices, one group per (linear, lora_a | lora_b), layers 1-3 in order
    assert set(opt.plan.names) == set(trainable) and not opt.plan.ungrouped
    assert len(opt.plan.groups) == LINEARS * 2
    assert all(g.role.endswith((".lora_a", ".lora_b")) for g in opt.plan.groups)
    check_depth_ordered(opt.plan, LORA_LAYERS)
    assert opt.state["step"].item() == ITERS
    # the frozen weights are the initial ones, which a model built with the same seed holds (a LoRA
    # layer keeps its frozen weight as .linear.weight)
    fresh = dict(tree_flatten(scope["tiny_llama"]().parameters()))
    frozen = {name: value for name, value in tree_flatten(model.parameters()) if name not in trainable}
    for name, value in frozen.items():
        assert mx.array_equal(value, fresh[name.replace(".linear.", ".")]), name
    # lora_b starts at zero: every one has moved, so every LoRA layer trained
    assert all(mx.any(trainable[name] != 0).item() for name in trainable if name.endswith(".lora_b"))
    assert len(losses.train) == 3 and losses.train[-1] < losses.train[0]


def test_mlx_lm_recipe_full_training_and_lora(run_recipe, tmp_path):
    scope = run_recipe("mlx-lm")
    check_full_training(scope)
    check_lora(scope)
    assert (tmp_path / "full-model.safetensors").exists()  # the trainer saved the whole model
    saved = mx.load(str(tmp_path / "adapters.safetensors"))
    assert set(saved) == set(scope["lora_opt"].plan.names)  # and, for LoRA, the LoRA matrices only
