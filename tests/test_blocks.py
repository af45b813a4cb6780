"""find_blocks: depth detection from names, grouping, overrides, and the printed plan."""

import random
import re

import numpy as np
import pytest

from gradsmooth import BlockGroup, BlockPlan, find_blocks


def groups_by_role(plan):
    return {(g.stack, g.role): g for g in plan.groups}


def llama(n=4):
    shapes = {"model.embed_tokens.weight": (100, 8), "model.norm.weight": (8,), "lm_head.weight": (100, 8)}
    for i in range(n):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": (8, 8),
            f"{p}.self_attn.k_proj.weight": (4, 8),
            f"{p}.mlp.up_proj.weight": (16, 8),
            f"{p}.input_layernorm.weight": (8,),
        }
    return shapes


def test_llama_layers():
    plan = find_blocks(llama())
    g = groups_by_role(plan)
    assert set(g) == {
        ("model.layers", r)
        for r in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.up_proj.weight", "input_layernorm.weight")
    }
    up = g[("model.layers", "mlp.up_proj.weight")]
    assert up.names == tuple(f"model.layers.{i}.mlp.up_proj.weight" for i in range(4))
    assert up.depths == (0, 1, 2, 3) and up.shape == (16, 8) and up.size == 128
    assert plan.ungrouped == ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight")


@pytest.mark.parametrize(
    "template, stack, role",
    [
        ("transformer.h.{}.attn.c_attn.weight", "transformer.h", "attn.c_attn.weight"),
        ("encoder.layer.{}.output.dense.bias", "encoder.layer", "output.dense.bias"),
        ("encoder.block.{}.layer.1.DenseReluDense.wi.weight", "encoder.block", "layer.1.DenseReluDense.wi.weight"),
        ("blocks.{}.attn.qkv.weight", "blocks", "attn.qkv.weight"),
        ("encoder.layers.encoder_layer_{}.mlp.0.weight", "encoder.layers.encoder_layer_", "mlp.0.weight"),
        ("{}.weight", "", "weight"),
    ],
)
def test_name_patterns(template, stack, role):
    depths = [0, 1, 2, 3, 10, 11]
    plan = find_blocks({template.format(i): (3, 2) for i in depths})
    (group,) = plan.groups
    assert (group.stack, group.role) == (stack, role)
    assert group.depths == tuple(depths)  # numeric order, not string order (10 after 3)
    assert group.names == tuple(template.format(i) for i in depths)
    assert plan.ungrouped == ()


def test_t5_sub_layers_are_inside_the_block_and_encoder_decoder_are_separate():
    shapes = {}
    for stack in ("encoder", "decoder"):
        for i in range(3):
            shapes[f"{stack}.block.{i}.layer.0.SelfAttention.q.weight"] = (4, 4)
            shapes[f"{stack}.block.{i}.layer.1.DenseReluDense.wi.weight"] = (8, 4)
        shapes[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, 2)
    plan = find_blocks(shapes)
    assert {(g.stack, g.role) for g in plan.groups} == {
        (s, r)
        for s in ("decoder.block", "encoder.block")
        for r in ("layer.0.SelfAttention.q.weight", "layer.1.DenseReluDense.wi.weight")
    }
    assert plan.stacks == ("decoder.block", "encoder.block")
    assert plan.ungrouped == tuple(
        sorted(f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight" for s in ("encoder", "decoder"))
    )


def test_experts_are_not_depth():
    shapes = {f"model.layers.{i}.mlp.experts.{e}.w1.weight": (6, 4) for i in range(3) for e in range(4)}
    shapes |= {f"model.layers.{i}.mlp.gate.weight": (4, 4) for i in range(3)}
    plan = find_blocks(shapes)
    g = groups_by_role(plan)
    assert len(plan.groups) == 5
    for e in range(4):
        grp = g[("model.layers", f"mlp.experts.{e}.w1.weight")]
        assert grp.depths == (0, 1, 2)
    assert g[("model.layers", "mlp.gate.weight")].depths == (0, 1, 2)


def test_an_inner_list_is_depth_when_the_outer_index_never_varies():
    shapes = {f"encoder.0.layers.{i}.w": (2,) for i in range(5)}
    (group,) = find_blocks(shapes).groups
    assert group.stack == "encoder.0.layers" and group.depths == (0, 1, 2, 3, 4)


def test_mixed_shapes_and_missing_roles_split_into_consistent_groups():
    shapes = {f"h.{i}.attn.weight": (8, 8) for i in range(6)}
    shapes |= {f"h.{i}.mlp.weight": (16, 8) if i < 4 else (32, 8) for i in range(6)}
    shapes |= {"h.2.adapter.weight": (2, 2)}  # a role in one block only
    shapes |= {f"h.{i}.gate.weight": (4,) for i in (1, 3, 4)}  # a role in some blocks
    shapes |= {"h.5.odd.weight": (3,), "h.4.odd.weight": (4,)}  # one each of two shapes
    plan = find_blocks(shapes)
    found = {(g.role, g.shape): g.depths for g in plan.groups}
    assert found == {
        ("attn.weight", (8, 8)): (0, 1, 2, 3, 4, 5),
        ("mlp.weight", (16, 8)): (0, 1, 2, 3),
        ("mlp.weight", (32, 8)): (4, 5),
        ("gate.weight", (4,)): (1, 3, 4),
    }
    assert plan.ungrouped == ("h.2.adapter.weight", "h.4.odd.weight", "h.5.odd.weight")


def test_dtype_splits_groups_when_arrays_are_given():
    shapes = {f"h.{i}.w": np.zeros(3, dtype=np.float32 if i < 3 else np.float64) for i in range(5)}
    plan = find_blocks(shapes)
    assert {(g.dtype, g.depths) for g in plan.groups} == {(np.dtype("float32"), (0, 1, 2)), (np.dtype("float64"), (3, 4))}


def test_plan_does_not_depend_on_mapping_order():
    shapes = llama(6) | {f"model.layers.{i}.mlp.experts.{e}.w": (2, 2) for i in range(6) for e in range(3)}
    expected = find_blocks(shapes)
    items = list(shapes.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        assert find_blocks(dict(items)) == expected


def test_stacks_override_with_prefixes_and_regex():
    shapes = llama(3) | {f"vision.blocks.{i}.w": (2,) for i in range(3)}
    plan = find_blocks(shapes, stacks="vision.blocks")
    assert [g.stack for g in plan.groups] == ["vision.blocks"]
    assert "model.layers.0.mlp.up_proj.weight" in plan.ungrouped
    plan = find_blocks(shapes, stacks=["model.layers.", "vision.blocks"])
    assert plan.stacks == ("model.layers", "vision.blocks")
    plan = find_blocks(shapes, stacks=re.compile(r"model\.layers\.(?P<depth>\d+)\."))
    assert plan.stacks == ("model.layers",) and len(plan.groups) == 4
    assert groups_by_role(plan)[("model.layers", "mlp.up_proj.weight")].depths == (0, 1, 2)


@pytest.mark.parametrize(
    "exclude",
    [
        ["model.layers.1.mlp.up_proj.weight", "model.layers.2.mlp.up_proj.weight"],
        re.compile(r"layers\.[12]\.mlp"),
        lambda name: ".mlp." in name and name.split(".")[2] in "12",
    ],
)
def test_exclude_names_regex_predicate(exclude):
    plan = find_blocks(llama(4), exclude=exclude)
    up = groups_by_role(plan)[("model.layers", "mlp.up_proj.weight")]
    assert up.depths == (0, 3)
    assert "model.layers.1.mlp.up_proj.weight" in plan.ungrouped


def test_exclude_prefix_takes_a_whole_block_out():
    plan = find_blocks(llama(4), exclude="model.layers.0")
    assert all(g.depths == (1, 2, 3) for g in plan.groups)
    assert "model.layers.0.self_attn.q_proj.weight" in plan.ungrouped
    assert find_blocks(llama(4), exclude="model.layers.1").groups[0].depths == (0, 2, 3)
    # a prefix matches whole components only: "model.layers.1" is not "model.layers.10"
    plan = find_blocks({f"model.layers.{i}.w": (2,) for i in range(12)}, exclude="model.layers.1")
    assert plan.groups[0].depths == tuple(i for i in range(12) if i != 1)


def test_str_is_a_readable_table():
    text = str(find_blocks(llama(4)))
    assert text.startswith("BlockPlan: 4 groups in 1 stack, 16 parameters smoothed")
    assert "mlp.up_proj.weight" in text and "0-3" in text and "(16, 8)" in text
    assert "not smoothed: lm_head.weight, model.embed_tokens.weight, model.norm.weight" in text


def test_restrict_drops_absent_members():
    plan = find_blocks({f"h.{i}.w": (2,) for i in range(5)} | {"h.0.b": (1,), "h.1.b": (1,)})
    sub = plan.restrict([f"h.{i}.w" for i in (0, 2, 3)] + ["h.0.b"])
    assert [g.depths for g in sub.groups] == [(0, 2, 3)]
    assert sub.ungrouped == ("h.0.b",)
    assert plan.restrict(plan.names + plan.ungrouped) == plan


def test_group_and_plan_types():
    plan = find_blocks(llama(2))
    assert isinstance(plan, BlockPlan) and all(isinstance(g, BlockGroup) for g in plan.groups)
    assert set(plan.names) | set(plan.ungrouped) == set(llama(2))


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([("a", (2,))],), TypeError, "shapes should be a mapping name -> shape but is: list"),
        (({1: (2,)},), TypeError, "keyed by parameter names .* but has key: 1"),
        (({"h.0.w": "big"},), TypeError, r"shapes\['h.0.w'\] should be a shape"),
        (({"h.0.w": (2, -1)},), ValueError, r"shapes\['h.0.w'\] should have non-negative sizes but is: \(2, -1\)"),
        (({"h.0.w": (2,)}, 3), TypeError, "stacks should be a prefix, a list of prefixes or a compiled regex but holds: 3"),
        (({"h.0.w": (2,)}, re.compile("h")), ValueError, "stacks regex should capture the depth index"),
        (({"h.x.w": (2,)}, re.compile(r"h\.(\w)")), ValueError, "captured 'x' as the depth of 'h.x.w'"),
        (({"h.0.w": (2,)}, None, 3), TypeError, "exclude should be names, prefixes, a regex, a predicate"),
    ],
)
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        find_blocks(*args)


def test_sites_given_directly():
    shapes = {"a.x.w": (2,), "a.y.w": (2,), "a.z.w": (2,), "emb": (3,)}
    sites = {"a.x.w": ("a", 0, "w"), "a.y.w": ("a", 1, "w"), "a.z.w": ("a", 2, "w")}
    plan = find_blocks(shapes, exclude="a.z", sites=sites)
    assert [(g.stack, g.role, g.names) for g in plan.groups] == [("a", "w", ("a.x.w", "a.y.w"))]
    assert plan.ungrouped == ("a.z.w", "emb")
    with pytest.raises(ValueError, match="pass stacks or sites, not both"):
        find_blocks(shapes, stacks="a", sites=sites)


@pytest.mark.parametrize(
    "shapes, names",
    [
        ({"layers.0.w": (2,), "layers.1.w": (2,), "layers.01.w": (2,)}, ("layers.01.w", "layers.1.w")),
        ({"enc.layer_3.w": (2,), "enc.layer_03.w": (2,), "enc.layer_4.w": (2,)}, ("enc.layer_03.w", "enc.layer_3.w")),
    ],
)
def test_two_names_at_one_depth_are_refused(shapes, names):
    with pytest.raises(ValueError, match=rf"parameters '{names[0]}' and '{names[1]}' both sit at depth \d+ of stack"):
        find_blocks(shapes)


def test_two_names_at_one_depth_from_a_regex_are_refused():
    shapes = {f"h.{i}.{part}.w": (2,) for i in range(3) for part in ("attn", "mlp")}
    with pytest.raises(ValueError, match=r"'h.0.attn.w' and 'h.0.mlp.w' both sit at depth 0 of stack 'h' \(role 'w'\)"):
        find_blocks(shapes, stacks=re.compile(r"h\.(\d+)\.(?:attn|mlp)"))


@pytest.mark.parametrize(
    "stacks, match",
    [
        ([r"layers\.(\d+)"], r"stacks entry r'layers\\\.\(\\d\+\)' matches no parameter name: .* stacks=re\.compile\(r'layers"),
        (r"model\.layers\.\d+", r"a string is a prefix, not a regex; to use a regex pass stacks=re\.compile"),
        (["model.layers", "vision.blocks"], r"stacks entry 'vision.blocks' matches no parameter name: a prefix should be"),
        ("model.layer", r"stacks entry 'model.layer' matches no parameter name.*the names look like: "),
        ([], r"stacks should hold at least one prefix but is: \[\]"),
        (re.compile(r"decoder\.(\d+)"), r"stacks regex 'decoder\\\\.\(\\\\d\+\)' matches no parameter name"),
    ],
    ids=["regex-in-list", "regex-str", "one-of-two", "typo", "empty", "compiled"],
)
def test_stacks_entry_that_matches_nothing_is_refused(stacks, match):
    with pytest.raises(ValueError, match=match):
        find_blocks(llama(3), stacks=stacks)


def test_stacks_entry_whose_blocks_are_all_excluded_is_accepted():
    shapes = llama(3) | {f"vision.blocks.{i}.w": (2,) for i in range(3)}
    plan = find_blocks(shapes, stacks=["model.layers", "vision.blocks"], exclude="vision")
    assert plan.stacks == ("model.layers",)


# -- the plan and its operator: short groups -----------------------------------------------------


def lora(n_short=2, n_long=6):
    shapes = {f"base.layers.{i}.lora_A.weight": (4, 8) for i in range(n_short)}
    return shapes | {f"model.layers.{i}.w": (3,) for i in range(n_long)}


def marked(text):
    return [line.split()[0] for line in text.splitlines() if "every member gets the same update" in line]


def test_with_operator_marks_groups_whose_members_all_get_the_same_update():
    from gradsmooth import MatrixOperator, WindowSmoothing

    plan = find_blocks(lora())
    text = str(plan.with_operator(WindowSmoothing(3)))
    assert marked(text) == ["base.layers"]
    assert "(every member gets the same update: window reaches all 2 members)" in text
    assert str(plan) == text.replace("  (every member gets the same update: window reaches all 2 members)", "")
    assert marked(str(find_blocks(lora(3, 6)).with_operator(WindowSmoothing(5)))) == ["base.layers"]
    # n > r + 1, a non-uniform kernel, a padding boundary, or alpha < 1: members differ
    for op in (WindowSmoothing(3, "triangular"), WindowSmoothing(3, boundary="nearest"), WindowSmoothing(3, alpha=0.5)):
        assert marked(str(plan.with_operator(op))) == []
    assert marked(str(find_blocks(lora(3, 6)).with_operator(WindowSmoothing(3)))) == []
    # the generic criterion: all rows of the band equal
    text = str(plan.with_operator(MatrixOperator(lambda n: np.full((n, n), 1 / n))))
    assert marked(text) == ["base.layers", "model.layers"] and "every row of the operator is the same" in text


def test_with_operator_keeps_the_plan_and_never_breaks_printing():
    from gradsmooth import MatrixOperator, WindowSmoothing

    plan = find_blocks(lora())
    op = WindowSmoothing(3)
    with_op = plan.with_operator(op)
    assert with_op == plan and with_op.groups == plan.groups and with_op.ungrouped == plan.ungrouped
    assert with_op.operator is op and plan.operator is None
    assert with_op.restrict(plan.names).operator is op
    # an operator that cannot serve a group marks nothing (smoothing raises, not printing)
    assert marked(str(plan.with_operator(MatrixOperator(np.full((6, 6), 1 / 6))))) == ["model.layers"]
    with pytest.raises(TypeError, match="operator should be a gradsmooth DepthOperator .* but is: ndarray"):
        plan.with_operator(np.eye(2))


def test_with_dtypes_replaces_each_group_dtype_and_checks_its_length():
    plan = find_blocks(lora())
    dtypes = [f"dtype{i}" for i in range(len(plan.groups))]
    assert [g.dtype for g in plan.with_dtypes(dtypes).groups] == dtypes
    assert [g._replace(dtype=None) for g in plan.with_dtypes(dtypes).groups] == [g._replace(dtype=None) for g in plan.groups]
    with pytest.raises(ValueError, match=f"dtypes should hold one dtype per group \\({len(plan.groups)}\\) but holds 1"):
        plan.with_dtypes(["float32"])
