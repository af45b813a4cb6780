"""Blocks of an MLX model from its parameter tree (gradsmooth.backends.mlx.blocks.tree_sites):
lists of blocks are stacks, lists inside a block are part of it, untrainable members are skipped."""

import importlib.util

import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")
from mlx.utils import tree_flatten  # noqa: E402

from gradsmooth.backends.mlx import GradientSmoothing, tree_sites  # noqa: E402
from tests.backends.mlx.test_optimizer import train_fns  # noqa: E402

W = "w"  # a leaf: tree_sites reads only the tree's structure


def block(**extra):
    return {"attn": {"weight": W, "bias": W}, "mlp": [{"weight": W}, {"weight": W}], **extra}


# -- lists of blocks are stacks -------------------------------------------------------------------


def test_a_list_of_blocks_is_a_stack_and_a_list_inside_a_block_is_not_depth():
    tree = {"embed": {"weight": W}, "layers": [block() for _ in range(3)], "head": {"weight": W}}
    sites = tree_sites(tree)
    expected = {}
    for i in range(3):
        for role in ("attn.weight", "attn.bias", "mlp.0.weight", "mlp.1.weight"):
            expected[f"layers.{i}.{role}"] = ("layers", i, role)
    assert sites == expected
    assert list(sites) == [f"layers.{i}.{r}" for i in range(3) for r in ("attn.weight", "attn.bias", "mlp.0.weight",
                                                                        "mlp.1.weight")]


def test_the_stack_is_named_by_its_path_and_tuples_count_as_lists():
    tree = {"model": {"layers": ({"w": W}, {"w": W})}}
    assert tree_sites(tree) == {"model.layers.0.w": ("model.layers", 0, "w"), "model.layers.1.w": ("model.layers", 1, "w")}


def test_the_outermost_list_of_blocks_is_depth():
    tree = {"h": [{"sub": [{"w": W}, {"w": W}]} for _ in range(2)]}
    assert tree_sites(tree) == {f"h.{i}.sub.{j}.w": ("h", i, f"sub.{j}.w") for i in range(2) for j in range(2)}


def test_lists_of_stacks_are_separate_stacks():
    tree = {"stages": [[{"w": W}, {"w": W}], [{"w": W}, {"w": W}, {"w": W}]]}
    assert tree_sites(tree) == {
        "stages.0.0.w": ("stages.0", 0, "w"), "stages.0.1.w": ("stages.0", 1, "w"),
        "stages.1.0.w": ("stages.1", 0, "w"), "stages.1.1.w": ("stages.1", 1, "w"), "stages.1.2.w": ("stages.1", 2, "w"),
    }


def test_several_stacks_in_one_tree():
    tree = {"encoder": {"layers": [{"w": W}] * 2}, "decoder": {"layers": [{"w": W, "x": W}] * 3}}
    stacks = {(stack, depth) for stack, depth, _ in tree_sites(tree).values()}
    assert stacks == {("encoder.layers", 0), ("encoder.layers", 1)} | {("decoder.layers", d) for d in range(3)}


@pytest.mark.parametrize(
    "tree",
    [
        {"layers": [{"w": W}]},  # a single block
        {"layers": []},
        {"w": [W, W, W]},  # a list of leaves (arrays)
        {"layers": [{"w": W}, W, {"w": W}]},  # not all dicts
        {"layers": [{"a": W}, {"b": W}]},  # blocks that share no key
        {"embed": {"weight": W}},
        {},
    ],
    ids=["one-block", "empty", "leaves", "mixed", "no-shared-key", "no-list", "empty-tree"],
)
def test_what_is_not_a_list_of_two_or_more_blocks_is_not_a_stack(tree):
    assert tree_sites(tree) == {}


def test_blocks_may_hold_roles_others_do_not():
    tree = {"layers": [block(), block(), block(adapter={"weight": W}), block()]}
    sites = tree_sites(tree)
    assert sites["layers.2.adapter.weight"] == ("layers", 2, "adapter.weight")
    assert not any("adapter" in name for name in sites if not name.startswith("layers.2."))
    assert len(sites) == 4 * 4 + 1


# -- untrainable members --------------------------------------------------------------------------


def test_blocks_with_nothing_trainable_are_skipped_but_keep_the_depth_of_the_others():
    tree = {"layers": [{}, {}, {"w": W, "lora_a": W}, {"w": W, "lora_a": W}]}
    assert tree_sites(tree) == {
        "layers.2.w": ("layers", 2, "w"), "layers.2.lora_a": ("layers", 2, "lora_a"),
        "layers.3.w": ("layers", 3, "w"), "layers.3.lora_a": ("layers", 3, "lora_a"),
    }


def test_frozen_blocks_as_mlx_lists_them_hold_no_site():
    frozen = {"attn": {}, "mlp": [{}, {}]}  # trainable_parameters() of a frozen block
    tree = {"layers": [frozen, frozen, {"attn": {"weight": W}, "mlp": [{}, {}]}, {"attn": {"weight": W}, "mlp": [{}, {}]}]}
    assert tree_sites(tree) == {"layers.2.attn.weight": ("layers", 2, "attn.weight"),
                                "layers.3.attn.weight": ("layers", 3, "attn.weight")}


def test_a_list_with_one_trainable_block_is_not_a_stack():
    assert tree_sites({"layers": [{}, {}, {"w": W}]}) == {}


def test_the_sites_of_a_model_and_of_its_trainable_parameters(tiny_net):
    model = tiny_net()  # six blocks
    sites = tree_sites(model.parameters())
    names = {k for k, _ in tree_flatten(model.parameters())}
    assert set(sites) == {k for k in names if k.startswith("blocks.")}
    assert {depth for _, depth, _ in sites.values()} == set(range(6))
    assert sites["blocks.3.mlp.1.weight"] == ("blocks", 3, "mlp.1.weight")
    model.freeze()
    for b in model.blocks[2:]:
        b.attn.unfreeze(keys=["weight"])
    assert tree_sites(model.trainable_parameters()) == {
        f"blocks.{i}.attn.weight": ("blocks", i, "attn.weight") for i in range(2, 6)
    }


# -- moved from test_optimizer.py and test_models.py: detection through the optimizer --------------


def test_frozen_parameters_and_lora_in_some_layers(tiny_net):
    model = tiny_net()
    model.freeze()
    for block in model.blocks[2:]:
        block.attn.unfreeze(keys=["weight"])
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2))
    frozen = {k: v for k, v in tree_flatten(model.parameters()) if "blocks.0" in k}
    step = train_fns(model, opt)
    step(mx.ones((2, 5)))
    (group,) = opt.plan.groups
    assert group.names == tuple(f"blocks.{i}.attn.weight" for i in range(2, 6))
    for k, v in tree_flatten(model.parameters()):
        if k in frozen:
            assert mx.array_equal(v, frozen[k]).item()


@pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="needs mlx-lm")
def test_lora_in_the_last_layers_only():
    from mlx_lm.models import llama as llama_module
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = llama_module.Model(llama_module.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=5,
                                                      intermediate_size=32, num_attention_heads=2, rms_norm_eps=1e-5,
                                                      vocab_size=64, num_key_value_heads=1))
    model.freeze()
    linear_to_lora_layers(model, 3, {"rank": 4, "scale": 10.0, "dropout": 0.0})
    frozen = dict(tree_flatten(model.parameters()))
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2))

    def loss_fn(model, ids):
        return nn.losses.cross_entropy(model(ids[:, :-1]), ids[:, 1:]).mean()

    ids = mx.random.randint(0, 64, (2, 9), key=mx.random.key(0))
    for _ in range(2):
        _, grads = nn.value_and_grad(model, loss_fn)(model, ids)
        opt.update(model, grads)
    roles = {g.role for g in opt.plan.groups}
    assert "self_attn.q_proj.lora_a" in roles and "mlp.up_proj.lora_b" in roles and len(roles) == 14
    assert all(g.depths == (2, 3, 4) and g.stack == "model.layers" for g in opt.plan.groups)
    for k, v in tree_flatten(model.parameters()):
        if "lora" not in k:
            assert mx.array_equal(v, frozen[k]).item(), k
