"""Which kernel mixes a group, chosen in one place (backends/torch/dispatch.py), and the
compile-or-fall-back logic, written once."""

import warnings

import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import dispatch, inductor
from gradsmooth.backends.torch.bands import layout
from gradsmooth.backends.torch.blocked import BLOCKED
from gradsmooth.backends.torch.contract import Members
from gradsmooth.backends.torch.eager import EAGER
from gradsmooth.backends.torch.inductor import INDUCTOR

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def nothing_given_up(monkeypatch):
    monkeypatch.setattr(dispatch, "_GIVEN_UP", set())


def test_select_prefers_the_registered_kernels_in_order_and_says_why_not():
    assert dispatch.select("adamw", torch.float32, CPU, 10) == (BLOCKED, None)  # any size
    assert dispatch.select("adamw", torch.bfloat16, CPU, 1 << 20) == (INDUCTOR, None)  # blocked: float32/64 only
    assert dispatch.select("adamw", torch.bfloat16, CPU, 10) == (EAGER, "members under 65,536 elements")
    assert dispatch.select("update", torch.float32, CPU, 1 << 20) == (INDUCTOR, None)  # blocked does not serve it
    assert dispatch.select("sgd", torch.float32, CPU, 1 << 20) == (INDUCTOR, None)  # measured no faster: not registered
    assert dispatch.select("sgd", torch.float32, CPU, 10) == (EAGER, "members under 65,536 elements")
    assert dispatch.select("update", torch.float32, CPU, 1 << 20, fused=False) == (EAGER, "fused=False")
    assert dispatch.select("gradient", torch.float32, CPU, 1 << 20, contiguous=False) == (EAGER, "members not contiguous")


def test_no_compiler_gives_the_eager_kernel_by_default_and_fused_true_tries_anyway(monkeypatch):
    monkeypatch.setattr(inductor, "compiler_missing", lambda device_type: "no C++ compiler (test)")
    assert dispatch.select("adamw", torch.float32, CPU, 1 << 20) == (EAGER, "no C++ compiler (test)")
    assert dispatch.select("adamw", torch.float32, CPU, 10, fused=True) == (BLOCKED, None)


def test_a_kernel_that_cannot_compile_is_given_up_once_and_the_next_one_serves(monkeypatch):
    bands = layout(WindowSmoothing(3).band(4))

    def broken(self, kind, band, dtype, device):
        raise RuntimeError("compiler says no")

    monkeypatch.setattr(type(BLOCKED), "prepare", broken)
    with pytest.warns(RuntimeWarning, match=r"the blocked kernel for adamw .* cannot run \(RuntimeError: compiler says "
                                            r"no\); the eager kernel runs instead") as caught:
        assert not dispatch.ready(BLOCKED, "adamw", bands, torch.float32, CPU)
        assert not dispatch.ready(BLOCKED, "adamw", bands, torch.float32, CPU)  # once
    assert len(caught) == 1
    assert dispatch.select("adamw", torch.float32, CPU, 1 << 20) == (INDUCTOR, None)
    assert dispatch.select("adamw", torch.float32, CPU, 10) == (EAGER, "members under 65,536 elements")


def test_running_out_of_memory_while_compiling_is_not_a_compile_failure(monkeypatch):
    def oom(self, kind, band, dtype, device):
        raise MemoryError("out of memory (test)")

    monkeypatch.setattr(type(BLOCKED), "prepare", oom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MemoryError):
            dispatch.ready(BLOCKED, "adamw", layout(WindowSmoothing(3).band(4)), torch.float32, CPU)
    assert dispatch.select("adamw", torch.float32, CPU, 10) == (BLOCKED, None)  # not given up


def test_a_refused_call_runs_the_eager_kernel_bound_in_advance(monkeypatch):
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    grads = [torch.full((8,), float(j)) for j in range(4)]
    expected = [g.clone() for g in grads]
    bands = layout(WindowSmoothing(3).band(4))
    EAGER.bind(Members("gradient", [expected]), bands, None, EAGER.scratch(Members("gradient", [expected]), bands))()
    planned = dispatch.plan(Members("gradient", [grads]), bands, None, fused=True)
    assert planned.kernel is INDUCTOR and planned.fallback is not None  # inductor may refuse: eager bound too

    def refuse():
        raise RuntimeError("Detected recompile when torch.compile stance is 'fail_on_recompile'")

    with pytest.warns(RuntimeWarning, match="the eager kernel runs instead"):
        dispatch.run(planned._replace(call=refuse))
    assert all(torch.equal(a, b) for a, b in zip(grads, expected))


def test_running_out_of_memory_in_a_call_propagates_and_gives_no_kernel_up(monkeypatch):
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    bands = layout(WindowSmoothing(3).band(4))
    planned = dispatch.plan(Members("gradient", [[torch.ones(8) for _ in range(4)]]), bands, None, fused=True)
    assert planned.fallback is not None

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(torch.OutOfMemoryError):
            dispatch.run(planned._replace(call=oom))
    assert dispatch.select("gradient", torch.float32, CPU, 1 << 20) == (INDUCTOR, None)  # not given up


def test_the_plan_path_names_the_kernel_and_whether_it_is_ready(monkeypatch):
    monkeypatch.setattr(inductor.INDUCTOR, "_compiled", {})
    bands = layout(WindowSmoothing(3).band(5))
    text = dispatch.path(INDUCTOR, None, bands, "gradient", torch.float32, CPU)
    assert text == "inductor (compiles at the first step)"
    INDUCTOR.prepare("gradient", bands, torch.float32, CPU)
    assert dispatch.path(INDUCTOR, None, bands, "gradient", torch.float32, CPU) == "inductor"
    assert dispatch.path(EAGER, "fused=False", bands, "gradient", torch.float32, CPU) == "eager (fused=False)"
