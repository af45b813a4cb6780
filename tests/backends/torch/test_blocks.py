"""Blocks found from a torch model's structure: wrappers, tied and frozen parameters, real models."""

import copy

import pytest
import torch
from torch import nn

from gradsmooth.backends.torch import GradientSmoothing, canonical_name, module_sites


def plan_of(model, **kw):
    return GradientSmoothing(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01), model, **kw).plan


def summary(plan):
    return {(g.stack, g.role): (g.names, g.depths, g.shape) for g in plan.groups}


def expect_stack(plan, stack, blocks, skip=(), n=None):
    """Every role of ``blocks[0]`` (but ``skip``) is one group of ``stack`` across all blocks."""
    found = {g.role: g for g in plan.groups if g.stack == stack}
    roles = {name for name, p in blocks[0].named_parameters() if p.requires_grad} - set(skip)
    assert set(found) == roles, set(found) ^ roles
    n = n or len(blocks)
    for role, g in found.items():
        assert g.names == tuple(f"{stack}.{i}.{role}" for i in range(n)), role
        assert g.depths == tuple(range(n))
        assert g.shape == tuple(dict(blocks[0].named_parameters())[role].shape)


def step_once(model, opt, loss_fn):
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_fn().backward()
    opt.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert any(moved) and all(torch.isfinite(p).all() for p in model.parameters())


def test_tiny_net_plan(tiny_net):
    model = tiny_net()
    plan = plan_of(model)
    expect_stack(plan, "blocks", model.blocks)
    assert plan.ungrouped == ("blocks.2.adapter.weight", "embed.bias", "embed.weight", "head.bias", "head.weight",
                              "norm.bias", "norm.weight")


def test_names_give_the_same_plan_as_the_structure(tiny_net):
    model = tiny_net()
    by_names = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), list(model.named_parameters())).plan
    assert by_names == plan_of(model)


def test_wrapper_prefixes_are_ignored(tiny_net, tmp_path):
    model = tiny_net()
    expected = summary(plan_of(model))
    assert summary(plan_of(torch.compile(model))) == expected
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    wrapped = copy.deepcopy(model)
    wrapped.blocks = nn.ModuleList([checkpoint_wrapper(b) for b in wrapped.blocks])
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    assert summary(plan_of(wrapped)) == expected
    assert canonical_name("_orig_mod.module.blocks.0._checkpoint_wrapped_module.attn.weight") == "blocks.0.attn.weight"


def test_ddp_module_prefix_is_ignored(tiny_net, tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        model = tiny_net()
        ddp = nn.parallel.DistributedDataParallel(model)
        assert summary(plan_of(ddp)) == summary(plan_of(model))
        opt = GradientSmoothing(torch.optim.AdamW(ddp.parameters(), lr=0.01), ddp)
        step_once(ddp, opt, lambda: ddp(torch.randn(4, 5, dtype=torch.float64)).pow(2).mean())
    finally:
        dist.destroy_process_group()


def test_tied_parameters_are_counted_once(tiny_net):
    model = tiny_net()
    model.blocks[3].attn.weight = model.blocks[0].attn.weight  # shared across depth
    plan = plan_of(model)
    attn = {g.role: g for g in plan.groups}["attn.weight"]
    assert attn.depths == (0, 1, 2, 4, 5)
    names = [n for g in plan.groups for n in g.names] + list(plan.ungrouped)
    assert len(names) == len(set(names)) == len(list(model.parameters()))
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model)
    step_once(model, opt, lambda: model(torch.randn(4, 5, dtype=torch.float64)).pow(2).mean())


def test_frozen_and_gradient_free_parameters_are_left_out(tiny_net):
    model = tiny_net()
    for p in model.blocks[5].parameters():
        p.requires_grad_(False)
    plan = plan_of(model)
    assert all(5 not in g.depths for g in plan.groups)
    assert not any(n.startswith("blocks.5.") for n in plan.ungrouped)


class Expert(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w1 = nn.Linear(d, 2 * d)
        self.w2 = nn.Linear(2 * d, d)


class MoEBlock(nn.Module):
    def __init__(self, d, n_experts=4):
        super().__init__()
        self.gate = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList([Expert(d) for _ in range(n_experts)])


def test_an_experts_list_inside_a_block_is_not_depth():
    model = nn.Module()
    model.layers = nn.ModuleList([MoEBlock(8) for _ in range(3)])
    plan = plan_of(model)
    expect_stack(plan, "layers", model.layers)
    assert module_sites(model)["layers.2.experts.3.w1.weight"] == ("layers", 2, "experts.3.w1.weight")


def _block(d=8):
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU())


def test_the_blocks_between_a_stem_and_a_head_of_one_sequential_are_a_stack():
    # nn.Sequential(stem, *blocks, head): the run of repeated blocks is the stack, named by its range
    model = nn.Sequential(nn.Linear(4, 8), *(_block() for _ in range(5)), nn.Linear(8, 1))
    plan = plan_of(model)
    assert {g.stack for g in plan.groups} == {"[1:6]"}
    assert {g.role for g in plan.groups} == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert all(g.depths == (1, 2, 3, 4, 5) for g in plan.groups)
    assert set(plan.ungrouped) == {"0.weight", "0.bias", "6.weight", "6.bias"}
    assert module_sites(model)["3.1.weight"] == ("[1:6]", 3, "1.weight")


def test_two_runs_in_one_container_are_two_stacks_and_a_uniform_container_keeps_its_name():
    model = nn.Module()
    model.body = nn.ModuleList([*(_block() for _ in range(3)), nn.Linear(8, 8), *(_block(4) for _ in range(2))])
    model.layers = nn.ModuleList([_block() for _ in range(3)])
    sites = module_sites(model)
    assert sites["body.1.1.weight"] == ("body[0:3]", 1, "1.weight")
    assert sites["body.5.1.weight"] == ("body[4:6]", 5, "1.weight")
    assert "body.3.weight" not in sites  # a single module between them is no stack
    assert sites["layers.2.1.weight"] == ("layers", 2, "1.weight")
    plan = plan_of(model)
    assert {g.stack for g in plan.groups} == {"body[0:3]", "body[4:6]", "layers"}


def test_a_sequential_of_alternating_layers_holds_no_stack():
    with pytest.warns(UserWarning, match="smooths nothing"):
        plan = plan_of(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 1)))
    assert not plan.groups


# -- real architectures from small configs (no weights, no network) -------------------------------


def hf(name):
    transformers = pytest.importorskip("transformers")
    return getattr(transformers, name)


def lm_loss(model, vocab=64):
    ids = torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0))
    return lambda: model(input_ids=ids, labels=ids).loss


def test_hf_gpt2():
    cfg = hf("GPT2Config")(vocab_size=64, n_positions=16, n_embd=16, n_layer=3, n_head=2)
    model = hf("GPT2LMHeadModel")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    expect_stack(opt.plan, "transformer.h", model.transformer.h)
    assert opt.plan.ungrouped == ("transformer.ln_f.bias", "transformer.ln_f.weight", "transformer.wpe.weight",
                                  "transformer.wte.weight")  # lm_head.weight is tied to wte: counted once
    step_once(model, opt, lm_loss(model))


def test_hf_llama():
    cfg = hf("LlamaConfig")(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    model = hf("LlamaForCausalLM")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    expect_stack(opt.plan, "model.layers", model.model.layers)
    assert opt.plan.ungrouped == ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight")
    step_once(model, opt, lm_loss(model))


def test_hf_bert():
    cfg = hf("BertConfig")(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32)
    model = hf("BertForMaskedLM")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    expect_stack(opt.plan, "bert.encoder.layer", model.bert.encoder.layer)
    assert {g.stack for g in opt.plan.groups} == {"bert.encoder.layer"}
    assert "bert.embeddings.word_embeddings.weight" in opt.plan.ungrouped
    step_once(model, opt, lm_loss(model))


def test_hf_t5_encoder_and_decoder_are_separate_stacks():
    cfg = hf("T5Config")(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=4, num_heads=2,
                         decoder_start_token_id=0, pad_token_id=0)
    model = hf("T5ForConditionalGeneration")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    bias = "layer.0.SelfAttention.relative_attention_bias.weight"
    expect_stack(opt.plan, "encoder.block", model.encoder.block, skip=[bias])
    expect_stack(opt.plan, "decoder.block", model.decoder.block, skip=[bias])
    assert f"encoder.block.0.{bias}" in opt.plan.ungrouped and f"decoder.block.0.{bias}" in opt.plan.ungrouped
    assert opt.plan.stacks == ("decoder.block", "encoder.block")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    step_once(model, opt, lambda: model(input_ids=ids, labels=ids).loss)


def test_hf_vit():
    cfg = hf("ViTConfig")(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=3,
                          num_attention_heads=2, intermediate_size=32, num_labels=5)
    model = hf("ViTForImageClassification")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    layers = model.vit.encoder.layer if hasattr(model.vit, "encoder") else model.vit.layers  # transformers 4 / 5
    expect_stack(opt.plan, "vit.encoder.layer" if hasattr(model.vit, "encoder") else "vit.layers", layers)
    x = torch.randn(2, 3, 8, 8)
    step_once(model, opt, lambda: model(pixel_values=x, labels=torch.tensor([0, 3])).loss)


def test_hf_mixtral_moe():
    cfg = hf("MixtralConfig")(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, num_local_experts=3,
                              num_experts_per_tok=2, max_position_embeddings=32)
    model = hf("MixtralForCausalLM")(cfg)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    expect_stack(opt.plan, "model.layers", model.model.layers)
    assert all(not g.stack.endswith("experts") for g in opt.plan.groups)
    step_once(model, opt, lm_loss(model))


def test_timm_vit():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3,
                              num_classes=5)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    expect_stack(opt.plan, "blocks", model.blocks)
    x = torch.randn(2, 3, 32, 32)
    step_once(model, opt, lambda: model(x).pow(2).mean())


def test_torchvision_vit():
    models = pytest.importorskip("torchvision.models")
    model = models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                     mlp_dim=32, num_classes=5)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-3), model)
    stack = "encoder.layers"
    found = {g.role: g for g in opt.plan.groups}
    assert set(found) == {n for n, _ in model.encoder.layers[0].named_parameters()}
    assert all(g.stack == stack and g.depths == (0, 1, 2) for g in found.values())
    assert found["mlp.0.weight"].names[1] == "encoder.layers.encoder_layer_1.mlp.0.weight"
    step_once(model, opt, lambda: model(torch.randn(2, 3, 32, 32)).pow(2).mean())
