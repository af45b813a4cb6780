"""The blocked CPU kernels of the native steps: equal to the eager kernels for every band shape,
block boundary and thread count; the ring schedule; the disk cache; a compiler that fails."""

import pytest
import torch

import gradsmooth.backends.torch.blocked as blocked
from gradsmooth import make_operator
from gradsmooth.backends.torch.fused import FusedKernel, band_pattern, compiler_missing
from gradsmooth.backends.torch.mixing import band_program, device_weights
from gradsmooth.backends.torch.native_steps import (adamw_coefficients, adamw_mix, coefficient_table, native_blocks,
                                                    sgd_coefficients, sgd_mix)

pytestmark = pytest.mark.skipif(compiler_missing("cpu") is not None, reason="no C++ compiler")

BANDS = [  # window options, members
    ({"window": 3}, 2), ({"window": 3}, 7), ({"window": 5, "kernel": "triangular", "boundary": "mirror"}, 6),
    ({"window": 5, "kernel": "gaussian", "boundary": "reflect"}, 9), ({"window": 3, "alpha": 0.5}, 4),
    ({"window": 7, "boundary": "zero"}, 5),
]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 positions: the test sizes cross block edges and end in a partial block."""
    monkeypatch.setattr(blocked, "CHUNK", 64)


def _state(n, size, dtype, kind):
    gen = torch.Generator().manual_seed(n * 1000 + size)
    rand = lambda: [torch.randn(size, generator=gen, dtype=dtype) for _ in range(n)]  # noqa: E731
    p, g = rand(), rand()
    state = {"adamw": lambda: [rand(), [t.abs() for t in rand()]], "sgd": lambda: [rand()], "sgd-plain": list}[kind]()
    return p, g, state


def _tables(kind, n, dtype):
    if kind == "adamw":
        groups = [{"lr": 0.01 * (1 + j % 3), "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1} for j in range(n)]
        return adamw_coefficients(groups, [3.0] * n)
    momentum = 0.9 if kind == "sgd" else 0.0
    groups = [{"lr": 0.05, "momentum": momentum, "dampening": 0.1 * (j % 2), "nesterov": momentum > 0 and j % 3 == 0,
               "weight_decay": 0.01} for j in range(n)]
    return sgd_coefficients(groups, [False] * n)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["adamw", "sgd", "sgd-plain"])
@pytest.mark.parametrize("options, n", BANDS, ids=[f"{o}-{n}" for o, n in BANDS])
def test_blocked_kernel_equals_the_eager_kernel(small_blocks, options, n, kind, dtype, threads):
    band = make_operator(None, **options).band(n, 1)
    size = 5 * 64 + 17  # five full blocks and a partial one
    p, g, state = _state(n, size, dtype, kind)
    table = coefficient_table(_tables(kind, n, dtype), p[0])
    expected = [[t.clone() for t in ts] for ts in (p, g, *state)]
    blocks = native_blocks(kind, [expected])[0]
    if kind == "adamw":
        adamw_mix(band_program(band), *expected, table, blocks)
    else:  # SmoothedSGD's eager kernel; without momentum it takes no buffers
        sgd_mix(band_program(band), *expected[:2], expected[2] if kind == "sgd" else None, table, blocks)
    pattern, values = band_pattern(band)
    kernel = FusedKernel(pattern, kind)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert kernel.ready(dtype, torch.device("cpu")) and kernel.status(dtype, torch.device("cpu")) == "compiled"
        kernel(p, g, *state, device_weights(values, dtype, torch.device("cpu")).view(-1), table.view(-1))
    finally:
        torch.set_num_threads(before)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}
    for name, got, want in zip(["p", "g", "m", "v"] if kind == "adamw" else ["p", "g", "b"], (p, g, *state), expected):
        for j, (a, b) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b, **tol, msg=f"{name}[{j}]")


@pytest.mark.parametrize("kind", ["adamw", "sgd", "sgd-plain"])
def test_members_without_elements_change_nothing(kind):
    band = make_operator(None, window=3).band(4, 1)
    p, g, state = _state(4, 0, torch.float32, kind)
    pattern, values = band_pattern(band)
    FusedKernel(pattern, kind)(p, g, *state, device_weights(values, torch.float32, torch.device("cpu")).view(-1),
                               coefficient_table(_tables(kind, 4, torch.float32), p[0]).view(-1))
    assert all(t.numel() == 0 for ts in (p, g, *state) for t in ts)


@pytest.mark.parametrize("options, n, ring", [({"window": 3}, 8, 3), ({"window": 5}, 8, 5), ({"window": 1}, 4, 1),
                                              ({"window": 5, "boundary": "mirror"}, 6, 5)])
def test_the_ring_holds_each_rows_terms_until_the_row_is_finished(options, n, ring):
    pattern = band_pattern(make_operator(None, **options).band(n, 1))[0]
    assert blocked.ring_size(pattern) == ring
    finished_at = {l: max((*js, l)) for l, js in enumerate(pattern)}
    for l, js in enumerate(pattern):  # no term's slot was overwritten by a later update before row l ran
        assert all(finished_at[l] - j < ring for j in js)


def test_the_library_is_compiled_once_and_cached_on_disk(tmp_path, monkeypatch, small_blocks):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(blocked, "_cache_dir", lambda: tmp_path / "gradsmooth")
    source = blocked.blocked_source(((0, 1), (0, 1)), "adamw", "float")
    blocked.load_blocked.cache_clear()
    blocked.load_blocked(source)
    built = list((tmp_path / "gradsmooth").glob("blocked_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    blocked.load_blocked.cache_clear()  # a new process: loads the file, compiles nothing
    calls = []
    monkeypatch.setattr(blocked.subprocess, "run", lambda *a, **k: calls.append(a))
    blocked.load_blocked(source)
    assert calls == [] and built[0].stat().st_mtime_ns == stamp


def test_a_compiler_that_fails_warns_once_and_the_eager_kernels_run(tmp_path, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    monkeypatch.setattr(blocked, "_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "false")  # exits 1, prints nothing
    blocked.load_blocked.cache_clear()
    kernel = FusedKernel(((0, 1), (0, 1)), "sgd")
    with pytest.warns(RuntimeWarning, match=r"could not compile the blocked kernel.*the eager kernels run instead"):
        assert not kernel.ready(torch.float32, torch.device("cpu"))
    assert kernel.status(torch.float32, torch.device("cpu")) == "failed"
    blocked.load_blocked.cache_clear()

