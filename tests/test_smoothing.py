"""smooth / smooth_stack: the core's execution against the reference oracle, on every namespace."""

import array_api_compat
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsmooth import BOUNDARIES, MatrixOperator, WindowSmoothing, array_namespace, find_blocks, smooth, smooth_stack
from gradsmooth.reference import window_smooth

KERNELS = ["uniform", "triangular", "gaussian", (0.25, 0.5, 1.0, 0.5, 0.25)]


def to_numpy(x):
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()  # from any device
    return np.from_dlpack(x) if not isinstance(x, np.ndarray) else x


def stack_updates(stack, xp, prefix="model.layers", device=None):
    """A mapping of the stack's members as named updates of namespace xp (on ``device``), plus its plan."""
    updates = {f"{prefix}.{i}.mlp.weight": xp.asarray(stack[i], device=device) for i in range(stack.shape[0])}
    return updates, find_blocks({k: tuple(v.shape) for k, v in updates.items()})


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 40),
    radius=st.integers(0, 5),
    kernel=st.sampled_from(KERNELS),
    boundary=st.sampled_from(BOUNDARIES),
    alpha=st.floats(0.0, 1.0),
    normalize=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_smooth_matches_reference_float64(n, radius, kernel, boundary, alpha, normalize, seed):
    window = len(kernel) if isinstance(kernel, tuple) else 2 * radius + 1
    stack = np.random.default_rng(seed).standard_normal((n, 3, 4))
    op = WindowSmoothing(window, kernel, boundary, alpha, normalize=normalize)
    expected = window_smooth(stack, window, kernel, boundary, alpha, normalize=normalize)
    updates, plan = stack_updates(stack, np)
    out = smooth(updates, plan, op)
    got = np.stack([out[f"model.layers.{i}.mlp.weight"] for i in range(n)])
    # a group of one member is never mixed: smooth() leaves it, the operator itself still applies
    np.testing.assert_allclose(got, stack if n == 1 else expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(smooth_stack(stack, op), expected, rtol=1e-12, atol=1e-14)


RTOL = {"float64": 1e-12, "float32": 2e-6}


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_every_namespace_device_and_dtype_matches_reference_and_is_kept(namespace_device_dtype, boundary, kernel):
    xp, device, dtype = namespace_device_dtype
    rtol = RTOL[dtype]
    n = 9
    window = 5
    stack = np.random.default_rng(3).standard_normal((n, 6, 5))
    op = WindowSmoothing(window, kernel, boundary, alpha=0.8)
    expected = window_smooth(stack.astype(dtype), window, kernel, boundary, 0.8)
    updates, plan = stack_updates(stack.astype(dtype), xp, device=device)
    updates["model.embed.weight"] = xp.asarray(np.ones((7, 2), dtype=dtype), device=device)
    out = smooth(updates, plan, op)
    assert out["model.embed.weight"] is updates["model.embed.weight"]
    for i in range(n):
        y = out[f"model.layers.{i}.mlp.weight"]
        assert array_namespace(y) is array_namespace(updates[f"model.layers.{i}.mlp.weight"])
        assert y.dtype == getattr(xp, dtype)
        assert array_api_compat.device(y) == device
        np.testing.assert_allclose(to_numpy(y), expected[i], rtol=rtol, atol=rtol)
    stacked = smooth_stack(xp.asarray(stack.astype(dtype), device=device), op)
    assert stacked.dtype == getattr(xp, dtype) and array_namespace(stacked) is array_namespace(updates["model.embed.weight"])
    assert array_api_compat.device(stacked) == device
    np.testing.assert_allclose(to_numpy(stacked), expected, rtol=rtol, atol=rtol)


def test_inputs_are_never_mutated(xp):
    stack = np.random.default_rng(0).standard_normal((6, 4))
    updates, plan = stack_updates(stack, xp)
    before = {k: to_numpy(v).copy() for k, v in updates.items()}
    keys = list(updates)
    out = smooth(updates, plan, WindowSmoothing(5, boundary="mirror"))
    assert out is not updates and list(updates) == keys
    for k, v in updates.items():
        np.testing.assert_array_equal(to_numpy(v), before[k])
        assert out[k] is not v


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 30), radius=st.integers(0, 6), kernel=st.sampled_from(KERNELS[:3]), seed=st.integers(0, 999))
def test_constant_across_depth_is_unchanged_under_renormalize(n, radius, kernel, seed):
    member = np.random.default_rng(seed).standard_normal((5, 3))
    stack = np.broadcast_to(member, (n, 5, 3)).copy()
    out = smooth_stack(stack, WindowSmoothing(2 * radius + 1, kernel))
    np.testing.assert_allclose(out, stack, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("op", [WindowSmoothing(1, boundary="reflect"), WindowSmoothing(7, "gaussian", alpha=0.0)])
def test_window_one_and_alpha_zero_are_the_identity_bit_for_bit(xp, op):
    for dtype in (xp.float32, xp.float64):
        stack = xp.asarray(np.random.default_rng(0).standard_normal((8, 3)), dtype=dtype)
        updates, plan = stack_updates(np.from_dlpack(stack), xp)
        out = smooth(updates, plan, op)
        for k in updates:
            assert out[k] is updates[k]
        assert smooth_stack(stack, op) is stack


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 20),
    radius=st.integers(0, 4),
    boundary=st.sampled_from(BOUNDARIES),
    a=st.floats(-3, 3),
    b=st.floats(-3, 3),
    seed=st.integers(0, 999),
)
def test_linearity(n, radius, boundary, a, b, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, n, 4, 3))
    op = WindowSmoothing(2 * radius + 1, "triangular", boundary)
    lhs = smooth_stack(a * x + b * y, op)
    rhs = a * smooth_stack(x, op) + b * smooth_stack(y, op)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_commutes_with_permuting_elements_and_groups():
    rng = np.random.default_rng(5)
    shapes = {}
    updates = {}
    for i in range(7):
        updates[f"h.{i}.a"] = rng.standard_normal((4, 3))
        updates[f"h.{i}.b"] = rng.standard_normal(5)
        shapes[f"h.{i}.a"], shapes[f"h.{i}.b"] = (4, 3), (5,)
    op = WindowSmoothing(5, "triangular", "nearest")
    out = smooth(updates, find_blocks(shapes), op)
    perm = rng.permutation(12)
    permuted = {k: (v.reshape(-1)[perm].reshape(4, 3) if k.endswith(".a") else v) for k, v in updates.items()}
    out_p = smooth(permuted, find_blocks(shapes), op)
    for i in range(7):
        np.testing.assert_array_equal(out_p[f"h.{i}.a"], out[f"h.{i}.a"].reshape(-1)[perm].reshape(4, 3))
    reordered = dict(reversed(list(updates.items())))
    out_r = smooth(reordered, find_blocks(dict(reversed(list(shapes.items())))), op)
    for k in updates:
        np.testing.assert_array_equal(out_r[k], out[k])


def test_matrix_operator_is_applied_by_its_band():
    rng = np.random.default_rng(2)
    M = rng.uniform(-1, 1, (6, 6))
    stack = rng.standard_normal((6, 3, 2))
    out = smooth_stack(stack, MatrixOperator(M))
    np.testing.assert_allclose(out, np.einsum("lj,j...->l...", M, stack), rtol=1e-12)


def test_groups_are_smoothed_separately_and_by_member_order():
    rng = np.random.default_rng(4)
    updates = {f"enc.layers.{i}.w": rng.standard_normal(3) for i in range(4)}
    updates |= {f"dec.layers.{i}.w": rng.standard_normal(3) for i in range(5)}
    updates |= {f"enc.layers.{i}.extra": rng.standard_normal(2) for i in (0, 2, 3)}
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    out = smooth(updates, plan, WindowSmoothing(3))
    for stack, n in (("enc", 4), ("dec", 5)):
        expected = window_smooth(np.stack([updates[f"{stack}.layers.{i}.w"] for i in range(n)]))
        np.testing.assert_allclose(np.stack([out[f"{stack}.layers.{i}.w"] for i in range(n)]), expected, rtol=1e-12)
    expected = window_smooth(np.stack([updates[f"enc.layers.{i}.extra"] for i in (0, 2, 3)]))
    np.testing.assert_allclose(np.stack([out[f"enc.layers.{i}.extra"] for i in (0, 2, 3)]), expected, rtol=1e-12)


# -- bad input ---------------------------------------------------------------------------------


def make_updates(n=4):
    return {f"layers.{i}.w": np.full((2, 3), float(i)) for i in range(n)}


def test_missing_planned_name_is_refused():
    updates = make_updates()
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    del updates["layers.2.w"]
    with pytest.raises(ValueError, match="updates has no entry for planned parameter 'layers.2.w'"):
        smooth(updates, plan, WindowSmoothing())


def test_wrong_shape_is_refused_before_anything_is_computed():
    updates = make_updates()
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    updates["layers.3.w"] = np.zeros((3, 2))
    snapshot = {k: v.copy() for k, v in updates.items()}
    with pytest.raises(ValueError, match=r"updates\['layers.3.w'\] should have shape \(2, 3\) .* but has \(3, 2\)"):
        smooth(updates, plan, WindowSmoothing())
    for k in updates:
        np.testing.assert_array_equal(updates[k], snapshot[k])


def test_mixed_or_integer_dtypes_are_refused():
    updates = make_updates()
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    with pytest.raises(TypeError, match=r"updates\['layers.1.w'\] has dtype float32"):
        smooth({**updates, "layers.1.w": updates["layers.1.w"].astype(np.float32)}, plan, WindowSmoothing())
    ints = {k: v.astype(np.int64) for k, v in updates.items()}
    with pytest.raises(TypeError, match=r"updates\['layers.0.w'\] should be a floating-point array but has dtype int64"):
        smooth(ints, plan, WindowSmoothing())
    with pytest.raises(TypeError, match="updates should be a mapping"):
        smooth(list(updates.values()), plan, WindowSmoothing())


def test_a_group_of_two_array_libraries_is_refused_naming_both():
    torch = pytest.importorskip("torch")
    updates = make_updates()
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    mixed = {**updates, "layers.1.w": torch.from_numpy(updates["layers.1.w"])}  # the same dtype, float64
    with pytest.raises(TypeError, match=r"updates\['layers.1.w'\] is a torch array but its group '.*' holds numpy "
                                        r"arrays: a group must hold arrays of one array library"):
        smooth(mixed, plan, WindowSmoothing())


def test_bad_stack_is_refused():
    with pytest.raises(ValueError, match=r"stack should have shape \(n, ...\)"):
        smooth_stack(np.float64(1.0), WindowSmoothing())
    with pytest.raises(TypeError, match="stack should be a floating-point array"):
        smooth_stack(np.ones((3, 2), dtype=np.int32), WindowSmoothing())


PLAN, OP = object(), object()  # stand-ins for the right plan and operator


@pytest.mark.parametrize(
    "args, match",
    [
        ((list(make_updates().values()), PLAN, OP), "updates should be a mapping name -> array but is: list"),
        ((make_updates(), {"groups": ()}, OP), r"plan should be a gradsmooth BlockPlan \(from find_blocks\) but is: dict"),
        ((make_updates(), PLAN, np.eye(4)), "op should be a gradsmooth DepthOperator .* but is: ndarray"),
        ((make_updates(), PLAN, "uniform"), "op should be a gradsmooth DepthOperator .* but is: str"),
        (({**make_updates(), "layers.1.w": [[1.0] * 3] * 2}, PLAN, OP), r"updates\['layers.1.w'\] should be an array but is: list"),
    ],
    ids=["updates", "plan", "op-array", "op-str", "member"],
)
def test_arguments_of_the_wrong_type_name_the_argument_and_the_type(args, match):
    plan = find_blocks({k: v.shape for k, v in make_updates().items()})
    args = tuple(plan if a is PLAN else WindowSmoothing() if a is OP else a for a in args)
    with pytest.raises(TypeError, match=match):
        smooth(*args)


def test_smooth_stack_arguments_of_the_wrong_type_name_the_argument_and_the_type():
    with pytest.raises(TypeError, match="op should be a gradsmooth DepthOperator .* but is: ndarray"):
        smooth_stack(np.ones((3, 2)), np.eye(3))
    with pytest.raises(TypeError, match=r"stack should be an \(n, ...\) array .* but is: list"):
        smooth_stack([[1.0, 2.0], [3.0, 4.0]], WindowSmoothing())


def test_an_all_zero_row_of_the_operator_gives_zeros(xp):
    matrix = np.eye(3)
    matrix[1] = 0.0
    stack = xp.asarray(np.arange(12.0).reshape(3, 4))
    out = smooth_stack(stack, MatrixOperator(matrix))
    np.testing.assert_array_equal(np.asarray(out), [[0, 1, 2, 3], [0, 0, 0, 0], [8, 9, 10, 11]])


def test_an_all_zero_row_keeps_namespace_device_and_dtype(namespace_device_dtype):
    xp, device, dtype = namespace_device_dtype
    matrix = np.eye(3)
    matrix[1] = 0.0  # row 1 is made by zeros_like, not by arithmetic on a member
    stack = xp.asarray(np.arange(12.0, dtype=dtype).reshape(3, 4), device=device)
    out = smooth_stack(stack, MatrixOperator(matrix))
    assert out.dtype == getattr(xp, dtype) and array_namespace(out) is array_namespace(stack)
    assert array_api_compat.device(out) == device
    np.testing.assert_array_equal(to_numpy(out), [[0, 1, 2, 3], [0, 0, 0, 0], [8, 9, 10, 11]])
