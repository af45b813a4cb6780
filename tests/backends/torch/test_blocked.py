"""The blocked CPU kernels (backends/torch/blocked.py): equal to the eager kernel for every kind,
band shape, block boundary and thread count; the ring schedule; the disk cache; a compiler that
fails."""

import pytest
import torch

import gradsmooth.backends.torch.blocked as blocked
from gradsmooth import make_operator
from gradsmooth.backends.torch import dispatch
from gradsmooth.backends.torch.bands import layout
from gradsmooth.backends.torch.blocked import BLOCKED
from gradsmooth.backends.torch.coefficients import adamw_coefficients, coefficient_table, sgd_coefficients
from gradsmooth.backends.torch.contract import Members
from gradsmooth.backends.torch.eager import EAGER
from gradsmooth.backends.torch.inductor import compiler_missing

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


KINDS = ["adamw", "sgd", "sgd-plain", "update", "gradient"]


def _arrays(n, size, dtype, kind):
    gen = torch.Generator().manual_seed(n * 1000 + size)
    rand = lambda: [torch.randn(size, generator=gen, dtype=dtype) for _ in range(n)]  # noqa: E731
    return {"adamw": lambda: [rand(), rand(), rand(), [t.abs() for t in rand()]], "sgd": lambda: [rand(), rand(), rand()],
            "sgd-plain": lambda: [rand(), rand()], "update": lambda: [rand(), rand()], "gradient": lambda: [rand()]}[kind]()


def _coefficients(kind, n, like):
    if kind == "adamw":
        groups = [{"lr": 0.01 * (1 + j % 3), "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.1} for j in range(n)]
        return coefficient_table(adamw_coefficients(groups, [3.0] * n), like).view(-1)
    if kind == "update":
        return torch.linspace(0.9, 1.0, n, dtype=like.dtype)  # decay factors
    if kind == "gradient":
        return None
    momentum = 0.9 if kind == "sgd" else 0.0
    groups = [{"lr": 0.05, "momentum": momentum, "dampening": 0.1 * (j % 2), "nesterov": momentum > 0 and j % 3 == 0,
               "weight_decay": 0.01, "maximize": j == 1} for j in range(n)]
    return coefficient_table(sgd_coefficients(groups, [False] * n), like).view(-1)


def _call(kernel, kind, arrays, bands, coefficients):
    members = Members(kind, arrays)
    kernel.prepare(kind, bands, arrays[0][0].dtype, torch.device("cpu"))
    kernel.bind(members, bands, coefficients, kernel.scratch(members, bands))()


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options, n", BANDS, ids=[f"{o}-{n}" for o, n in BANDS])
def test_blocked_kernel_equals_the_eager_kernel(small_blocks, options, n, kind, dtype, threads):
    bands = layout(make_operator(None, **options).band(n, 1), minus_identity=kind == "update")
    size = 5 * 64 + 17  # five full blocks and a partial one
    got = _arrays(n, size, dtype, kind)
    expected = [[t.clone() for t in ts] for ts in got]
    coefficients = _coefficients(kind, n, got[0][0])
    _call(EAGER, kind, expected, bands, coefficients)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _call(BLOCKED, kind, got, bands, coefficients)
        assert BLOCKED.prepared(kind, bands, dtype, torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-13, "atol": 1e-13}
    for k, (gs, ws) in enumerate(zip(got, expected)):
        for j, (a, b) in enumerate(zip(gs, ws)):
            torch.testing.assert_close(a, b, **tol, msg=f"array {k} of member {j}")


@pytest.mark.parametrize("kind", KINDS)
def test_members_without_elements_change_nothing(kind):
    bands = layout(make_operator(None, window=3).band(4, 1), minus_identity=kind == "update")
    arrays = _arrays(4, 0, torch.float32, kind)
    _call(BLOCKED, kind, arrays, bands, _coefficients(kind, 4, arrays[0][0]))
    assert all(t.numel() == 0 for ts in arrays for t in ts)


@pytest.mark.parametrize("options, n, ring", [({"window": 3}, 8, 3), ({"window": 5}, 8, 5), ({"window": 1}, 4, 1),
                                              ({"window": 5, "boundary": "mirror"}, 6, 5)])
def test_the_ring_holds_each_rows_terms_until_the_row_is_finished(options, n, ring):
    pattern = layout(make_operator(None, **options).band(n, 1)).pattern
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


def test_a_compiler_that_fails_warns_once_and_the_eager_kernel_runs(tmp_path, monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    monkeypatch.setattr(blocked, "_cache_dir", lambda: tmp_path)
    monkeypatch.setattr(blocked, "_LOADED", set())
    monkeypatch.setattr(dispatch, "_GIVEN_UP", set())
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "false")  # exits 1, prints nothing
    blocked.load_blocked.cache_clear()
    bands = layout(make_operator(None, window=3).band(2, 1))
    cpu = torch.device("cpu")
    with pytest.warns(RuntimeWarning, match=r"could not compile the blocked kernel.*the eager kernel runs instead"):
        assert not dispatch.ready(BLOCKED, "sgd", bands, torch.float32, cpu)
    assert dispatch.select("sgd", torch.float32, cpu, 100)[0] is not BLOCKED  # the next kernel that serves the kind
    blocked.load_blocked.cache_clear()
