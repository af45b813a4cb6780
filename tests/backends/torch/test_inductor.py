"""Inductor's kernels (backends/torch/inductor.py): their source, compiled before anything changes
and never inside a step, against the NumPy reference oracle and the eager kernels; falling back
to the eager kernel (dispatch.py) when one cannot compile or refuses its call."""

import warnings

import numpy as np
import pytest
import torch

from gradsmooth import WindowSmoothing
from gradsmooth.backends.torch import GradientSmoothing, dispatch, inductor
from gradsmooth.backends.torch.bands import layout
from gradsmooth.backends.torch.inductor import INDUCTOR, MIN_ELEMENTS, InductorKernel, kernel_source
from gradsmooth.reference import AdamW, Smoothed
from tests.backends.torch.test_exactness import BASES as EXACT_BASES
from tests.backends.torch.test_exactness import assert_tracks, float64_device


@pytest.fixture
def fuse_all(monkeypatch):
    """The tiny test model's members are far below the size where fusing pays: fuse them anyway."""
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)


@pytest.fixture
def fresh(monkeypatch):
    """Inductor's kernels of this test's own, and nothing given up: what it gives up stays here."""
    monkeypatch.setattr(INDUCTOR, "_compiled", {})
    monkeypatch.setattr(dispatch, "_GIVEN_UP", set())


def test_the_layout_lists_each_rows_members_and_weights():
    band = WindowSmoothing(3).band(4)
    bands = layout(band)
    assert bands.pattern == ((0, 1), (0, 1, 2), (1, 2, 3), (2, 3))
    np.testing.assert_allclose(bands.values, [1 / 2, 1 / 2] + [1 / 3] * 6 + [1 / 2, 1 / 2])
    bands = layout(band, minus_identity=True)
    assert bands.pattern == ((0, 1), (0, 1, 2), (1, 2, 3), (2, 3))
    np.testing.assert_allclose(bands.values[:2], [1 / 2 - 1, 1 / 2])


def test_kernel_source_reads_each_member_once_and_writes_each_once():
    pattern = layout(WindowSmoothing(3).band(5), minus_identity=True).pattern
    src = kernel_source(pattern, "update")
    for j in range(5):
        assert src.count(f"u{j} = ") == 1 and src.count(f"p[{j}].copy_(") == 1 and f"s[{j}].copy_(" not in src
    src = kernel_source(layout(WindowSmoothing(3).band(5)).pattern, "gradient")
    assert "s[" not in src and all(src.count(f"g[{j}].copy_(") == 1 for j in range(5))
    adamw = kernel_source(layout(WindowSmoothing(3).band(5)).pattern, "adamw")
    assert all(adamw.count(f"{a}[{j}].copy_(") == 1 for a in "pmv" for j in range(5)) and "torch.sqrt(" in adamw


BASES = {  # fused AdamW moves parameters without bumping their version counters
    "sgd-momentum": EXACT_BASES["sgd-momentum"],
    "adamw-fused": (lambda m: torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, fused=True),
                    EXACT_BASES["adamw"][1]),
}


@pytest.mark.parametrize("mode", ["update", "gradient"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_fused_matches_reference_float64(tiny_net, device, fuse_all, base, mode):
    # a member is dropped every tenth step (another pattern); alpha is 0 every third step (no
    # group is mixed); fused AdamW moves the parameters without bumping their version counters
    device = float64_device(device)
    model = tiny_net(device=device)
    make_torch, make_ref = BASES[base]
    alpha = lambda t: 0.0 if t % 3 == 1 else 0.8  # noqa: E731
    opt = GradientSmoothing(make_torch(model), model, window=3, alpha=alpha, mode=mode, fused=True)
    reference = Smoothed(make_ref(), [g.names for g in opt.plan.groups], mode=mode, window=3, alpha=alpha)
    assert_tracks(model, opt, reference, steps=12, device=device)


def test_fused_matches_reference_with_a_wide_mirror_window(tiny_net, fuse_all):
    model = tiny_net()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=0.01), model, window=5, kernel="triangular",
                            boundary="mirror", fused=True)
    reference = Smoothed(AdamW(lr=0.01), [g.names for g in opt.plan.groups], window=5, kernel="triangular",
                         boundary="mirror")
    assert_tracks(model, opt, reference, steps=6)


def test_in_place_changes_between_steps_are_seen(tiny_net, fuse_all):
    # the snapshot is taken at every step: a change between steps is always seen
    models = [tiny_net(), tiny_net()]
    opts = [GradientSmoothing(torch.optim.AdamW(m.parameters(), lr=0.01, fused=True), m, fused=f)
            for m, f in zip(models, (False, True))]
    x = torch.randn(8, 5, dtype=torch.float64)
    for step in range(4):
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).pow(2).mean().backward()
            o.step()
            if step == 1:
                with torch.no_grad():
                    m.blocks[3].attn.weight.mul_(0.5)
                    m.load_state_dict({k: v * 1.01 for k, v in m.state_dict().items() if "mlp" in k}, strict=False)
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=k)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_low_precision_members_match_the_eager_kernels(tiny_net, device, fuse_all, mode):
    # one step from the same state: both mix in float32 and round once to bfloat16
    models = [tiny_net(dtype=torch.bfloat16, device=device) for _ in range(2)]
    opts = [GradientSmoothing(torch.optim.SGD(m.parameters(), lr=0.1), m, mode=mode, fused=f)
            for m, f in zip(models, (False, True))]
    for m, o in zip(models, opts):
        gen = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(device=device, dtype=torch.bfloat16)
        o.step()
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, msg=k)


def _twins(tiny_net, mode, dtype=torch.float64, fused_adamw=False):
    """Two equal models with eager and fused wrappers around AdamW."""
    models = [tiny_net(dtype=dtype) for _ in range(2)]
    opts = [GradientSmoothing(torch.optim.AdamW(m.parameters(), lr=0.01, fused=fused_adamw), m, mode=mode, fused=f)
            for m, f in zip(models, (False, True))]
    return models, opts


def _bucket_steps(models, opts, steps=3):
    """Steps with gradients that are views into one bucket at an offset (as DDP gives them)."""
    for step in range(steps):
        for m, o in zip(models, opts):
            params = list(m.parameters())
            bucket = torch.zeros(3 + sum(p.numel() for p in params), dtype=params[0].dtype)
            gen, at = torch.Generator().manual_seed(step), 3
            for p in params:
                p.grad = bucket[at:at + p.numel()].view_as(p)
                p.grad.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
                at += p.numel()
            o.step()


def _assert_same(models):
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=k)


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_a_kernel_that_cannot_compile_falls_back_to_the_eager_kernels_with_one_warning(tiny_net, fuse_all, fresh,
                                                                                        monkeypatch, mode):
    def fail(self, kind, band, dtype, device):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(InductorKernel, "prepare", fail)
    models, opts = _twins(tiny_net, mode)
    with pytest.warns(RuntimeWarning, match=r"the inductor kernel for .* cannot run \(RuntimeError: no C\+\+ compiler\); "
                                            r"the eager kernel runs instead") as record:
        _bucket_steps(models, opts)
    # one kind, dtype and device: one warning over 3 steps and 8 groups
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    _assert_same(models)


@pytest.mark.parametrize("oom", ["host", "device, wrapped"])
def test_running_out_of_memory_while_compiling_raises_and_gives_nothing_up(tiny_net, fuse_all, fresh, monkeypatch, oom):
    # out of memory is not a compile failure: the step raises before anything changes, no
    # kernel is given up, and the next step compiles and runs the kernel
    from tests.backends.torch.test_atomic import assert_unchanged, snapshot

    prepare = InductorKernel.prepare

    def out_of_memory(self, kind, band, dtype, device):
        if oom == "host":
            raise MemoryError("out of memory (test)")
        try:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        except torch.OutOfMemoryError as error:  # dynamo wraps what a backend raises
            raise RuntimeError("backend compiler failed") from error

    models, opts = _twins(tiny_net, "update")
    _bucket_steps(models, opts, steps=1)  # state made, kernels compiled once
    monkeypatch.setattr(INDUCTOR, "_compiled", {})  # new kernels: the next step compiles
    monkeypatch.setattr(InductorKernel, "prepare", out_of_memory)
    before = snapshot(models[1], opts[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "the eager kernels run instead"
        with pytest.raises((MemoryError, RuntimeError), match="out of memory|backend compiler failed"):
            opts[1].step()
    assert_unchanged(models[1], opts[1], before)
    monkeypatch.setattr(InductorKernel, "prepare", prepare)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        opts[1].step()
    assert "inductor" in opts[1].plan.paths


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_a_kernel_that_would_recompile_inside_a_step_falls_back_before_writing(tiny_net, fuse_all, fresh, monkeypatch,
                                                                               mode):
    # whatever makes a compiled call fail its guards inside a step (after the base step in update
    # mode), it must not compile there: it raises before writing and the eager kernel runs

    def bind(self, members, band, coefficients, scratch):
        def run():
            raise RuntimeError("Detected recompile when torch.compile stance is 'fail_on_recompile'")
        return run

    monkeypatch.setattr(InductorKernel, "bind", bind)
    models, opts = _twins(tiny_net, mode)
    with pytest.warns(RuntimeWarning, match="the eager kernel runs instead"):
        _bucket_steps(models, opts)
    _assert_same(models)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_kernels_compile_before_anything_changes_and_never_again(tiny_net, fuse_all, fresh, monkeypatch, mode, dtype):
    # the real members (parameters that require grad, gradients that are views into one bucket
    # at an offset, rows of the snapshot) must pass the guards of the kernel compiled on scratch
    # tensors: a recompile inside a step would run after the base step changed the parameters
    compiles, runs = [], []
    prepare, bind = InductorKernel.prepare, InductorKernel.bind

    def counted(self, kind, band, dtype, device):
        if not self.prepared(kind, band, dtype, device):
            compiles.append((kind, band.pattern, dtype))
        prepare(self, kind, band, dtype, device)

    monkeypatch.setattr(InductorKernel, "prepare", counted)
    monkeypatch.setattr(InductorKernel, "bind", lambda self, *a: (runs.append(self), bind(self, *a))[1])
    models, opts = _twins(tiny_net, mode, dtype=dtype, fused_adamw=True)
    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the eager kernels
        _bucket_steps(models, opts)
    assert len(compiles) == len(set(compiles)) >= 1  # each kernel compiled once, in prepare
    assert len(runs) == 3 * len(opts[1].plan.groups)  # and every group ran its kernel at every step
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, msg=k)


def test_kernels_compile_again_before_the_step_after_a_dynamo_reset(tiny_net, fuse_all):
    models, opts = _twins(tiny_net, "update")
    _bucket_steps(models, opts, steps=1)
    torch._dynamo.reset()  # drops every compiled kernel: the next step's prepare compiles again
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _bucket_steps(models, opts, steps=2)
    _assert_same(models)


def test_small_members_and_non_contiguous_members_use_the_eager_kernels():
    cpu = torch.device("cpu")
    assert dispatch.select("update", torch.float32, cpu, 8) == (dispatch.EAGER, f"members under {MIN_ELEMENTS:,} elements")
    assert dispatch.select("update", torch.float32, cpu, MIN_ELEMENTS, contiguous=False) == (dispatch.EAGER,
                                                                                           "members not contiguous")
    assert dispatch.select("update", torch.float32, cpu, MIN_ELEMENTS) == (INDUCTOR, None)
    assert dispatch.select("update", torch.float32, cpu, MIN_ELEMENTS, fused=False) == (dispatch.EAGER, "fused=False")


def _wide(blocks=4, width=256):
    """A stack whose weights are large enough to be fused by default (width**2 >= FUSED_MIN_ELEMENTS)."""
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"layers": torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(blocks))})


def _train(model, opt, steps=3):
    for _ in range(steps):
        x = torch.randn(2, 256)
        for layer in model["layers"]:
            x = x + torch.tanh(layer(x))
        x.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("mode", ["update", "gradient"])
def test_by_default_large_members_are_fused_and_the_plan_says_so(mode):
    models = [_wide(), _wide()]
    # SGD: Adam divides by sqrt(v), which magnifies the rounding of tiny gradients (the sums' order differs)
    opts = [GradientSmoothing(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), m, mode=mode, fused=f)
            for m, f in zip(models, (None, False))]
    before = str(opts[0].plan).splitlines()
    assert before[1].split()[-1] == "path"
    assert "inductor (compiles at the first step)" in before[3] and "eager (members under 65,536 elements)" in before[2]
    assert "eager (fused=False)" in str(opts[1].plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled without a fallback
        for m, o in zip(models, opts):
            torch.manual_seed(1)
            _train(m, o)
    assert str(opts[0].plan).splitlines()[3].endswith("  inductor")
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_without_a_compiler_the_default_runs_the_eager_kernels_silently(monkeypatch):
    monkeypatch.setattr(inductor, "compiler_missing", lambda device_type: "no C++ compiler (test)")
    model = _wide()
    opt = GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=1e-2), model)
    assert "eager (no C++ compiler (test))" in str(opt.plan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(model, opt, steps=1)


def test_fused_argument_errors(tiny_net):
    model = tiny_net()
    with pytest.raises(TypeError, match=r"fused should be None, True or False but is: 'yes'$"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, fused="yes")
    from gradsmooth.backends.torch import PipelineStages

    with pytest.raises(ValueError, match="fused=True is not available with pipeline stages"):
        GradientSmoothing(torch.optim.SGD(model.parameters(), lr=0.1), model, fused=True,
                          pipeline=PipelineStages(num_blocks=12, first_block=0))


def test_any_matrix_operator_matches_the_eager_kernels(tiny_net, fuse_all):
    # a zero row (that member's gradient becomes 0) and a member no row reads
    from gradsmooth import MatrixOperator

    matrix = np.eye(6)
    matrix[0] = 0.0
    matrix[:, 5] = 0.0
    matrix[1] = [0.0, 0.5, 0.25, 0.0, 0.25, 0.0]
    models = [tiny_net(), tiny_net()]
    opts = [GradientSmoothing(torch.optim.SGD(m.parameters(), lr=0.1), m, operator=MatrixOperator(matrix),
                              mode="gradient", fused=f) for m, f in zip(models, (False, True))]
    x = torch.randn(8, 5, dtype=torch.float64)
    for m, o in zip(models, opts):
        m(x).pow(2).mean().backward()
        o.step()
    for (k, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14, msg=k)
