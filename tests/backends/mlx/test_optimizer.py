"""The MLX adapter: against the NumPy oracle, against its base, under mx.compile, saved and resumed."""

import copy
from functools import partial

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from gradsmooth import WindowSmoothing  # noqa: E402
from gradsmooth.backends.mlx import GradientSmoothing  # noqa: E402
from gradsmooth.reference import Partition, Smoothed  # noqa: E402
from gradsmooth.reference import mlx_optimizers as ref  # noqa: E402

DTYPES = {"float32": (mx.float32, np.float32, 1e-5), "float64": (mx.float64, np.float64, 1e-12)}


def as_tree(flat, dtype):
    return tree_unflatten([(k, mx.array(v, dtype=dtype)) for k, v in flat.items()])


def as_numpy(tree):
    return {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(tree)}


def drive(opt, init, reference, steps, dtype, np_dtype, seed=0):
    """Same gradients to the MLX adapter and the reference; yield both parameter sets per step."""
    init = {k: v.astype(np_dtype).astype(np.float64) for k, v in init.items()}  # both start from the same bits
    params, expected = as_tree(init, dtype), dict(init)
    rng = np.random.default_rng(seed)
    for t in range(steps):
        grads = {k: rng.standard_normal(v.shape).astype(np_dtype).astype(np.float64) for k, v in init.items()}
        params = opt.apply_gradients(as_tree(grads, dtype), params)
        mx.eval(params)
        expected = reference.step(expected, grads)
        yield t, as_numpy(params), expected


def compare(got, expected, rtol, t, atol=None):
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=rtol, atol=rtol if atol is None else atol,
                                   err_msg=f"{k} at step {t}")


BASES = {
    "sgd-momentum": (lambda: optim.SGD(learning_rate=0.05, momentum=0.9, weight_decay=0.01),
                     lambda: ref.SGD(0.05, momentum=0.9, weight_decay=0.01)),
    "adamw": (lambda: optim.AdamW(learning_rate=0.01, weight_decay=0.1),
              lambda: ref.AdamW(0.01, weight_decay=0.1)),
}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("boundary", ["renormalize", "nearest", "reflect"])
@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_matches_reference(tiny_arrays, base, mode, boundary, dtype):
    mx_dtype, np_dtype, rtol = DTYPES[dtype]
    make, make_ref = BASES[base]
    opt = GradientSmoothing(make(), mode=mode, boundary=boundary)
    init = tiny_arrays()
    opt.init(as_tree(init, mx_dtype))
    reference = Smoothed(make_ref(), [g.names for g in opt.plan.groups], mode=mode, boundary=boundary)
    for t, got, expected in drive(opt, init, reference, 50, mx_dtype, np_dtype):
        compare(got, expected, rtol, t)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_muon_plus_adamw_matches_reference(tiny_arrays, mode):
    # MLX runs Newton-Schulz in the parameter dtype (float32 here), the reference in float64.
    # The quintic is not converged, so float32 rounding grows to ~1e-5 of the update's
    # largest entry per step (bfloat16 in torch: ~5e-2); the tolerance allows 3e-5 * lr per step.
    is_muon = lambda name, g: g.ndim == 2  # noqa: E731
    lr = 0.01
    opt = GradientSmoothing(optim.MultiOptimizer([optim.Muon(learning_rate=lr), optim.AdamW(learning_rate=lr)],
                                                 [is_muon]), mode=mode)
    init = tiny_arrays()
    opt.init(as_tree(init, mx.float32))
    owner = lambda name: "muon" if init[name].ndim == 2 else "adamw"  # noqa: E731
    reference = Smoothed(Partition({"muon": ref.Muon(lr), "adamw": ref.AdamW(lr)}, owner),
                         [g.names for g in opt.plan.groups], mode=mode)
    for t, got, expected in drive(opt, init, reference, 50, mx.float32, np.float32):
        for k in expected:
            atol = 3e-5 * 2 * lr * (t + 1) if owner(k) == "muon" else 1e-5
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=atol, err_msg=f"{k} at step {t}")


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_alpha_schedule_matches_reference(tiny_arrays, mode):
    schedule = optim.linear_schedule(0.0, 1.0, 10)
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01), window=5, kernel="triangular", boundary="mirror",
                            alpha=schedule, mode=mode)
    init = tiny_arrays()
    opt.init(as_tree(init, mx.float64))
    reference = Smoothed(ref.AdamW(0.01), [g.names for g in opt.plan.groups], mode=mode, window=5,
                         kernel="triangular", boundary="mirror",
                         alpha=lambda t: float(schedule(mx.array(t))))  # the float32 values MLX's schedule gives
    for t, got, expected in drive(opt, init, reference, 15, mx.float64, np.float64):
        compare(got, expected, 1e-12, t)


# -- the base, exactly ------------------------------------------------------------------------------


def muon_adamw():
    return optim.MultiOptimizer([optim.Muon(learning_rate=0.02), optim.AdamW(learning_rate=0.01)],
                                [lambda name, g: g.ndim == 2])


IDENTITY_BASES = {
    "sgd": lambda: optim.SGD(learning_rate=0.05, momentum=0.9, nesterov=True),
    "adam": lambda: optim.Adam(learning_rate=0.01),
    "adamw": lambda: optim.AdamW(learning_rate=0.01, weight_decay=0.1),
    "muon": lambda: optim.Muon(learning_rate=0.02),
    "muon+adamw": muon_adamw,
}


@pytest.mark.parametrize("identity", [dict(alpha=0.0), dict(window=1)], ids=["alpha0", "window1"])
@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("base", sorted(IDENTITY_BASES))
def test_identity_settings_are_the_base_exactly(tiny_arrays, base, mode, identity):
    plain, wrapped = IDENTITY_BASES[base](), GradientSmoothing(IDENTITY_BASES[base](), mode=mode, **identity)
    p_plain = p_wrapped = as_tree(tiny_arrays(), mx.float32)
    rng = np.random.default_rng(0)
    for _ in range(5):
        grads = as_tree({k: rng.standard_normal(v.shape) for k, v in tiny_arrays().items()}, mx.float32)
        p_plain = plain.apply_gradients(grads, p_plain)
        p_wrapped = wrapped.apply_gradients(grads, p_wrapped)
    for (k, a), (_, b) in zip(tree_flatten(p_plain), tree_flatten(p_wrapped)):
        assert mx.array_equal(a, b).item(), k


def test_decoupled_decay_is_never_mixed(tiny_arrays):
    # the same gradient in every block: renormalize leaves delta as it is, so the smoothed step
    # equals the base step only if each layer's decay acts on its own weights
    init = tiny_arrays()
    rng = np.random.default_rng(3)
    shared = {}
    grads = {}
    for k, v in init.items():
        role = k.split(".", 2)[2] if k.startswith("blocks.") and not k.endswith("adapter.weight") else k
        shared.setdefault(role, rng.standard_normal(v.shape))
        grads[k] = shared[role]
    grads, params = as_tree(grads, mx.float64), as_tree(init, mx.float64)
    plain = optim.AdamW(learning_rate=0.1, weight_decay=0.5).apply_gradients(grads, params)
    smoothed = GradientSmoothing(optim.AdamW(learning_rate=0.1, weight_decay=0.5), window=5).apply_gradients(grads, params)
    for (k, a), (_, b) in zip(tree_flatten(plain), tree_flatten(smoothed)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-13, err_msg=k)


# -- mx.compile, schedules, save and resume ----------------------------------------------------------


def train_fns(model, opt):
    loss_fn = lambda m, x: (m(x) ** 2).mean()  # noqa: E731
    value_and_grad = nn.value_and_grad(model, loss_fn)

    def step(x):
        loss, grads = value_and_grad(model, x)
        opt.update(model, grads)
        return loss

    return step


@pytest.mark.parametrize("init_first", [True, False])
@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_compiled_step_equals_eager(tiny_net, mode, init_first):
    models = [tiny_net(), tiny_net()]
    opts = [GradientSmoothing(optim.AdamW(learning_rate=optim.cosine_decay(1e-2, 20)), mode=mode,
                              alpha=optim.linear_schedule(0.2, 1.0, 5)) for _ in models]
    if init_first:
        for m, o in zip(models, opts):
            o.init(m.trainable_parameters())
    eager = train_fns(models[0], opts[0])
    state = [models[1].state, opts[1].state, mx.random.state]
    compiled = partial(mx.compile, inputs=state, outputs=state)(train_fns(models[1], opts[1]))
    xs = mx.random.normal((8, 16, 5), key=mx.random.key(0))
    for x in xs:
        np.testing.assert_allclose(np.array(compiled(x)), np.array(eager(x)), rtol=1e-5)
    for (k, a), (_, b) in zip(tree_flatten(models[0].parameters()), tree_flatten(models[1].parameters())):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6, err_msg=k)
    assert opts[1].state["step"].item() == 8
    assert opts[1].learning_rate.item() == pytest.approx(float(optim.cosine_decay(1e-2, 20)(mx.array(7))), rel=1e-6)


def test_state_is_arrays_only_and_learning_rate_is_the_base(tiny_net):
    model = tiny_net()
    base = optim.AdamW(learning_rate=1e-3)
    opt = GradientSmoothing(base)
    train_fns(model, opt)(mx.ones((2, 5)))
    assert all(isinstance(v, mx.array) for _, v in tree_flatten(opt.state))
    assert opt.state["base"] is base.state
    opt.learning_rate = 0.5
    assert base.learning_rate.item() == 0.5


def test_save_and_resume_continue_the_same_trajectory(tiny_net, tmp_path):
    def make():
        return GradientSmoothing(optim.MultiOptimizer([optim.Muon(learning_rate=0.02), optim.AdamW(learning_rate=1e-2)],
                                                      [lambda name, g: g.ndim == 2]), window=5)

    model, opt = tiny_net(), make()
    step = train_fns(model, opt)
    xs = mx.random.normal((6, 4, 5), key=mx.random.key(1))
    for x in xs[:3]:
        step(x)
    mx.save_safetensors(str(tmp_path / "opt.safetensors"), dict(tree_flatten(opt.state)))
    model.save_weights(str(tmp_path / "model.safetensors"))
    for x in xs[3:]:
        step(x)

    model2, opt2 = tiny_net(seed=9), make()
    model2.load_weights(str(tmp_path / "model.safetensors"))
    opt2.state = tree_unflatten(list(mx.load(str(tmp_path / "opt.safetensors")).items()))
    step2 = train_fns(model2, opt2)
    for x in xs[3:]:
        step2(x)
    for (k, a), (_, b) in zip(tree_flatten(model.parameters()), tree_flatten(model2.parameters())):
        assert mx.array_equal(a, b).item(), k


def test_works_after_averaging_gradients_across_processes(tiny_net):
    model = tiny_net()
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2))
    loss, grads = nn.value_and_grad(model, lambda m, x: (m(x) ** 2).mean())(model, mx.ones((2, 5)))
    grads = nn.average_gradients(grads)  # one process here: the mean over one
    before = tree_flatten(model.parameters())
    opt.update(model, grads)
    mx.eval(model.parameters())
    assert any(not mx.array_equal(a, b).item() for (_, a), (_, b) in zip(before, tree_flatten(model.parameters())))


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


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_refused_before_anything_changes(tiny_arrays):
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2), check_finite=True)
    params = as_tree(tiny_arrays(), mx.float32)
    grads = as_tree(tiny_arrays(1), mx.float32)
    params = opt.apply_gradients(grads, params)
    state = {k: np.array(v) for k, v in tree_flatten(opt.state)}

    bad = dict(tree_flatten(grads))
    bad["blocks.9.attn.weight"] = mx.zeros((8, 8))
    with pytest.raises(ValueError, match="gradients hold 'blocks.9.attn.weight', which parameters do not"):
        opt.apply_gradients(tree_unflatten(list(bad.items())), params)
    bad = dict(tree_flatten(grads))
    bad["blocks.1.attn.weight"] = mx.zeros((4, 8))
    with pytest.raises(ValueError, match=r"gradient of 'blocks.1.attn.weight' has shape \(4, 8\)"):
        opt.apply_gradients(tree_unflatten(list(bad.items())), params)
    bad = dict(tree_flatten(grads))
    bad["blocks.3.mlp.1.weight"] = mx.full((8, 16), float("nan"))
    with pytest.raises(FloatingPointError, match="gradient of 'blocks.3.mlp.1.weight' is not finite at step 1"):
        opt.apply_gradients(tree_unflatten(list(bad.items())), params)
    for k, v in tree_flatten(opt.state):
        np.testing.assert_array_equal(np.array(v), state[k])

    with pytest.raises(ValueError, match="mode should be one of .* but is: 'grads'"):
        GradientSmoothing(optim.SGD(learning_rate=0.1), mode="grads")
    with pytest.raises(TypeError, match="operator should be a gradsmooth DepthOperator"):
        GradientSmoothing(optim.SGD(learning_rate=0.1), operator="window")
    with pytest.raises(ValueError, match="operator replaces the window arguments"):
        GradientSmoothing(optim.SGD(learning_rate=0.1), operator=WindowSmoothing(5), boundary="zero")
    with pytest.raises(TypeError, match="optimizer should be an mlx.optimizers.Optimizer"):
        GradientSmoothing(copy.copy)
    with pytest.raises(ValueError, match="state should be a dict with keys 'step' and 'base'"):
        opt.state = {"step": mx.array(0)}
