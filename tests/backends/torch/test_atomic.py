"""Nothing changes when an error is raised, bad input is refused by name, the counters and
hooks keep step with the base, and weight decay is classified (gradsmooth.decay)."""

import copy
import warnings

import pytest
import torch

from gradsmooth.backends.torch import GradientSmoothing
from gradsmooth.reference import Smoothed
from tests.backends.torch.test_exactness import BASES, assert_tracks
from tests.backends.torch.test_optimizer import train


def snapshot(model, opt):
    """Everything a step may change: parameters, gradients, the optimizer's state dict."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: None if p.grad is None else _dense(p.grad).clone() for n, p in model.named_parameters()},
            copy.deepcopy(opt.state_dict()))


def _dense(t):
    return t.to_dense() if t.is_sparse else t


def assert_unchanged(model, opt, before):
    params, grads, state = before
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    for n, p in model.named_parameters():
        assert (p.grad is None and grads[n] is None) or torch.equal(_dense(p.grad), grads[n]), n
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    assert now["state"].keys() == state["state"].keys()
    for k, s in state["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(now["state"][k][name])) for name, v in s.items())


def gradients(model, seed=1):
    model.zero_grad()
    model(torch.randn(16, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).pow(2).mean().backward()


# -- a failed allocation leaves everything as it was ---------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_an_allocation_that_fails_at_any_point_of_a_step_changes_nothing(tiny_net, monkeypatch, mode, fused):
    # the k-th torch.empty of a step raises MemoryError (the snapshots, the workspace, ...): either
    # the step completes, or parameters, gradients, state and the step counter are as they were
    from gradsmooth.backends.torch import dispatch, eager, inductor

    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    # kernels of its own: a failed allocation while one compiles gives it up (eager from then on),
    # which must not reach the other tests' kernels
    monkeypatch.setattr(inductor.INDUCTOR, "_compiled", {})
    monkeypatch.setattr(dispatch, "_GIVEN_UP", set())
    real_empty = torch.empty
    failed_at = []
    for k in range(1, 40):
        model = tiny_net()
        opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1), model, mode=mode,
                                fused=fused)
        train(model, opt, 1)
        gradients(model)
        before, step = snapshot(model, opt), opt._step_count
        eager._SCRATCH.clear()  # the eager kernels' scratch, kept across steps on a CPU: allocated again
        calls = [0]

        def empty(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise MemoryError("out of memory (test)")
            return real_empty(*args, **kwargs)

        monkeypatch.setattr(torch, "empty", empty)
        try:
            opt.step()
        except MemoryError:
            failed_at.append(k)
            monkeypatch.setattr(torch, "empty", real_empty)
            assert_unchanged(model, opt, before)
            assert opt._step_count == step
            opt.step()  # and the next try goes through
            continue
        finally:
            monkeypatch.setattr(torch, "empty", real_empty)
        break  # the k-th allocation is past the step's last one
    assert failed_at  # the step does allocate (the workspace, fresh snapshots), and each failure was clean


# -- load_state_dict -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["abc", None, -5, 2.7, True, "missing"])
def test_a_bad_saved_step_is_refused_before_anything_loads(tiny_net, bad):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model)
    train(model, opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    train(model, opt, 1)
    before = snapshot(model, opt)
    for g in saved["param_groups"]:
        g["lr"] = 0.5  # would show if the base state were loaded
        if bad == "missing":
            del g["gradsmooth"]["step"]
        else:
            g["gradsmooth"]["step"] = bad
    with pytest.raises(ValueError, match=r"state_dict\['param_groups'\]\[0\]\['gradsmooth'\]"):
        opt.load_state_dict(saved)
    assert_unchanged(model, opt, before)
    assert opt._step_count == 3


def test_a_failed_load_of_a_second_base_leaves_the_first_as_it_was(tiny_net, monkeypatch):
    model = tiny_net()
    blocks = [p for n, p in model.named_parameters() if n.startswith("blocks")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("blocks")]
    bases = [torch.optim.AdamW(blocks, lr=0.01), torch.optim.SGD(rest, lr=0.1, momentum=0.9)]
    opt = GradientSmoothing(bases, model)
    train(model, opt, 2)
    saved = copy.deepcopy(opt.state_dict())
    train(model, opt, 1)
    before = snapshot(model, opt)

    def broken(state_dict):
        raise RuntimeError("corrupt checkpoint (test)")

    monkeypatch.setattr(bases[1], "load_state_dict", broken)
    with pytest.raises(RuntimeError, match="corrupt checkpoint"):
        opt.load_state_dict(saved)
    assert_unchanged(model, opt, before)


def test_a_checkpoint_with_other_smoothing_settings_loads_with_a_warning_naming_both(tiny_net):
    model = tiny_net()
    five = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=5)
    train(model, five, 2)
    three = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=3)
    with pytest.warns(UserWarning, match=r"saved with operator=WindowSmoothing\(window=5.*this wrapper uses "
                                         r"operator=WindowSmoothing\(window=3"):
        three.load_state_dict(five.state_dict())
    assert three._step_count == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same settings (a schedule function included): no warning
        again = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=5)
        again.load_state_dict(five.state_dict())


# -- add_param_group -----------------------------------------------------------------------------


def test_add_param_group_that_a_base_refuses_is_not_half_added(tiny_net):
    model = tiny_net()
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks") and p.ndim == 2]
    late = model.blocks[0].attn.bias
    others = [p for n, p in model.named_parameters() if not (n.startswith("blocks") and p.ndim == 2) and p is not late]
    muon, adamw = torch.optim.Muon(matrices[:-1], lr=0.02), torch.optim.AdamW(others, lr=0.01)
    opt = GradientSmoothing([muon, adamw], model)
    groups = len(muon.param_groups)
    with pytest.raises(ValueError, match=r"Muon handles 2-D parameters only, but optimizer 0 holds "
                                         r"'blocks.0.attn.bias' of shape \(8,\)"):
        opt.add_param_group({"params": [late]})
    assert len(muon.param_groups) == groups
    with pytest.raises(ValueError, match="claimed by two optimizers"):  # planning refuses: taken out again
        opt.add_param_group({"params": [others[0]]})
    assert len(muon.param_groups) == groups
    opt.add_param_group({"params": [matrices[-1]]})  # a group Muon takes is added, and planned
    assert len(muon.param_groups) == groups + 1
    train(model, opt, 2)


# -- counters and hooks --------------------------------------------------------------------------


def test_a_step_without_any_gradient_does_not_advance_the_counter(tiny_net):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, alpha=lambda t: min(1.0, t / 4))
    train(model, opt, 2)
    opt.zero_grad()
    opt.step()
    assert opt._step_count == 2 == opt.state[model.blocks[0].attn.weight]["step"]


def test_global_optimizer_hooks_fire_once_per_step_and_the_bases_own_hooks_still_fire(tiny_net):
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    model = tiny_net()
    base = torch.optim.AdamW(model.parameters(), lr=0.01)
    opt = GradientSmoothing(base, model)
    fired = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: fired.append(("global pre", type(o).__name__))),
               register_optimizer_step_post_hook(lambda o, a, k: fired.append(("global post", type(o).__name__)))]
    base.register_step_pre_hook(lambda o, a, k: fired.append(("base pre", type(o).__name__)))
    base.register_step_post_hook(lambda o, a, k: fired.append(("base post", type(o).__name__)))
    try:
        train(model, opt, 1)
    finally:
        for h in handles:
            h.remove()
    assert fired == [("global pre", "GradientSmoothing"), ("base pre", "AdamW"), ("base post", "AdamW"),
                     ("global post", "GradientSmoothing")]


def test_a_scheduler_built_on_the_base_sees_its_step(tiny_net):
    model = tiny_net()
    base = torch.optim.AdamW(model.parameters(), lr=0.01)
    opt = GradientSmoothing(base, model)
    sched = torch.optim.lr_scheduler.StepLR(base, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise
        train(model, opt, 1)
        sched.step()
    assert base.param_groups[0]["lr"] == 0.005


# -- bad input -----------------------------------------------------------------------------------


def test_check_finite_must_be_a_bool(tiny_net):
    model = tiny_net()
    with pytest.raises(TypeError, match="check_finite should be True or False but is: 'yes'"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, check_finite="yes")


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_check_finite_never_refuses_a_finite_gradient(tiny_net, mode):
    model = tiny_net(dtype=torch.float32)
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=1e-40), model, mode=mode, check_finite=True)
    for p in model.parameters():
        p.grad = torch.full_like(p, 3e38)  # finite; their sum overflows float32
    opt.step()
    assert opt._step_count == 1
    model.blocks[1].attn.weight.grad[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="'blocks.1.attn.weight' is not finite"):
        opt.step()


def test_sparse_gradients_are_refused_in_gradient_mode_before_anything_changes():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Embedding(10, 4, sparse=True) for _ in range(3)])

        def forward(self, i):
            return sum(b(i) for b in self.blocks).sum()

    model = Net()
    opt = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, mode="gradient")
    model(torch.tensor([1, 2])).backward()
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"gradient of 'blocks.0.weight' is torch.sparse_coo \(sparse\); "
                                         r"mode='gradient' smooths dense gradients only"):
        opt.step()
    assert_unchanged(model, opt, before)
    update = GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, mode="update")
    update.step()  # update mode smooths the (dense) parameters' steps
    assert update._step_count == 1


# -- weight decay classification ------------------------------------------------------------------


class _DecoupledSGD(torch.optim.Optimizer):
    """SGD with decoupled weight decay, as timm's, bitsandbytes' and torchao's AdamW apply it:
    ``theta <- (1 - lr * wd) * theta - lr * g``, with no flag in its param groups."""

    def __init__(self, params, lr, weight_decay):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.mul_(1 - g["lr"] * g["weight_decay"]).add_(p.grad, alpha=-g["lr"])


def _optimizer_class(module, name="AdamW", **attrs):
    return type(name, (_DecoupledSGD,), {"__module__": module, **attrs})


def _decay_error(model, make, **kwargs):
    """One step on zero gradients: the update is pure decay, which must stay per layer."""
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = GradientSmoothing(make(model.parameters()), model, **kwargs)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return max(float((p.detach() - theta[n] * (1 - 0.1 * 0.5)).abs().max()) for n, p in model.named_parameters())


@pytest.mark.parametrize("module, name, attrs", [
    ("timm.optim.adamw", "AdamW", {}), ("timm.optim.nadamw", "NAdamW", {}), ("timm.optim.lion", "Lion", {}),
    ("timm.optim.muon", "Muon", {}), ("bitsandbytes.optim.adamw", "PagedAdamW8bit", {}),
    ("torchao.optim.adam", "AdamW8bit", {}), ("apex.optimizers.fused_adam", "FusedAdam", {"adam_w_mode": True}),
    ("deepspeed.ops.adam.fused_adam", "FusedAdam", {"adam_w_mode": True}),
])
def test_third_party_decoupled_decay_is_recognised_without_importing_it(tiny_net, module, name, attrs):
    make = lambda params: _optimizer_class(module, name, **attrs)(params, lr=0.1, weight_decay=0.5)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _decay_error(tiny_net(), make) < 1e-15


def test_an_unclassifiable_optimizer_warns_once_and_can_be_declared(tiny_net):
    make = lambda params: _optimizer_class("mylib.optim")(params, lr=0.1, weight_decay=0.5)  # noqa: E731
    with pytest.warns(UserWarning, match=r"cannot tell whether mylib.optim.AdamW applies its weight_decay decoupled "
                                         r".* Pass decoupled_decay=True") as record:
        error = _decay_error(tiny_net(), make)
    assert len([w for w in record if "cannot tell" in str(w.message)]) == 1
    assert error > 1e-4  # treated as coupled: the decay is averaged across depth
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _decay_error(tiny_net(), make, decoupled_decay=True) < 1e-15
        assert _decay_error(tiny_net(), make, decoupled_decay=lambda group: group["weight_decay"] > 0) < 1e-15
    no_decay = lambda params: _optimizer_class("mylib.optim")(params, lr=0.1, weight_decay=0.0)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to classify without decay
        model = tiny_net()
        GradientSmoothing(no_decay(model.parameters()), model)


def test_declaring_adamw_decay_coupled_smooths_it_like_the_reference(tiny_net):
    model = tiny_net()
    make_torch, make_reference = BASES["adamw"]
    opt = GradientSmoothing(make_torch(model), model, decoupled_decay=False)
    # coupled handling of AdamW's decay = the reference's AdamW whose decay is mixed with the step
    reference = Smoothed(make_reference(), [g.names for g in opt.plan.groups], window=3, decoupled=False)
    assert_tracks(model, opt, reference, steps=5)


def test_decoupled_decay_must_be_a_bool_or_a_function(tiny_net):
    model = tiny_net()
    with pytest.raises(TypeError, match=r"decoupled_decay should be None, True, False or a function of the param "
                                        r"group \(torch\) or of the optimizer \(MLX\) but is: 'yes'"):
        GradientSmoothing(torch.optim.AdamW(model.parameters()), model, decoupled_decay="yes")
    with pytest.raises(TypeError, match=r"decoupled_decay\(param_group\) should return True, False or the decay factor "
                                        r"\(a finite number\) but returned: 'yes'"):  # asked at construction
        GradientSmoothing(torch.optim.AdamW(model.parameters(), weight_decay=0.1), model,
                          decoupled_decay=lambda group: "yes")


def test_a_checkpoint_of_another_model_is_refused_before_anything_loads():
    # same parameter count, other shapes: torch.optim would load it and fail (or broadcast) at the next step
    def net(rows, cols):
        blocks = torch.nn.ModuleList([torch.nn.Linear(cols, rows, bias=False) for _ in range(4)])
        return torch.nn.ModuleDict({"blocks": blocks})

    source, target = net(16, 32), net(32, 16)
    opts = [GradientSmoothing(torch.optim.AdamW(m.parameters(), lr=0.01), m) for m in (source, target)]
    for m, o in zip((source, target), opts):
        for p in m.parameters():
            p.grad = torch.ones_like(p)
        o.step()
    before = snapshot(target, opts[1])
    with pytest.raises(ValueError, match=r"loaded state 'exp_avg' of parameter 'blocks.0.weight' has shape \(16, 32\) "
                                         r"but its state has shape \(32, 16\): the checkpoint is from another model"):
        opts[1].load_state_dict(opts[0].state_dict())
    assert_unchanged(target, opts[1], before)
    fresh = GradientSmoothing(torch.optim.AdamW(target.parameters(), lr=0.01), target)  # no state yet: the parameter's shape
    with pytest.raises(ValueError, match=r"has shape \(16, 32\) but the parameter has shape \(32, 16\)"):
        fresh.load_state_dict(opts[0].state_dict())
    assert fresh.state_dict()["state"] == {}
