"""The MLX adapter: against the NumPy oracle, against its base, under mx.compile, saved and resumed."""

import copy
import warnings
from functools import partial

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from gradsmooth import WindowSmoothing  # noqa: E402
from gradsmooth.backends.mlx import GradientSmoothing  # noqa: E402
from gradsmooth.decay import decay_warning  # noqa: E402
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


# -- weight decay: classified or declared ------------------------------------------------------------


class PlainAdamW(optim.Optimizer):
    """AdamW's arithmetic in a class that does not derive from AdamW: gradsmooth cannot classify it."""

    def __init__(self, learning_rate, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8):
        super().__init__()
        self._maybe_schedule("learning_rate", learning_rate)
        self.weight_decay, self.betas, self.eps = weight_decay, betas, eps

    def init_single(self, parameter, state):
        state["m"] = mx.zeros_like(parameter)
        state["v"] = mx.zeros_like(parameter)

    def apply_single(self, gradient, parameter, state):
        lr = self.learning_rate.astype(gradient.dtype)
        b1, b2 = self.betas
        state["m"] = m = b1 * state["m"] + (1 - b1) * gradient
        state["v"] = v = b2 * state["v"] + (1 - b2) * mx.square(gradient)
        return parameter * (1 - lr * self.weight_decay) - lr * m / (mx.sqrt(v) + self.eps)


class CoupledAdamW(ref.AdamW):
    """The reference AdamW with its decay folded into delta: what treating the decay as coupled does."""

    def update(self, name, param, grad):
        decay, delta = super().update(name, param, grad)
        return 1.0, delta + (decay - 1.0) * param


def run_against(opt, make_reference, init, steps=10):
    """Drive ``opt`` (float64) and ``Smoothed(make_reference())`` over its plan; compare every step."""
    opt.init(as_tree(init, mx.float64))
    reference = Smoothed(make_reference(), [g.names for g in opt.plan.groups])
    for t, got, expected in drive(opt, init, reference, steps, mx.float64, np.float64):
        compare(got, expected, 1e-10, t)
    return expected


def test_unclassifiable_decay_warns_once_and_is_treated_as_coupled(tiny_arrays):
    with pytest.warns(UserWarning) as caught:
        opt = GradientSmoothing(PlainAdamW(0.01, weight_decay=0.1))
        run_against(opt, lambda: CoupledAdamW(0.01, weight_decay=0.1), tiny_arrays())
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert str(caught[0].message) == decay_warning(opt.base)
    assert "PlainAdamW" in str(caught[0].message) and "decoupled_decay=True" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the GradientSmoothing(...) call


def test_unclassifiable_optimizer_without_decay_is_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradientSmoothing(PlainAdamW(0.01, weight_decay=0.0))
        GradientSmoothing(optim.Adam(learning_rate=0.01))


@pytest.mark.parametrize("declared", ["true", "function"])
def test_declared_decoupled_decay_is_never_mixed(tiny_arrays, declared):
    seen = []
    decoupled_decay = True if declared == "true" else (lambda o: seen.append(o) or isinstance(o, PlainAdamW))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = GradientSmoothing(PlainAdamW(0.01, weight_decay=0.1), decoupled_decay=decoupled_decay)
        run_against(opt, lambda: ref.AdamW(0.01, weight_decay=0.1), tiny_arrays())
    assert seen == ([opt.base] if declared == "function" else [])


def test_adamw_declared_coupled_smooths_its_decay(tiny_arrays):
    init = tiny_arrays()
    coupled = run_against(GradientSmoothing(optim.AdamW(learning_rate=0.01, weight_decay=0.1), decoupled_decay=False),
                          lambda: CoupledAdamW(0.01, weight_decay=0.1), init)
    decoupled = run_against(GradientSmoothing(optim.AdamW(learning_rate=0.01, weight_decay=0.1)),
                            lambda: ref.AdamW(0.01, weight_decay=0.1), init)
    # the two differ (by far more than the tolerance) exactly where the decay is mixed: in the blocks
    assert max(np.abs(coupled[k] - decoupled[k]).max() for k in coupled if k.startswith("blocks.1.")) > 1e-5
    outside = [k for k in coupled if not k.startswith("blocks.")]
    assert all(np.allclose(coupled[k], decoupled[k], rtol=1e-12, atol=0) for k in outside)


def test_decoupled_decay_function_receives_each_member_of_a_multioptimizer(tiny_arrays):
    seen = []
    is_matrix = lambda name, g: g.ndim == 2  # noqa: E731
    base = optim.MultiOptimizer([optim.SGD(learning_rate=0.05, weight_decay=0.01), PlainAdamW(0.01, weight_decay=0.1)],
                                [is_matrix])
    opt = GradientSmoothing(base, decoupled_decay=lambda o: seen.append(o) or isinstance(o, PlainAdamW))
    assert seen == base.optimizers
    init = tiny_arrays()
    owner = lambda name: "sgd" if init[name].ndim == 2 else "adamw"  # noqa: E731
    run_against(opt, lambda: Partition({"sgd": ref.SGD(0.05, weight_decay=0.01),
                                        "adamw": ref.AdamW(0.01, weight_decay=0.1)}, owner), init)


def test_bad_decoupled_decay_is_refused():
    with pytest.raises(TypeError, match="decoupled_decay should be None, True, False or a function .* but is: 'yes'"):
        GradientSmoothing(optim.AdamW(learning_rate=0.01), decoupled_decay="yes")
    with pytest.raises(TypeError, match=r"decoupled_decay\(optimizer\) should return True, False or the decay factor "
                                        r"\(a number\) but returned: 'yes'"):
        GradientSmoothing(optim.AdamW(learning_rate=0.01), decoupled_decay=lambda o: "yes")
    with pytest.raises(ValueError, match=r"mlx\.optimizers\.optimizers\.Adam decays decoupled .* weight_decay=None"):
        GradientSmoothing(optim.Adam(learning_rate=0.01), decoupled_decay=True)


# -- alpha, the step, the dtype, check_finite --------------------------------------------------------


def snapshot(opt):
    return {k: np.array(v) for k, v in tree_flatten(opt.state)}


def assert_unchanged(opt, before):
    after = snapshot(opt)
    assert sorted(after) == sorted(before)
    for k, v in after.items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def bad_at_3(value):
    return lambda step: mx.where(step == 3, value, 0.5)  # an mx.array schedule, fine at the probed steps


@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("alpha, shown", [(bad_at_3(2.0), "2.0"), (bad_at_3(float("nan")), "nan"),
                                          (bad_at_3(-0.5), "-0.5"), (lambda t: 2.0 if int(t) == 3 else 0.5, "2.0")],
                         ids=["array-2", "array-nan", "array-negative", "python-2"])
def test_alpha_out_of_range_is_refused_before_anything_changes(tiny_arrays, mode, alpha, shown):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01), alpha=alpha, mode=mode)
    params, grads = as_tree(tiny_arrays(), mx.float32), as_tree(tiny_arrays(1), mx.float32)
    for _ in range(3):
        params = opt.apply_gradients(grads, params)
    mx.eval(params)
    before = snapshot(opt)
    message = rf"alpha\(step\) should return a number in \[0, 1\] but alpha\(3\) returned: {shown}"
    with pytest.raises(ValueError, match=message):
        opt.apply_gradients(grads, params)
    assert_unchanged(opt, before)


def test_alpha_schedule_is_probed_at_construction():
    with pytest.raises(ValueError, match=r"alpha\(10\) returned: 2.0"):
        GradientSmoothing(optim.AdamW(learning_rate=0.01), alpha=optim.linear_schedule(0.0, 2.0, 10))
    with pytest.raises(ValueError, match=r"should return one number but alpha\(0\) returned an mx.array of shape \(2,\)"):
        GradientSmoothing(optim.AdamW(learning_rate=0.01), alpha=lambda step: mx.array([0.5, 0.5]))
    with pytest.raises(TypeError, match=r"should return a real number but alpha\(0\) returned an mx.array of dtype"):
        GradientSmoothing(optim.AdamW(learning_rate=0.01), alpha=lambda step: step < 5)


def test_alpha_is_probed_at_the_restored_step(tiny_arrays):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01), alpha=bad_at_3(2.0))
    opt.apply_gradients(as_tree(tiny_arrays(1), mx.float32), as_tree(tiny_arrays(), mx.float32))
    base_state, before = opt.base.state, snapshot(opt)
    with pytest.raises(ValueError, match=r"alpha\(3\) returned: 2.0"):
        opt.state = {"step": mx.array(3, mx.uint64), "base": dict(base_state)}
    assert opt.base.state is base_state
    assert_unchanged(opt, before)


@pytest.mark.parametrize("step", [mx.array(2.5), mx.array(-1), mx.array([1, 2]), mx.array(True), mx.array(float("nan")),
                                  2.5, -3, "3", None], ids=repr)
def test_state_step_must_be_a_non_negative_integer(tiny_arrays, step):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01))
    opt.apply_gradients(as_tree(tiny_arrays(1), mx.float32), as_tree(tiny_arrays(), mx.float32))
    base_state, before = opt.base.state, snapshot(opt)
    with pytest.raises(ValueError, match=r"state\['step'\] should be a non-negative integer \(the steps taken\) but is"):
        opt.state = {"step": step, "base": dict(base_state)}
    assert opt.base.state is base_state
    assert_unchanged(opt, before)


def test_state_step_and_base_accepted_and_refused(tiny_arrays):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01))
    opt.apply_gradients(as_tree(tiny_arrays(1), mx.float32), as_tree(tiny_arrays(), mx.float32))
    with pytest.raises(ValueError, match=r"state\['base'\] should be a dict .* but is: 5"):
        opt.state = {"step": 1, "base": 5}
    for step in (4, np.int64(4), mx.array(4.0), mx.array(4, mx.int32)):
        opt.state = {"step": step, "base": opt.base.state}
        assert opt.state["step"].dtype == mx.uint64 and opt.state["step"].item() == 4


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16], ids=["bfloat16", "float16"])
def test_low_precision_keeps_its_dtype_with_a_schedule_alpha(tiny_net, dtype, mode, compiled):
    model = tiny_net()
    model.set_dtype(dtype)
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2), alpha=optim.linear_schedule(0.0, 1.0, 10), mode=mode)
    step = train_fns(model, opt)
    if compiled:
        state = [model.state, opt.state]
        step = partial(mx.compile, inputs=state, outputs=state)(step)
    for x in mx.random.normal((4, 2, 5), key=mx.random.key(0)).astype(dtype):
        mx.eval(step(x))
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {dtype}
    moments = [(k, v) for k, v in tree_flatten(opt.state["base"]) if k.endswith((".m", ".v"))]
    assert moments and {v.dtype for _, v in moments} == {dtype}
    assert opt.state["step"].item() == 4


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_float16_with_a_schedule_alpha_matches_reference(tiny_arrays, mode):
    schedule = optim.linear_schedule(0.0, 1.0, 4)
    opt = GradientSmoothing(optim.SGD(learning_rate=0.05, momentum=0.9), alpha=schedule, mode=mode)
    init = tiny_arrays()
    opt.init(as_tree(init, mx.float16))
    reference = Smoothed(ref.SGD(0.05, momentum=0.9), [g.names for g in opt.plan.groups], mode=mode,
                         alpha=lambda t: float(schedule(mx.array(t))))
    for t, got, expected in drive(opt, init, reference, 6, mx.float16, np.float16):
        compare(got, expected, 5e-3, t, atol=1e-2)


def test_check_finite_should_be_a_bool():
    for value in (1, "yes", None):
        with pytest.raises(TypeError, match=f"check_finite should be True or False but is: {value!r}"):
            GradientSmoothing(optim.SGD(learning_rate=0.1), check_finite=value)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_check_finite_passes_finite_gradients_near_the_float32_maximum(mode):
    params = {"layers": [{"w": mx.zeros((64, 64))} for _ in range(4)]}
    grads = {"layers": [{"w": mx.full((64, 64), 3e38)} for _ in range(4)]}
    opt = GradientSmoothing(optim.SGD(learning_rate=1e-38), check_finite=True, mode=mode)
    new = opt.apply_gradients(grads, params)
    np.testing.assert_allclose(np.array(new["layers"][0]["w"]), -3.0, rtol=1e-6)
    grads["layers"][2]["w"] = mx.full((64, 64), float("inf"))
    with pytest.raises(FloatingPointError, match="gradient of 'layers.2.w' is not finite at step 1"):
        opt.apply_gradients(grads, new)


def test_init_plans_before_the_base_state_changes(tiny_arrays):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01), stacks=["nope"])
    with pytest.raises(ValueError, match="stacks entry 'nope' matches no parameter name"):
        opt.init(as_tree(tiny_arrays(), mx.float32))
    assert sorted(opt.base.state) == ["learning_rate", "step"]
    assert opt.state["base"] is opt.base.state


def test_a_gradient_that_is_not_an_array_is_refused(tiny_arrays):
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01))
    grads = dict(tree_flatten(as_tree(tiny_arrays(1), mx.float32)))
    grads["blocks.1.attn.bias"] = None
    with pytest.raises(TypeError, match="gradient of 'blocks.1.attn.bias' should be an mx.array but is: NoneType"):
        opt.apply_gradients(tree_unflatten(list(grads.items())), as_tree(tiny_arrays(), mx.float32))
    assert sorted(opt.base.state) == ["learning_rate", "step"]


def test_under_compile_the_shape_of_alpha_is_checked_when_tracing(tiny_net):
    def alpha(step):  # one number eagerly (the probes), two while mx.compile traces the step
        try:
            step.item()
            return mx.array(0.5)
        except ValueError:
            return mx.array([0.5, 0.5])

    model = tiny_net()
    opt = GradientSmoothing(optim.AdamW(learning_rate=1e-2), alpha=alpha)
    state = [model.state, opt.state]
    step = partial(mx.compile, inputs=state, outputs=state)(train_fns(model, opt))
    with pytest.raises(ValueError, match=r"alpha\(step\) should return one number but alpha\(step\) \(the step traced "
                                         r"by mx.compile\) returned an mx.array of shape \(2,\)"):
        step(mx.ones((2, 5)))


def test_a_plan_that_smooths_nothing_warns_once_naming_stacks():
    # MLX optimizers see the model at their first plan (init or the first step): the warning comes then
    opt = GradientSmoothing(optim.AdamW(learning_rate=0.01))
    flat = {"layer1": {"weight": mx.zeros((4, 4))}, "layer2": {"weight": mx.zeros((4, 4))}}
    with pytest.warns(UserWarning, match=r"gradsmooth smooths nothing: .* Name the stacks: stacks=") as caught:
        opt.init(flat)
    assert len(caught) == 1 and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply_gradients(flat, flat)  # once
        stacked = GradientSmoothing(optim.AdamW(learning_rate=0.01))
        stacked.init({"layers": [{"weight": mx.zeros((4, 4))} for _ in range(3)]})
    assert not opt.plan.groups and len(stacked.plan.groups) == 1


def test_a_declared_decay_factor_is_applied_per_layer_at_every_step(tiny_arrays):
    # any rule: here timm's corrected decay, 1 - lr**2 / max_lr * wd, with the rate moving
    schedule = optim.linear_schedule(0.02, 0.005, 10)

    class CorrectedAdamW(PlainAdamW):
        def apply_single(self, gradient, parameter, state):
            lr = self.learning_rate.astype(gradient.dtype)
            step = super().apply_single(gradient, parameter, state) - parameter * (1 - lr * self.weight_decay)
            return parameter * (1 - lr * lr / 0.02 * self.weight_decay) + step

    base = CorrectedAdamW(schedule, weight_decay=0.1)
    opt = GradientSmoothing(base, decoupled_decay=lambda o: 1 - o.learning_rate**2 / 0.02 * o.weight_decay)

    class Corrected(ref.AdamW):
        def update(self, name, param, grad):
            _, delta = super().update(name, param, grad)
            return 1 - self.lr**2 / 0.02 * self.weight_decay, delta

    init = tiny_arrays()
    opt.init(as_tree(init, mx.float64))
    reference = Smoothed(Corrected(0.02, weight_decay=0.1), [g.names for g in opt.plan.groups])
    params, expected = as_tree(init, mx.float64), dict(init)
    rng = np.random.default_rng(0)
    for t in range(6):
        reference.base.lr = ref.float32(float(schedule(mx.array(t))))
        grads = {k: rng.standard_normal(v.shape) for k, v in init.items()}
        params = opt.apply_gradients(as_tree(grads, mx.float64), params)
        expected = reference.step(expected, grads)
        compare(as_numpy(params), expected, 1e-6, t)
