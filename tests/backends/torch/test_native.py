"""SmoothedAdamW and SmoothedSGD: equal to the wrapper in update mode (float32, both kernel
paths), to the NumPy reference oracle (float64), and ordinary torch optimizers (param groups,
schedulers, state_dict, errors)."""

import copy
import warnings

import pytest
import torch

from gradsmooth.backends.torch import dispatch, eager, inductor
import gradsmooth.backends.torch.blocked as blocked_module
from gradsmooth.backends.torch.inductor import INDUCTOR
from gradsmooth.backends.torch import GradientSmoothing, SmoothedAdamW, SmoothedSGD
from gradsmooth.reference import SGD, AdamW, Smoothed
from tests.backends.torch.test_exactness import assert_tracks, float64_device

ADAMW = {"lr": 0.01, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1}
SGDS = {
    "momentum": {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "dampening": {"lr": 0.05, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.01},
    "plain": {"lr": 0.05},
}


@pytest.fixture(params=["eager", "blocked", "inductor"])
def path(request, monkeypatch):
    """Every kernel path: eager; the blocked C++ kernel (a CPU's for float32 and float64); and
    inductor's (CUDA's, and a CPU's for other dtypes), forced here. The tiny members are far
    below the size where compiling pays: compile anyway. Returns the ``fused`` argument."""
    if request.param == "eager":
        return False
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    kernel = {"blocked": blocked_module.BLOCKED, "inductor": INDUCTOR}[request.param]
    # the one compiled kernel, for every native kind (the blocked one is registered for adamw only:
    # it serves the others as well, and is tested on them here)
    monkeypatch.setattr(dispatch, "COMPILED", ((kernel, frozenset({"adamw", "sgd", "sgd-plain"})),))
    return True


def _groups(model, wd):
    """Two param groups: the blocks' weights at full lr, the rest at half lr and no weight decay."""
    named = dict(model.named_parameters())
    return [{"params": [p for k, p in named.items() if k.endswith("weight")]},
            {"params": [p for k, p in named.items() if not k.endswith("weight")], "lr_scale": 0.5, "weight_decay": 0.0}]


def _train(model, opt, steps=6, seed=0, every=None):
    torch.manual_seed(seed)
    for t in range(steps):
        for k, p in model.named_parameters():
            p.grad = None if (every and t % every == 2 and k == "blocks.3.attn.weight") else torch.randn_like(p)
        opt.step()


@pytest.mark.parametrize("native, base, kw", [(SmoothedAdamW, torch.optim.AdamW, ADAMW)]
                         + [(SmoothedSGD, torch.optim.SGD, kw) for kw in SGDS.values()],
                         ids=["adamw", *SGDS])
def test_equals_the_wrapper_in_update_mode_float32(tiny_net, path, native, base, kw):
    models = [tiny_net(dtype=torch.float32), tiny_net(dtype=torch.float32)]
    groups = [_groups(m, kw.get("weight_decay", 0.0)) for m in models]
    for g in groups:
        g[1]["lr"] = kw["lr"] / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback from the fused kernel
        opts = [native(models[0], params=groups[0], fused=path, **kw),
                GradientSmoothing(base(groups[1], **kw), models[1], fused=False)]
        assert opts[0].plan == opts[1].plan
        for m, o in zip(models, opts):
            _train(m, o, every=5)
    assert (set(opts[0].plan.paths) <= {"blocked", "inductor"}) == path  # a compiled kernel ran, or none
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)


@pytest.mark.parametrize("native, make_ref, kw", [(SmoothedAdamW, lambda: AdamW(lr=0.01, weight_decay=0.1), {"lr": 0.01, "weight_decay": 0.1}),
                                                  (SmoothedSGD, lambda: SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
                                                   {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01})],
                         ids=["adamw", "sgd-momentum"])
@pytest.mark.parametrize("boundary", ["renormalize", "reflect"])
def test_matches_reference_float64(tiny_net, device, path, native, make_ref, kw, boundary):
    device = float64_device(device)
    model = tiny_net(device=device)
    opt = native(model, boundary=boundary, fused=path, **kw)
    reference = Smoothed(make_ref(), [g.names for g in opt.plan.groups], window=3, boundary=boundary)
    assert_tracks(model, opt, reference, steps=20, device=device)


def test_matches_reference_with_an_alpha_schedule_and_a_wide_window(tiny_net):
    model = tiny_net()
    alpha = lambda step: min(1.0, 0.1 + step / 10)  # noqa: E731
    opt = SmoothedAdamW(model, lr=0.01, window=5, kernel="triangular", boundary="mirror", alpha=alpha)
    reference = Smoothed(AdamW(lr=0.01), [g.names for g in opt.plan.groups], window=5, kernel="triangular",
                         boundary="mirror", alpha=alpha)
    assert_tracks(model, opt, reference, steps=15)


def test_window_1_is_torchs_fused_adamw_bit_for_bit(tiny_net):
    # nothing is smoothed: every parameter takes torch's own (fused) AdamW step
    models = [tiny_net(dtype=torch.float32), tiny_net(dtype=torch.float32)]
    opts = [SmoothedAdamW(models[0], window=1, **ADAMW), torch.optim.AdamW(models[1].parameters(), fused=True, **ADAMW)]
    for m, o in zip(models, opts):
        _train(m, o)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_state_dict_resumes_exactly_and_is_torchs_layout(tiny_net):
    model, again = tiny_net(), tiny_net()
    opt = SmoothedAdamW(model, **ADAMW)
    _train(model, opt, steps=3)
    saved = copy.deepcopy(opt.state_dict())
    assert set(saved["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} and float(saved["state"][0]["step"]) == 3
    resumed_model = copy.deepcopy(model)
    _train(model, opt, steps=3, seed=1)
    resumed = SmoothedAdamW(resumed_model, **ADAMW)
    resumed.load_state_dict(saved)
    _train(resumed_model, resumed, steps=3, seed=1)
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
    torch_adamw = torch.optim.AdamW(again.parameters(), **ADAMW)
    torch_adamw.load_state_dict(saved)  # torch.optim.AdamW reads it
    assert "gradsmooth" not in resumed.param_groups[0]
    other = SmoothedAdamW(tiny_net(), window=5, **ADAMW)
    with pytest.warns(UserWarning, match=r"the checkpoint was saved with operator=WindowSmoothing\(window=3.*this "
                                         r"wrapper uses operator=WindowSmoothing\(window=5"):
        other.load_state_dict(saved)


def test_a_scheduler_and_param_groups_act_on_it(tiny_net):
    model = tiny_net()
    opt = SmoothedSGD(model, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _train(model, opt, steps=1)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]})
    assert len(opt.param_groups) == 2 and opt.plan.groups


@pytest.mark.parametrize("native, kw", [(SmoothedAdamW, ADAMW), (SmoothedSGD, SGDS["momentum"])], ids=["adamw", "sgd"])
def test_non_contiguous_gradients_of_members_larger_than_a_chunk(native, kw):
    # members wider than the eager kernels' cache-sized chunk, gradients transposed views: the
    # scratch is sized for the whole members that the kernels then gather, and the result is
    # the one with contiguous gradients
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        net = torch.nn.Module()
        net.layers = torch.nn.ModuleList(torch.nn.Linear(600, 600, bias=False) for _ in range(4))
        models.append(net)
    opts = [native(m, **kw) for m in models]
    for step in range(3):
        torch.manual_seed(step)
        grads = [torch.randn(600, 600) for _ in range(4)]
        for p, g in zip(models[0].parameters(), grads):
            p.grad = g.t().contiguous().t()  # the same values, column-major
            assert not p.grad.is_contiguous()
        for p, g in zip(models[1].parameters(), grads):
            p.grad = g.clone()
        for o in opts:
            o.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_grad_scaler_and_hooks_drive_it_as_any_torch_optimizer(tiny_net):
    # GradScaler unscales the gradients, skips a step whose gradients are not finite (nothing
    # changes) and otherwise steps as without it; the optimizer's step hooks fire around a step
    models = [tiny_net(dtype=torch.float32), tiny_net(dtype=torch.float32)]
    opts = [SmoothedAdamW(m, **ADAMW) for m in models]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    fired = []
    opts[0].register_step_pre_hook(lambda opt, args, kwargs: fired.append("pre"))
    opts[0].register_step_post_hook(lambda opt, args, kwargs: fired.append("post"))
    x = torch.randn(4, models[0].embed.in_features)
    for step in range(3):
        for m in models:
            m.zero_grad()
        scaler.scale(models[0](x).square().mean()).backward()
        models[1](x).square().mean().backward()
        if step == 1:  # an overflow: the scaler skips this step
            next(models[0].parameters()).grad[0] = float("inf")
            before = [p.detach().clone() for p in models[0].parameters()]
            scaler.step(opts[0])
            assert all(torch.equal(a, b) for a, b in zip(before, models[0].parameters()))
            scaler.update()
            continue
        scaler.step(opts[0])
        scaler.update()
        opts[1].step()
    assert fired == ["pre", "post"] * 2
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_plan_says_which_path_each_group_takes(tiny_net, monkeypatch):
    # on a CPU, float32 and float64 groups of any size take the blocked kernel (its call costs
    # microseconds); other dtypes take inductor's from 65,536 elements per member
    monkeypatch.setattr(blocked_module, "_LOADED", set())  # no kernel loaded by an earlier test
    model = tiny_net()
    opt = SmoothedAdamW(model)
    text = str(opt.plan)
    assert text.splitlines()[1].split()[-1] == "path"
    assert set(opt.plan.paths) == {"blocked (compiles at the first step)"}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    assert set(opt.plan.paths) == {"blocked"}
    assert set(SmoothedAdamW(model, fused=False).plan.paths) == {"eager (fused=False)"}
    low = tiny_net(dtype=torch.bfloat16)
    assert set(SmoothedSGD(low).plan.paths) == {"eager (members under 65,536 elements)"}


@pytest.mark.parametrize("make, message", [
    (lambda m: SmoothedAdamW(m, lr=-1.0), r"lr should be >= 0.0 but is: -1.0"),
    (lambda m: SmoothedAdamW(m, betas=(0.9, 1.0)), r"betas\[1\] should be >= 0.0 and < 1.0 but is: 1.0"),
    (lambda m: SmoothedAdamW(m, betas=0.9), r"betas should be a pair of numbers but is: 0.9"),
    (lambda m: SmoothedAdamW(m, eps="x"), r"eps should be a number but is: 'x'"),
    (lambda m: SmoothedAdamW(m, fused="yes"), r"fused should be None, True or False but is: 'yes'$"),
    (lambda m: SmoothedAdamW(m, window=2), r"window"),
    (lambda m: SmoothedSGD(m, nesterov=True), r"nesterov momentum needs momentum > 0 and dampening 0"),
    (lambda m: SmoothedSGD(m, momentum=-0.1), r"momentum should be >= 0.0 but is: -0.1"),
    (lambda m: SmoothedAdamW(m, params=[torch.nn.Parameter(torch.zeros(2))]), r"params holds no parameter of model"),
])
def test_bad_arguments_name_the_argument_and_value(tiny_net, make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make(tiny_net())


def test_a_sparse_gradient_is_refused_before_anything_changes(tiny_net):
    model = tiny_net()
    opt = SmoothedAdamW(model, **ADAMW)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    first = next(model.parameters())
    first.grad = first.grad.to_sparse()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters())) and not opt.state


@pytest.mark.parametrize("native, kw", [(SmoothedAdamW, ADAMW), (SmoothedSGD, SGDS["momentum"])], ids=["adamw", "sgd"])
@pytest.mark.parametrize("change", ["cast", "one-block-cast", "replaced"])
def test_a_model_changed_after_its_state_was_made_is_refused_by_name_before_anything_changes(tiny_net, path, native,
                                                                                              kw, change):
    # the kernels mix a group's parameters, gradients and state as one block of memory: a state
    # of another dtype or shape was written through raw pointers (the blocked kernel: heap corruption)
    model = tiny_net(dtype=torch.float32)
    opt = native(model, fused=path, **kw)
    _train(model, opt, steps=1)
    if change == "cast":
        model.double()
    elif change == "one-block-cast":
        model.blocks[3].double()
    else:
        model.blocks[1].attn.weight.data = torch.zeros(3, 3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"of 'blocks\.\d\.[\w.]+' is .* where its group's first parameter "
                                         r"'blocks\.0\.[\w.]+' is .*nothing was changed"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert str(opt.state_dict()) == str(state)


@pytest.mark.parametrize("first", [True, False], ids=["first-step", "later-step"])
@pytest.mark.parametrize("fused", [False, None], ids=["eager", "default"])
@pytest.mark.parametrize("native, kw", [(SmoothedAdamW, ADAMW), (SmoothedSGD, SGDS["momentum"]), (SmoothedSGD, SGDS["plain"])],
                         ids=["adamw", "sgd-momentum", "sgd-plain"])
def test_an_allocation_that_fails_at_any_point_of_a_step_changes_nothing(tiny_net, monkeypatch, native, kw, fused, first):
    # the k-th allocation of a step (state, coefficient tables, scratch: torch.empty, zeros_like,
    # tensor) raises MemoryError: either the step completes, or parameters, gradients and state
    # are as they were, and the next step goes through
    from tests.backends.torch.test_atomic import assert_unchanged, gradients, snapshot

    monkeypatch.setattr(INDUCTOR, "_compiled", {})  # a kernel given up here stays here
    monkeypatch.setattr(dispatch, "_GIVEN_UP", set())

    real = {name: getattr(torch, name) for name in ("empty", "zeros_like", "tensor")}
    failed_at = []
    for k in range(1, 80):
        model = tiny_net()
        opt = native(model, fused=fused, **kw)
        if not first:
            gradients(model, seed=2)
            opt.step()
        gradients(model)
        before = snapshot(model, opt)
        eager._SCRATCH.clear()  # the scratch kept across steps: allocated again
        calls = [0]

        def failing(make):
            def allocate(*args, **kwargs):
                calls[0] += 1
                if calls[0] == k:
                    raise MemoryError("out of memory (test)")
                return make(*args, **kwargs)
            return allocate

        for name, make in real.items():
            monkeypatch.setattr(torch, name, failing(make))
        try:
            opt.step()
        except MemoryError:
            failed_at.append(k)
            for name, make in real.items():
                monkeypatch.setattr(torch, name, make)
            assert_unchanged(model, opt, before)
            opt.step()  # and the next try goes through
            continue
        finally:
            for name, make in real.items():
                monkeypatch.setattr(torch, name, make)
        break  # the k-th allocation is past the step's last one
    assert failed_at  # the step does allocate, and each failure was clean


# -- every flag of torch's AdamW and SGD: implemented or refused by name ---------------------------------


@pytest.mark.parametrize("native, base, kw", [(SmoothedAdamW, torch.optim.AdamW, ADAMW),
                                              (SmoothedSGD, torch.optim.SGD, SGDS["momentum"]),
                                              (SmoothedSGD, torch.optim.SGD, SGDS["plain"])],
                         ids=["adamw", "sgd-momentum", "sgd-plain"])
def test_maximize_equals_the_wrapped_torch_optimizer(tiny_net, path, native, base, kw):
    # before, maximize=True was stored and ignored: the parameters moved against the wrapped base's
    models = [tiny_net(), tiny_net()]
    opts = [native(models[0], maximize=True, fused=path, **kw),
            GradientSmoothing(base(models[1].parameters(), maximize=True, **kw), models[1], fused=False)]
    before = [p.detach().clone() for p in models[0].parameters()]
    for m, o in zip(models, opts):
        _train(m, o, steps=4)
    moved = 0.0
    for (k, a), b, start in zip(models[0].named_parameters(), models[1].parameters(), before):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=k)
        moved = max(moved, float((a.detach() - start).abs().max()))
    assert moved > 1e-3


@pytest.mark.parametrize("make, message", [
    (lambda m: SmoothedAdamW(m, amsgrad=True), r"SmoothedAdamW does not implement amsgrad=True: use GradientSmoothing"),
    (lambda m: SmoothedAdamW(m, capturable=True), r"does not implement capturable=True"),
    (lambda m: SmoothedAdamW(m, differentiable=True), r"does not implement differentiable=True"),
    (lambda m: SmoothedSGD(m, differentiable=True), r"SmoothedSGD does not implement differentiable=True"),
    (lambda m: SmoothedAdamW(m, maximize="yes"), r"maximize should be True or False but is: 'yes'$"),
    (lambda m: SmoothedAdamW(m, foreach=1), r"foreach should be None, True or False but is: 1$"),
    (lambda m: SmoothedSGD(m, foreach=True, fused=True), r"foreach=True and fused=True cannot be set together"),
    (lambda m: SmoothedAdamW(m, params=[{"params": list(m.parameters()), "amsgrad": True}]),
     r"does not implement amsgrad=True in param group 0"),
])
def test_a_flag_it_does_not_implement_is_refused_by_name(tiny_net, make, message):
    with pytest.raises((TypeError, ValueError), match=message):
        make(tiny_net())


def test_a_refused_flag_changes_nothing_in_add_param_group_load_state_dict_and_step(tiny_net):
    model = tiny_net()
    blocks, rest = [p for k, p in model.named_parameters() if k.startswith("blocks")], \
        [p for k, p in model.named_parameters() if not k.startswith("blocks")]
    opt = SmoothedAdamW(model, params=blocks, **ADAMW)
    _train(model, opt, steps=2)
    with pytest.raises(ValueError, match=r"does not implement amsgrad=True in param group 1"):
        opt.add_param_group({"params": rest, "amsgrad": True})
    assert len(opt.param_groups) == 1
    saved = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(saved)
    bad["param_groups"][0]["amsgrad"] = True
    state_before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"amsgrad=True in the checkpoint's param group 0.*nothing was changed"):
        opt.load_state_dict(bad)
    adam = copy.deepcopy(saved)
    adam["param_groups"][0]["decoupled_weight_decay"] = False  # torch.optim.Adam's coupled L2
    with pytest.raises(ValueError, match=r"decoupled_weight_decay=False .*torch.optim.Adam"):
        opt.load_state_dict(adam)
    sgd = copy.deepcopy(saved)
    del sgd["param_groups"][0]["betas"]
    with pytest.raises(ValueError, match=r"the checkpoint's param group 0 has no 'betas': it is not a checkpoint"):
        opt.load_state_dict(sgd)
    assert repr(opt.state_dict()) == repr(state_before)
    opt.param_groups[0]["amsgrad"] = True  # set on the group later: refused at the step, before any write
    params = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"amsgrad=True in param group 0"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert repr(opt.state_dict()["state"]) == repr(state_before["state"])


def test_torch_checkpoints_load_both_ways_with_every_flag(tiny_net):
    model = tiny_net()
    torch_adamw = torch.optim.AdamW(model.parameters(), maximize=True, foreach=False, **ADAMW)
    _train(model, torch_adamw, steps=2)
    opt = SmoothedAdamW(model, **ADAMW)
    opt.load_state_dict(torch_adamw.state_dict())
    assert opt.param_groups[0]["maximize"] is True and opt.param_groups[0]["foreach"] is False
    assert set(opt.param_groups[0]) >= set(torch_adamw.param_groups[0])  # the same keys as torch's AdamW
    torch.optim.AdamW(model.parameters()).load_state_dict(opt.state_dict())
    old = copy.deepcopy(torch_adamw.state_dict())  # a checkpoint from before a flag existed
    for key in ("maximize", "foreach", "capturable", "differentiable", "fused"):
        del old["param_groups"][0][key]
    opt.load_state_dict(old)
    assert opt.param_groups[0]["maximize"] is False and opt.param_groups[0]["fused"] is None


def test_foreach_and_fused_choose_kernels_not_results(tiny_net):
    models = [tiny_net(dtype=torch.float32) for _ in range(3)]
    opts = [SmoothedAdamW(models[0], **ADAMW), SmoothedAdamW(models[1], foreach=True, **ADAMW),
            SmoothedAdamW(models[2], fused=False, **ADAMW)]
    for m, o in zip(models, opts):
        _train(m, o, steps=3)
    assert set(opts[2].plan.paths) == {"eager (fused=False)"}
    for a, b, c in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-7)


# -- built by a framework, compiled by torch ----------------------------------------------------------


@pytest.mark.parametrize("native, kw", [(SmoothedAdamW, ADAMW), (SmoothedSGD, SGDS["momentum"])], ids=["adamw", "sgd"])
def test_factory_builds_it_from_param_groups_as_transformers_does(tiny_net, native, kw):
    models = [tiny_net(), tiny_net()]
    made = native.factory(models[0], window=5)
    assert issubclass(made, native) and made.__name__ == f"{native.__name__}[factory]"
    groups = _groups(models[0], kw.get("weight_decay", 0.0))
    opt = made(groups, **kw)  # Trainer(optimizer_cls_and_kwargs=(made, kw)) calls cls(param_groups, **kw)
    plain = native(models[1], params=_groups(models[1], kw.get("weight_decay", 0.0)), window=5, **kw)
    assert opt.plan == plain.plan and len(opt.param_groups) == 2
    for m, o in zip(models, (opt, plain)):
        _train(m, o, steps=3)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match=r"window is given both to .*factory and when building the optimizer"):
        made(groups, window=3)
    with pytest.raises(ValueError, match=r"window"):
        native.factory(models[0], window=2)  # checked when the factory is made


def test_param_groups_given_for_the_model_say_to_use_the_factory_in_a_short_message(tiny_net):
    model = tiny_net()
    with pytest.raises(TypeError) as info:
        SmoothedAdamW(_groups(model, 0.1), lr=1e-3)  # what transformers does with the class itself
    message = str(info.value)
    assert "factory(model)" in message and "tensor(" not in message and len(message) < 300, message


def test_torch_compile_of_its_step_runs_it_as_it_is_without_recompiling(tiny_net, caplog):
    models = [tiny_net(dtype=torch.float32), tiny_net(dtype=torch.float32)]
    opts = [SmoothedAdamW(m, **ADAMW) for m in models]
    compiled = torch.compile(opts[0].step)
    with warnings.catch_warnings(), caplog.at_level("WARNING", logger="torch._dynamo"):
        warnings.simplefilter("error")
        for step in range(10):  # beyond dynamo's recompile limit (8)
            torch.manual_seed(step)
            for m in models:
                for p in m.parameters():
                    p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step))
            compiled()
            opts[1].step()
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_a_model_with_no_stack_is_warned_about_once_naming_stacks():
    torch.manual_seed(0)
    flat = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.warns(UserWarning, match=r"gradsmooth smooths nothing: .* Name the stacks: stacks=") as caught:
        SmoothedAdamW(flat)
    assert len(caught) == 1 and caught[0].filename == __file__
    with pytest.warns(UserWarning, match=r"smooths nothing"):
        SmoothedSGD(flat, lr=0.1)


@pytest.mark.parametrize("make", [SmoothedAdamW, GradientSmoothing])
def test_the_plan_shows_each_group_dtype_as_it_is_after_a_cast(tiny_net, make):
    # the plan is built once, at construction; a model cast after is printed as it is now
    model = tiny_net(dtype=torch.float64)
    opt = make(model) if make is SmoothedAdamW else make(torch.optim.AdamW(model.parameters()), model)
    assert {g.dtype for g in opt.plan.groups} == {torch.float64}
    model.float()
    assert {g.dtype for g in opt.plan.groups} == {torch.float32}
    assert "float64" not in str(opt.plan) and "float32" in str(opt.plan)
