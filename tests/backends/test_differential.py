"""The gate: every registered execution path against the NumPy oracle, over the base's flags,
the dtypes, writes to the parameters between steps and a checkpoint round trip
(tests/backends/differential.py holds the registry and the driver)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

from gradsmooth.reference import Smoothed
from tests.backends.differential import (ADAMW, DTYPES, FLAGS, PATHS, SGD, STEPS, Path, mlx_writes, oracle_base,
                                         register, run_case, saved, torch_writes)

N_BLOCKS, D = 5, 6


# -- torch ------------------------------------------------------------------------------------------

def torch_base(base: str, flags: dict):
    import torch

    if base == "adamw":
        return lambda params: torch.optim.AdamW(params, **ADAMW, **flags)
    return lambda params: torch.optim.SGD(params, **{**SGD, **flags})


def forced(kernel_name: str, kind: str, monkeypatch) -> bool | None:
    """Make ``kernel_name`` the one kernel that runs ``kind`` (the members here are tiny: no size
    threshold); the ``fused`` argument that selects it."""
    from gradsmooth.backends.torch import dispatch, inductor

    if kernel_name == "eager":
        return False
    monkeypatch.setattr(dispatch, "COMPILED", tuple((k, kinds) for k, kinds in dispatch.KERNELS if k.name == kernel_name))
    monkeypatch.setattr(inductor, "MIN_ELEMENTS", 0)
    return True


def wrapper(mode: str, kernel_name: str):
    def build(model, base, flags, dtype, monkeypatch):
        from gradsmooth.backends.torch import GradientSmoothing

        fused = forced(kernel_name, mode, monkeypatch)
        return GradientSmoothing(torch_base(base, flags)(model.parameters()), model, mode=mode, fused=fused)
    return build


def native(kernel_name: str):
    def build(model, base, flags, dtype, monkeypatch):
        from gradsmooth.backends.torch import SmoothedAdamW, SmoothedSGD

        fused = forced(kernel_name, base, monkeypatch)
        cls, hyper = (SmoothedAdamW, ADAMW) if base == "adamw" else (SmoothedSGD, SGD)
        return cls(model, **{**hyper, **flags}, fused=fused)
    return build


def stage(mode: str):
    def build(model, base, flags, dtype, monkeypatch):
        from gradsmooth.backends.torch import GradientSmoothing, PipelineStages

        return GradientSmoothing(torch_base(base, flags)(model.parameters()), model, mode=mode,
                                 pipeline=PipelineStages(N_BLOCKS, 0))
    return build


def amsgrad_refused(flags: dict) -> str | None:
    return "amsgrad" if flags.get("amsgrad") else None


def register_torch_kernels() -> None:
    """A path for every kernel the torch adapter registers (dispatch.KERNELS) and every kind it
    serves, through the optimizer that runs that kind; and the pipeline stage's path."""
    try:
        import torch

        from gradsmooth.backends.torch import dispatch
    except ImportError:
        return
    for kernel, kinds in dispatch.KERNELS:
        dtypes = tuple(d for d in DTYPES if kernel.refuses("adamw", getattr(torch, d), torch.device("cpu"), 1 << 20, True)
                       in (None, dispatch.inductor.compiler_missing("cpu")))
        compiled = None if kernel.name == "eager" else kernel.name
        for mode in ("update", "gradient"):
            if mode in kinds:
                register(Path(f"torch-wrapper-{mode}-{kernel.name}", "torch", ("adamw", "sgd"), wrapper(mode, kernel.name),
                              mode, dtypes=dtypes, compiled=compiled))
        bases = tuple(b for b, ks in (("adamw", {"adamw"}), ("sgd", {"sgd", "sgd-plain"})) if ks <= kinds)
        if bases:
            register(Path(f"torch-native-{kernel.name}", "torch", bases, native(kernel.name), dtypes=dtypes,
                          compiled=compiled, refuses=amsgrad_refused))
    for mode in ("update", "gradient"):
        register(Path(f"torch-pipeline-stage-{mode}", "torch", ("adamw", "sgd"), stage(mode), mode, stage=True))


register_torch_kernels()


class TorchRun:
    """A small model with a stack of ``N_BLOCKS`` linear blocks, stepped by a path's optimizer."""

    def __init__(self, path: Path, base: str, flags: dict, dtype: str, write: str, monkeypatch) -> None:
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.dtype = getattr(torch, dtype)
        self.model = nn.ModuleDict({"embed": nn.Linear(3, D), "blocks": nn.ModuleList(nn.Linear(D, D) for _ in range(N_BLOCKS)),
                                    "head": nn.Linear(D, 2)}).to(self.dtype)
        self.make = lambda: path.build(self.model, base, flags, dtype, monkeypatch)
        self.opt = self.make()
        self._write = torch_writes()[write]()

    def params(self) -> dict[str, np.ndarray]:
        return {k: p.detach().double().numpy().copy() for k, p in self.model.named_parameters()}

    def step(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        for k, p in self.model.named_parameters():
            p.grad = torch.tensor(grads[k]).to(self.dtype)
        rounded = {k: p.grad.double().numpy().copy() for k, p in self.model.named_parameters()}
        self.opt.step()
        return rounded

    def write(self, t: int) -> None:
        self._write(self.model, t)

    def round_trip(self) -> None:
        state = saved(self.opt.state_dict())
        self.opt = self.make()
        self.opt.load_state_dict(state)

    def paths(self) -> tuple[str, ...]:
        return self.opt.plan.paths


# -- MLX ----------------------------------------------------------------------------------------------

def mlx_path(mode: str, compiled: bool):
    def build(base, flags):
        import mlx.optimizers as optim

        from gradsmooth.backends.mlx import GradientSmoothing

        if base == "mlx-adamw":
            made = optim.AdamW(learning_rate=ADAMW["lr"], betas=list(ADAMW["betas"]), eps=ADAMW["eps"],
                               weight_decay=ADAMW["weight_decay"], **flags)
        else:
            made = optim.SGD(learning_rate=SGD["lr"], momentum=SGD["momentum"], weight_decay=SGD["weight_decay"],
                             **flags)
        return GradientSmoothing(made, mode=mode)
    return build


for _mode in ("update", "gradient"):
    for _compiled in (True, False):
        register(Path(f"mlx-{_mode}-{'compiled' if _compiled else 'eager'}", "mlx", ("mlx-adamw", "mlx-sgd"),
                      mlx_path(_mode, _compiled), _mode, extra={"compiled": _compiled}))


class MLXRun:
    """The same model as a parameter tree, stepped by the MLX adapter (under mx.compile or not)."""

    def __init__(self, path: Path, base: str, flags: dict, dtype: str, write: str) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        self.mx, self.dtype = mx, getattr(mx, dtype)
        rng = np.random.default_rng(0)
        shapes = {"embed.weight": (D, 3), "embed.bias": (D,), "head.weight": (2, D), "head.bias": (2,)}
        for i in range(N_BLOCKS):
            shapes |= {f"blocks.{i}.weight": (D, D), f"blocks.{i}.bias": (D,)}
        self.tree = tree_unflatten([(k, mx.array(rng.uniform(-0.4, 0.4, s)).astype(self.dtype)) for k, s in shapes.items()])
        self.make = lambda: path.build(base, flags)
        self.compiled = path.extra["compiled"]
        self._start(self.make())
        self._write = mlx_writes()[write]()

    def _start(self, opt) -> None:
        mx = self.mx
        self.opt = opt
        opt.init(self.tree)
        step = lambda params, grads: opt.apply_gradients(grads, params)  # noqa: E731
        self.fn = mx.compile(step, inputs=opt.state, outputs=opt.state) if self.compiled else step

    def _flat(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.tree))

    def params(self) -> dict[str, np.ndarray]:
        return {k: np.array(v.astype(self.mx.float32) if v.dtype == self.mx.bfloat16 else v, dtype=np.float64)
                for k, v in self._flat().items()}

    def step(self, grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mlx.utils import tree_unflatten

        mx = self.mx
        made = {k: mx.array(g).astype(self.dtype) for k, g in grads.items()}
        rounded = {k: np.array(v.astype(mx.float32) if v.dtype == mx.bfloat16 else v, dtype=np.float64)
                   for k, v in made.items()}
        self.tree = self.fn(self.tree, tree_unflatten(list(made.items())))
        mx.eval(self.tree)
        return rounded

    def write(self, t: int) -> None:
        from mlx.utils import tree_unflatten

        self.tree = tree_unflatten(list(self._write(self._flat()).items()))

    def round_trip(self) -> None:
        from mlx.utils import tree_flatten, tree_unflatten

        mx = self.mx
        on_disk = [(k, np.array(v)) for k, v in tree_flatten(self.opt.state)]  # bfloat16 state: not in NumPy
        opt = self.make()
        opt.init(self.tree)
        opt.state = tree_unflatten([(k, mx.array(v)) for k, v in on_disk])
        self._start(opt)

    def paths(self) -> tuple[str, ...]:
        return ()


# -- the matrix ---------------------------------------------------------------------------------------

def cases() -> Iterator[tuple[str, str, tuple, str, str, bool]]:
    """``(path, base, flags, dtype, write, checkpoint)``, covering: every path with every flag of
    its bases in every dtype it serves; every path under every write pattern; every path through
    a checkpoint round trip after a write."""
    writes = {"torch": TORCH_WRITES, "mlx": MLX_WRITES}
    for name, path in PATHS.items():
        first = path.bases[0]
        exact = "float64" if "float64" in path.dtypes and path.framework == "torch" else "float32"
        for base in path.bases:
            for flags in FLAGS[base]:
                for dtype in path.dtypes:
                    if path.framework == "mlx" and dtype == "float64" and flags:
                        continue
                    yield name, base, tuple(sorted(flags.items())), dtype, "none", False
        for write in writes[path.framework][1:]:
            yield name, first, (), exact, write, False
        yield name, first, (), "float32", writes[path.framework][1], True


TORCH_WRITES = ["none", "clamp", "lookahead", "vector_to_parameters", "load_state_dict", "set_", "data_assign", "outer"]
MLX_WRITES = ["none", "clamp"]


def _id(case: tuple) -> str:
    name, base, flags, dtype, write, checkpoint = case
    flag = ",".join(f"{k}={v}" for k, v in flags) or "default"
    return f"{name}-{base}[{flag}]-{dtype}-{write}" + ("-checkpoint" if checkpoint else "")


@pytest.mark.parametrize("case", list(cases()), ids=_id)
def test_every_path_equals_the_oracle(case, monkeypatch, request):
    name, base, flags, dtype, write, checkpoint = case
    path, flags = PATHS[name], dict(flags)
    if path.framework == "torch":
        pytest.importorskip("torch")
        if path.stage:
            request.getfixturevalue("process_group")
    else:
        pytest.importorskip("mlx.core")
    if path.refuses(flags):
        pytest.skip(f"{name} refuses {path.refuses(flags)} by name (tested in its module's tests)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a kernel that falls back to eager would warn
        run = (TorchRun(path, base, flags, dtype, write, monkeypatch) if path.framework == "torch"
               else MLXRun(path, base, flags, dtype, write))
        oracle = Smoothed(oracle_base(base, flags), [g.names for g in run.opt.plan.groups], mode=path.mode, window=3)
        steps = list(run_case(run, oracle, dtype, checkpoint_at=2 if checkpoint else None))
    assert steps == list(range(STEPS))
    if path.compiled:  # the kernel under test is the one that ran
        assert path.compiled in run.paths(), run.paths()
    elif path.framework == "torch":
        assert all(p.startswith("eager") for p in run.paths()), run.paths()


def test_every_registered_path_has_cases():
    names = {case[0] for case in cases()}
    assert names == set(PATHS)
    pytest.importorskip("torch")
    pytest.importorskip("mlx.core")
    assert list(torch_writes()) == TORCH_WRITES and list(mlx_writes()) == MLX_WRITES
    assert {"torch", "mlx"} == {p.framework for p in PATHS.values()}
    assert all(set(p.dtypes) <= set(DTYPES) for p in PATHS.values())
