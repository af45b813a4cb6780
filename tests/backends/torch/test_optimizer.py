"""GradientSmoothing behaves as a torch optimizer: hooks, param_groups, schedulers, state dicts,
GradScaler, low precision, torch.compile, bad input."""

import copy
import functools
import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradsmooth import MatrixOperator, WindowSmoothing
from gradsmooth.backends.torch import GradientSmoothing
from gradsmooth.reference import AdamW, Smoothed


def train(model, opt, steps, seed=0, device="cpu", dtype=None):
    gen = torch.Generator().manual_seed(seed)
    dtype = dtype or next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen).to(device=device, dtype=dtype)
        opt.zero_grad()
        loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()


def same_params(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_is_an_optimizer_and_every_hook_fires(tiny_net):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters()), model)
    assert isinstance(opt, torch.optim.Optimizer)
    fired = []
    opt.register_step_pre_hook(lambda o, args, kwargs: fired.append("step_pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: fired.append("step_post"))
    opt.register_state_dict_pre_hook(lambda o: fired.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: fired.append("sd_post"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: fired.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: fired.append("load_post"))
    train(model, opt, 1)
    opt.load_state_dict(opt.state_dict())
    assert fired == ["step_pre", "step_post", "sd_pre", "sd_post", "load_pre", "load_post"]


def test_param_groups_stay_the_bases_own_list_through_loads(tiny_net):
    model = tiny_net()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = GradientSmoothing(base, model)
    assert opt.param_groups is base.param_groups
    train(model, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    assert opt.param_groups is base.param_groups
    base.load_state_dict(copy.deepcopy(base.state_dict()))
    assert opt.param_groups is base.param_groups
    opt.param_groups[0]["lr"] = 0.5
    assert base.param_groups[0]["lr"] == 0.5


def test_several_bases_share_their_groups_and_state(tiny_net):
    model = tiny_net()
    bases = [torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02),
             torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=1e-3)]
    opt = GradientSmoothing(bases, model)
    assert opt.param_groups == bases[0].param_groups + bases[1].param_groups
    assert opt.param_groups[1] is bases[1].param_groups[0]
    train(model, opt, 2)
    assert len(opt.state) == sum(len(b.state) for b in bases) == len(list(model.parameters()))


SCHEDULERS = {
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.9**s),
    "CosineAnnealingLR": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
    "SequentialLR": lambda o: torch.optim.lr_scheduler.SequentialLR(
        o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=3), torch.optim.lr_scheduler.ExponentialLR(o, 0.8)],
        milestones=[3]),
    "ReduceLROnPlateau": lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_change_the_learning_rate_the_base_uses(tiny_net, name):
    # alpha=0: the wrapper is its base exactly, so a twin plain run shows whether the
    # scheduler's learning rates reached the base
    model_a = tiny_net()
    model_b = copy.deepcopy(model_a)
    plain = torch.optim.SGD(model_a.parameters(), lr=0.05, momentum=0.9)
    base = torch.optim.SGD(model_b.parameters(), lr=0.05, momentum=0.9)
    wrapped = GradientSmoothing(base, model_b, alpha=0.0)
    sched_a, sched_b = SCHEDULERS[name](plain), SCHEDULERS[name](wrapped)
    lrs = []
    for step in range(10):
        train(model_a, plain, 1, seed=step)
        train(model_b, wrapped, 1, seed=step)
        args = (1.0,) if name == "ReduceLROnPlateau" else ()  # a loss that never improves
        sched_a.step(*args)
        sched_b.step(*args)
        assert base.param_groups[0]["lr"] == plain.param_groups[0]["lr"]
        lrs.append(base.param_groups[0]["lr"])
    assert len(set(lrs)) > 2, lrs  # the schedule really moved the base's lr
    assert same_params(model_a, model_b)


def test_step_returns_the_closure_loss_and_zero_grad_clears(tiny_net):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model)
    x = torch.randn(4, 5, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_add_param_group_reaches_the_base_and_the_plan(tiny_net):
    model = tiny_net()
    late = [p for n, p in model.named_parameters() if ".mlp." in n]
    early = [p for n, p in model.named_parameters() if ".mlp." not in n]
    base = torch.optim.SGD(early, lr=0.1)
    opt = GradientSmoothing(base, model)
    assert not any(".mlp." in g.role for g in opt.plan.groups)
    opt.add_param_group({"params": late, "lr": 0.01})
    assert len(base.param_groups) == 2 and base.param_groups[1]["lr"] == 0.01
    assert any(g.role == "mlp.0.weight" for g in opt.plan.groups)
    train(model, opt, 1)


def test_state_dict_shape_and_resume_bit_for_bit(tiny_net):
    def fresh(model):
        return GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=5,
                                 alpha=lambda s: min(1.0, s / 4))

    model = tiny_net()
    start = copy.deepcopy(model.state_dict())
    opt = fresh(model)
    train(model, opt, 6)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd) == {"state", "param_groups"}
    assert all(isinstance(k, int) for k in sd["state"])
    assert sd["param_groups"][0]["gradsmooth"]["step"] == 6
    assert sd["param_groups"][0]["params"] == list(range(len(list(model.parameters()))))
    saved_model = copy.deepcopy(model.state_dict())
    train(model, opt, 5, seed=1)

    resumed = tiny_net()
    resumed.load_state_dict(saved_model)
    opt2 = fresh(resumed)
    opt2.load_state_dict(state_dict=sd)
    assert opt2._step_count == 6
    train(resumed, opt2, 5, seed=1)
    assert same_params(model, resumed)

    # a plain base checkpoint loads too (the step counter starts over)
    base_model = tiny_net()
    base_model.load_state_dict(start)
    plain = torch.optim.AdamW(base_model.parameters(), lr=0.01)
    train(base_model, plain, 2)
    opt3 = fresh(base_model)
    opt3.load_state_dict(copy.deepcopy(plain.state_dict()))
    assert opt3._step_count == 0 and len(opt3.state) == len(plain.state)


def test_state_dict_of_several_bases_round_trips(tiny_net):
    def fresh(model):
        return GradientSmoothing([torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02),
                                  torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=1e-3)], model)

    model = tiny_net()
    opt = fresh(model)
    train(model, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    n = len(list(model.parameters()))
    assert sorted(i for g in sd["param_groups"] for i in g["params"]) == list(range(n))
    assert sorted(sd["state"]) == list(range(n))
    snapshot = copy.deepcopy(model.state_dict())
    train(model, opt, 3, seed=5)
    other = tiny_net()
    other.load_state_dict(snapshot)
    opt2 = fresh(other)
    opt2.load_state_dict(sd)
    train(other, opt2, 3, seed=5)
    assert same_params(model, other)


def test_bad_state_dict_changes_nothing(tiny_net):
    model = tiny_net()
    opt = GradientSmoothing([torch.optim.Muon([p for p in model.parameters() if p.ndim == 2], lr=0.02),
                             torch.optim.AdamW([p for p in model.parameters() if p.ndim != 2], lr=1e-3)], model)
    train(model, opt, 1)
    sd = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(opt.state_dict())
    sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:-1]
    with pytest.raises(ValueError, match="parameter group 1 has"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]


def test_state_is_filled_after_the_first_step_so_dcp_needs_no_dummy_step(tiny_net):
    dcp_state = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model)
    assert not opt.state
    train(model, opt, 1)
    assert opt.state
    params = copy.deepcopy(model.state_dict())
    osd = dcp_state.get_optimizer_state_dict(model, opt)
    assert "blocks.0.attn.weight" in osd["state"]
    assert osd["param_groups"][0]["gradsmooth"]["step"] == 1
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())


# -- GradScaler ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_grad_scaler_unscale_clip_step_equals_an_unscaled_run(tiny_net, fused):
    model_a = tiny_net(dtype=torch.float32)
    model_b = copy.deepcopy(model_a)
    opt_a = GradientSmoothing(torch.optim.AdamW(model_a.parameters(), lr=0.01, fused=fused), model_a)
    opt_b = GradientSmoothing(torch.optim.AdamW(model_b.parameters(), lr=0.01, fused=fused), model_b)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        x = torch.randn(16, 5, generator=gen)
        opt_a.zero_grad()
        model_a(x).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(model_a.parameters(), 1.0)
        opt_a.step()
        opt_b.zero_grad()
        scaler.scale(model_b(x).pow(2).mean()).backward()
        scaler.unscale_(opt_b)
        torch.nn.utils.clip_grad_norm_(model_b.parameters(), 1.0)
        scaler.step(opt_b)
        scaler.update()
    assert same_params(model_a, model_b)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[p][key], opt_b.state[q][key])


def test_grad_scaler_skips_the_step_when_gradients_hold_inf(tiny_net):
    model = tiny_net(dtype=torch.float32)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01, fused=True), model)
    scaler = torch.amp.GradScaler("cpu")
    train(model, opt, 1)
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    scaler.scale(model(torch.randn(4, 5)).pow(2).mean()).backward()
    model.blocks[1].attn.weight.grad[0, 0] = math.inf
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    after = opt.state_dict()
    for k, s in state["state"].items():
        assert all(torch.equal(v, after["state"][k][name]) for name, v in s.items())
    assert scaler.get_scale() < 2.0**16


# -- precision, devices, compile --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_low_precision_parameters(tiny_net, device, dtype, mode):
    ref_model = tiny_net(dtype=torch.float32, device=device)
    model = copy.deepcopy(ref_model).to(dtype)
    # SGD: its step is linear in the gradient, so low-precision rounding stays small (AdamW's
    # sign-like step of tiny float16 gradients would differ by about lr per element)
    ref = GradientSmoothing(torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9), ref_model, mode=mode)
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, mode=mode)
    train(ref_model, ref, 3, device=device)
    train(model, opt, 3, device=device)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.dtype == dtype
        torch.testing.assert_close(p.float(), q, rtol=2e-2, atol=2e-2)
    moved = [(p.float() - q).abs().max().item() for p, q in zip(model.parameters(), tiny_net(device=device, dtype=torch.float32).parameters())]
    assert max(moved) > 1e-3  # the low-precision run did move


def test_runs_on_every_device(tiny_net, device):
    dtype = torch.float32
    model = tiny_net(dtype=dtype, device=device)
    cpu_model = tiny_net(dtype=dtype)
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-2), model)
    cpu_opt = GradientSmoothing(torch.optim.AdamW(cpu_model.parameters(), lr=1e-2), cpu_model)
    train(model, opt, 3, device=device)
    train(cpu_model, cpu_opt, 3)
    for p, q in zip(model.parameters(), cpu_model.parameters()):
        assert p.device.type == device.type
        torch.testing.assert_close(p.cpu(), q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_torch_compile_matches_eager_and_does_not_recompile(tiny_net, mode):
    import torch._dynamo

    torch._dynamo.reset()
    model_e = tiny_net(dtype=torch.float32)
    model_c = copy.deepcopy(model_e)
    opt_e = GradientSmoothing(torch.optim.AdamW(model_e.parameters(), lr=1e-2), model_e, mode=mode)
    opt_c = GradientSmoothing(torch.optim.AdamW(model_c.parameters(), lr=1e-2), model_c, mode=mode)

    def train_step(model, opt, x):
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(train_step, backend="aot_eager")
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(16, 5, generator=gen) for _ in range(8)]
    for i, x in enumerate(xs):
        with torch._dynamo.config.patch(error_on_recompile=i >= 3):  # warm from step 3: a recompile is an error
            loss_c = compiled(model_c, opt_c, x)
        loss_e = train_step(model_e, opt_e, x)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for p, q in zip(model_c.parameters(), model_e.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_non_finite_gradient_is_refused_before_anything_changes(tiny_net, mode):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, mode=mode, check_finite=True)
    train(model, opt, 2)
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    model(torch.randn(4, 5, dtype=torch.float64)).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.blocks[4].mlp[2].weight.grad[1, 1] = math.nan
    model.head.weight.grad[0, 0] = math.inf
    with pytest.raises(FloatingPointError, match=r"gradient of 'blocks.4.mlp.2.weight' is not finite at step 2"):
        opt.step()
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert opt.state_dict()["param_groups"] == state["param_groups"]
    for k, s in state["state"].items():
        assert all(torch.equal(v, opt.state_dict()["state"][k][name]) for name, v in s.items())
    for n, p in model.named_parameters():
        if n not in ("blocks.4.mlp.2.weight", "head.weight"):
            assert torch.equal(p.grad, grads[n]), n
    unchecked = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.01), model)
    unchecked.step()  # off by default, as in torch.optim: the base sees the non-finite gradient
    assert torch.isnan(model.blocks[4].mlp[2].weight).any()


def test_construction_errors(tiny_net):
    model = tiny_net()
    other = tiny_net(seed=1)
    with pytest.raises(ValueError, match="mode should be one of .* but is: 'grad'"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, mode="grad")
    with pytest.raises(ValueError, match="optimizer does not own any parameter of model"):
        GradientSmoothing(torch.optim.SGD(other.parameters(), lr=0.1), model)
    with pytest.raises(ValueError, match="parameter 'blocks.0.attn.weight' is claimed by two optimizers"):
        GradientSmoothing([torch.optim.SGD(model.parameters(), lr=0.1),
                           torch.optim.AdamW([model.blocks[0].attn.weight])], model)
    muon = torch.optim.Muon([model.blocks[0].attn.weight], lr=0.02)
    muon.add_param_group({"params": [model.blocks[0].attn.bias]})
    with pytest.raises(ValueError, match=r"Muon handles 2-D parameters only, .* 'blocks.0.attn.bias' of shape \(8,\)"):
        GradientSmoothing(muon, model)
    with pytest.raises(TypeError, match="optimizer should be a torch.optim.Optimizer"):
        GradientSmoothing("adamw", model)
    with pytest.raises(TypeError, match="operator should be a gradsmooth DepthOperator"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, operator=np.eye(6))
    with pytest.raises(ValueError, match="operator replaces the window arguments"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, operator=WindowSmoothing(5), window=5)
    with pytest.raises(ValueError, match="window should be an odd integer >= 1 but is: 2"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, window=2)


def test_any_depth_operator_is_accepted(tiny_net):
    model_a = tiny_net()
    model_b = copy.deepcopy(model_a)
    a = GradientSmoothing(torch.optim.SGD(model_a.parameters(), lr=0.1), model_a, window=5, kernel="triangular")
    from gradsmooth.reference import window_matrix

    b = GradientSmoothing(torch.optim.SGD(model_b.parameters(), lr=0.1), model_b,
                          operator=MatrixOperator(lambda n: window_matrix(n, 5, "triangular")))
    train(model_a, a, 3)
    train(model_b, b, 3)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-14)


# -- GradientSmoothing.factory: an optimizer class for frameworks that build the optimizer ------


def test_factory_class_builds_the_base_and_wraps_it(tiny_net):
    model_a = tiny_net()
    model_b = copy.deepcopy(model_a)
    cls = GradientSmoothing.factory(torch.optim.AdamW, model_a, window=3, kernel="triangular")
    assert isinstance(cls, type) and issubclass(cls, GradientSmoothing) and cls.__name__ == "GradientSmoothing[AdamW]"
    a = cls([{"params": list(model_a.parameters())}], lr=1e-2, weight_decay=0.1)
    b = GradientSmoothing(torch.optim.AdamW(model_b.parameters(), lr=1e-2, weight_decay=0.1), model_b, window=3,
                          kernel="triangular")
    assert isinstance(a.optimizers[0], torch.optim.AdamW) and a.param_groups[0]["lr"] == 1e-2
    assert a.settings.summary() == b.settings.summary() and str(a.plan) == str(b.plan)
    train(model_a, a, 3)
    train(model_b, b, 3)
    assert same_params(model_a, model_b)
    b.load_state_dict(a.state_dict())  # the same checkpoints
    again = cls.factory(torch.optim.SGD, model_a)  # from a made class: the same as GradientSmoothing.factory
    assert again.__name__ == "GradientSmoothing[SGD]" and again.__mro__[1] is GradientSmoothing
    assert isinstance(again(model_a.parameters(), lr=0.1).optimizers[0], torch.optim.SGD)


def test_factory_takes_a_function_and_pairs_read_once(tiny_net):
    model = tiny_net()
    cls = GradientSmoothing.factory(functools.partial(torch.optim.SGD, momentum=0.9), model.named_parameters(),
                                    window=5)
    assert cls.__name__ == "GradientSmoothing[partial]"
    for _ in range(2):  # the pairs were listed once: the class can be instantiated again
        opt = cls(model.parameters(), lr=0.1)
        assert opt.optimizers[0].param_groups[0]["momentum"] == 0.9 and len(opt.plan.groups) > 0


def test_factory_reads_the_module_when_the_class_is_instantiated(tiny_net):
    """A framework may replace parameters (move, shard) between the factory and the optimizer."""
    model = tiny_net()
    cls = GradientSmoothing.factory(torch.optim.SGD, model)
    model.blocks[1].attn.weight = torch.nn.Parameter(model.blocks[1].attn.weight.detach().clone())
    opt = cls(model.parameters(), lr=0.1)
    train(model, opt, 1)
    assert opt._name(model.blocks[1].attn.weight) == "blocks.1.attn.weight"


@pytest.mark.parametrize("base, model, smoothing, error, message", [
    ("adamw", None, {}, TypeError, r"base should be a torch.optim.Optimizer subclass .* but is: 'adamw'"),
    (torch.nn.Linear, None, {}, TypeError, r"base should be .* but is: <class 'torch.nn.modules.linear.Linear'>"),
    (GradientSmoothing, None, {}, TypeError, "base should be the base optimizer's class but is a GradientSmoothing"),
    (torch.optim.SGD, "blocks", {}, TypeError, "model should be an nn.Module or an iterable .* but is: 'blocks'"),
    (torch.optim.SGD, [("w", 1.0)], {}, TypeError, r"model should be .* but holds: \('w', 1.0\)"),
    (torch.optim.SGD, None, {"window": 2}, ValueError, "window should be an odd integer >= 1 but is: 2"),
    (torch.optim.SGD, None, {"windw": 3}, TypeError, r"GradientSmoothing got an unexpected keyword argument 'windw'; its options: .* window options \(window, "),
    (torch.optim.SGD, None, {"mode": "grad"}, ValueError, "mode should be one of .* but is: 'grad'"),
    (torch.optim.SGD, None, {"fused": 1}, TypeError, r"fused should be None, True or False but is: 1$"),
    (torch.optim.SGD, None, {"decoupled_decay": "yes"}, TypeError, "decoupled_decay should be .* but is: 'yes'"),
    (torch.optim.SGD, None, {"stacks": "layers"}, ValueError, "stacks entry 'layers' matches no parameter name"),
    (torch.optim.SGD, None, {"exclude": 3}, TypeError, "exclude should be .* but is: 3"),
    (torch.optim.SGD, None, {"optimizer": "adamw"}, TypeError, "optimizer is not a smoothing argument.*'adamw'"),
])
def test_factory_checks_every_argument_when_called(tiny_net, base, model, smoothing, error, message):
    with pytest.raises(error, match=message):
        GradientSmoothing.factory(base, tiny_net() if model is None else model, **smoothing)


def test_factory_class_refuses_a_base_that_returns_no_optimizer(tiny_net):
    model = tiny_net()
    cls = GradientSmoothing.factory(lambda params, **kwargs: list(params), model)
    with pytest.raises(TypeError, match=r"base should return a torch.optim.Optimizer but .* returned: list of \d+ items \(the first: Parameter of shape"):
        cls(model.parameters(), lr=0.1)


# -- nothing silently off --------------------------------------------------------------------------------


class _Attrs(nn.Module):  # blocks as attributes layer1, layer2, layer3: no stack to find
    def __init__(self):
        super().__init__()
        self.layer1, self.layer2, self.layer3 = (nn.Linear(4, 4) for _ in range(3))


NO_STACK = {
    "flat MLP": lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
    "Sequential of different shapes": lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(16, 2)),
    "layer1/layer2/layer3 attributes": _Attrs,
    "a single block": lambda: nn.ModuleDict({"blocks": nn.ModuleList([nn.Linear(4, 4)])}),
}


@pytest.mark.parametrize("make", NO_STACK.values(), ids=NO_STACK)
def test_a_plan_that_smooths_nothing_warns_once_at_construction_naming_stacks(make):
    model = make()
    with pytest.warns(UserWarning, match=r"gradsmooth smooths nothing: .* Name the stacks: stacks=") as caught:
        opt = GradientSmoothing(torch.optim.AdamW(model.parameters()), model)
    assert len(caught) == 1 and caught[0].filename == __file__  # points at the caller
    assert not opt.plan.groups


def test_stacks_given_for_attribute_blocks_smooth_them_without_a_warning():
    model = _Attrs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = GradientSmoothing(torch.optim.AdamW(model.parameters()), model, stacks=re.compile(r"layer(\d+)"))
    assert [len(g.names) for g in opt.plan.groups] == [3, 3]


# -- decay rules ------------------------------------------------------------------------------------------


class _CorrectedAdamW(torch.optim.AdamW):
    """timm's corrected_weight_decay on AdamW's update: theta <- (1 - lr**2 / max_lr * wd) theta + delta."""

    __module__ = "timm.optim.adamw"

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        for g in self.param_groups:
            g["corrected_weight_decay"], g["max_lr_snapshot"] = True, lr

    def step(self, closure=None):
        saved = [g["weight_decay"] for g in self.param_groups]
        for g in self.param_groups:  # AdamW decays by 1 - lr * wd: scale wd so that it is lr**2 / max_lr * wd
            g["weight_decay"] = g["weight_decay"] * g["lr"] / g["max_lr_snapshot"]
        try:
            return super().step(closure)
        finally:
            for g, wd in zip(self.param_groups, saved):
                g["weight_decay"] = wd


class _RefCorrected(AdamW):
    def __init__(self, lr, weight_decay, max_lr):
        super().__init__(lr=lr, weight_decay=weight_decay)
        self.max_lr = max_lr

    def update(self, name, param, grad):
        _, delta = super().update(name, param, grad)
        return 1 - self.lr**2 / self.max_lr * self.weight_decay, delta


@pytest.mark.parametrize("declared", [None, "factor"])
@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_timm_corrected_weight_decay_is_applied_per_layer_as_the_group_says(tiny_net, mode, declared):
    # the rule is read from the group (or declared as a factor); before, 1 - lr * wd was assumed and
    # the difference mixed along depth: 4-8 % of the update once the schedule moved lr below its peak
    model = tiny_net()
    base = _CorrectedAdamW(model.parameters(), lr=0.05, weight_decay=0.5)
    factor = None if declared is None else (lambda g: 1 - g["lr"] ** 2 / g["max_lr_snapshot"] * g["weight_decay"])
    opt = GradientSmoothing(base, model, mode=mode, decoupled_decay=factor)
    lrs = [0.05, 0.03, 0.01, 0.02]
    reference = Smoothed(_RefCorrected(0.05, 0.5, 0.05), [g.names for g in opt.plan.groups], mode=mode)
    named = dict(model.named_parameters())
    params = {k: p.detach().numpy().copy() for k, p in named.items()}
    rng = np.random.default_rng(0)
    for lr in lrs:
        base.param_groups[0]["lr"] = reference.base.lr = lr
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for k, p in named.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
        params = reference.step(params, grads)
        for k, p in named.items():
            np.testing.assert_allclose(p.detach().numpy(), params[k], rtol=1e-12, atol=1e-13, err_msg=k)


def test_a_declared_factor_function_must_return_a_number_or_a_bool(tiny_net):
    model = tiny_net()
    with pytest.raises(TypeError, match=r"decoupled_decay\(param_group\) should return True, False or the decay factor"):
        GradientSmoothing(torch.optim.AdamW(model.parameters()), model, decoupled_decay=lambda g: "yes")


# -- messages quote types and sizes, never tensors or models -------------------------------------------------


def test_model_and_optimizer_in_the_wrong_order_get_a_short_message():
    model = nn.Sequential(*(nn.Linear(64, 64) for _ in range(8)))
    with pytest.raises(TypeError) as info:
        GradientSmoothing(model, torch.optim.AdamW(model.parameters()))
    message = str(info.value)
    assert "the optimizer comes first" in message and "Linear(" not in message and len(message) < 300, message


@pytest.mark.parametrize("make", [
    lambda m: GradientSmoothing(torch.optim.AdamW(m.parameters()), list(m.parameters())),
    lambda m: GradientSmoothing([torch.optim.AdamW(m.parameters()), list(m.parameters())], m),
    lambda m: GradientSmoothing(torch.optim.AdamW(m.parameters()), m, check_finite=torch.ones(1000)),
    lambda m: GradientSmoothing.factory(m, m),
    lambda m: GradientSmoothing(torch.optim.AdamW(m.parameters()), [(k, p, 0) for k, p in m.named_parameters()]),
], ids=["parameters for the model", "a list in the optimizers", "a tensor flag", "a model for the base",
        "bad pairs"])
def test_no_message_prints_a_tensor_or_a_model(make):
    model = nn.Sequential(*(nn.Linear(256, 256) for _ in range(6)))
    with pytest.raises((TypeError, ValueError)) as info:
        make(model)
    message = str(info.value)
    assert "tensor(" not in message and "Linear(" not in message and len(message) < 300, message


@pytest.mark.parametrize("fused", [False, None], ids=["eager", "default"])
def test_update_mode_follows_a_model_cast_between_steps(tiny_net, fused):
    # the snapshot is taken in the parameters' dtype as they are now, not as they were planned
    model = tiny_net(dtype=torch.bfloat16)
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, fused=fused)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    model.float()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)  # values bfloat16 cannot hold
    before = [p.detach().clone() for p in model.parameters()]
    for g in opt.param_groups:
        g["lr"] = 0.0
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()  # a step of zero: nothing may move
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_model_cast_in_part_between_steps_is_refused_by_name_before_anything_changes(tiny_net):
    model = tiny_net(dtype=torch.float32)
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model)
    model.blocks[2].double()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"the parameter of 'blocks\.2\.[\w.]+' is .* float64 on cpu where its "
                                         r"group's first parameter 'blocks\.0\.[\w.]+' is .* float32"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
