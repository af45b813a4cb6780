"""docs/recipes/peft.md runs as written: the plan holds the LoRA matrices only, in depth-ordered
groups, and only they move."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from gradsmooth.backends.torch import GradientSmoothing

STACK = "base_model.model.model.layers"
ROLES = [f"self_attn.{proj}.lora_{ab}.default.weight" for proj in ("q_proj", "v_proj") for ab in ("A", "B")]


def test_peft_lora_recipe_plans_and_moves_the_adapters_only(run_recipe):
    scope = run_recipe("peft")
    model, opt = scope["model"], scope["opt"]

    # the plan: one group per LoRA matrix role, its members the 4 layers in depth order
    assert [(g.stack, g.role) for g in opt.plan.groups] == [(STACK, role) for role in ROLES]
    for g in opt.plan.groups:
        assert g.names == tuple(f"{STACK}.{i}.{g.role}" for i in range(4))
    planned = {n for g in opt.plan.groups for n in g.names}
    assert f"{STACK}.3.self_attn.q_proj.lora_A.default.weight" in planned
    assert planned == {n for n, p in model.named_parameters() if p.requires_grad}
    assert opt.state_dict()["param_groups"][0]["gradsmooth"]["step"] == 3

    # the same plan from the names alone ((name, parameter) pairs, no module tree)
    trainable = [p for p in model.parameters() if p.requires_grad]
    by_names = GradientSmoothing(torch.optim.SGD(trainable, lr=0.1), list(model.named_parameters()))
    assert [g.names for g in by_names.plan.groups] == [g.names for g in opt.plan.groups]

    # the frozen weights are the page's initial ones; lora_B (zero at the start) moved
    torch.manual_seed(0)
    initial = scope["LlamaForCausalLM"](scope["config"]).state_dict()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, initial[name.removeprefix("base_model.model.").replace(".base_layer", "")]), name
        elif ".lora_B." in name:
            assert p.abs().sum() > 0, name
