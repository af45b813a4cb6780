"""The differential test's registry and driver: every execution path of every optimizer, held to
the NumPy oracle (gradsmooth.reference) under the base's flags, dtypes, writes to the parameters
between steps and a checkpoint round trip, in the style of torch's ``OptimizerInfo``.

A path is registered here (:func:`register`) and the matrix in ``test_differential.py`` runs it
over every case it supports: a kernel added later joins the gate by registering, not by
writing a test. A case runs a few steps; before each, the oracle takes the parameters as they
are (after whatever wrote them), steps them in float64 with the same gradients, and the path's
result must equal it to the dtype's rounding (:func:`tolerance`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradsmooth.reference import Smoothed

#: Bases and their flags: the oracle's optimizer (gradsmooth.reference, with torch's or MLX's
#: semantics) and the framework's, from one dict of hyperparameters and flags.
ADAMW = {"lr": 0.05, "betas": (0.8, 0.6), "eps": 1e-8, "weight_decay": 0.1}  # a small beta2: amsgrad matters
SGD = {"lr": 0.05, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01}
FLAGS = {
    "adamw": [{}, {"maximize": True}, {"amsgrad": True}],
    "sgd": [{}, {"maximize": True}, {"nesterov": True}, {"momentum": 0.0}, {"dampening": 0.3}],
    "mlx-adamw": [{}, {"bias_correction": True}],
    "mlx-sgd": [{}, {"nesterov": True}],
}
DTYPES = ("float32", "float64", "bfloat16")
STEPS = 4
EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7}
# the rounding a path may add to the oracle's step, relative to the step's largest change:
# float64 and float32 compute in their dtype; bfloat16 parameters keep bfloat16 optimizer state
REL = {"float64": 1e-10, "float32": 3e-5, "bfloat16": 6e-2}


@dataclass(frozen=True)
class Path:
    """One execution path: ``build(model, base, flags, dtype)`` makes the optimizer that runs it
    (with the fixture ``monkeypatch`` forcing kernels where needed); ``bases`` and ``dtypes`` are
    what it serves; ``refuses(flags)`` says a flag it refuses by name (tested apart)."""

    name: str
    framework: str  # "torch" or "mlx"
    bases: tuple[str, ...]
    build: Callable[..., Any]
    mode: str = "update"
    dtypes: tuple[str, ...] = DTYPES
    compiled: str | None = None  # the word the plan prints for the kernel under test ("fused"), if any
    refuses: Callable[[dict], str | None] = lambda flags: None
    stage: bool = False  # a pipeline stage: needs torch.distributed
    extra: dict[str, Any] = field(default_factory=dict)


PATHS: dict[str, Path] = {}


def register(path: Path) -> Path:
    """Add ``path`` to the matrix (its name must be new)."""
    assert path.name not in PATHS, path.name
    PATHS[path.name] = path
    return path


def tolerance(dtype: str, expected: dict[str, np.ndarray], before: dict[str, np.ndarray]) -> Callable[[str], Any]:
    """Per parameter, how far a path's result may sit from the oracle's: one unit in the last
    place of the dtype (the result is rounded once to it) plus ``REL`` of the step's largest change."""
    largest = max(float(np.max(np.abs(expected[k] - before[k]))) for k in expected)
    return lambda k: EPS[dtype] * np.abs(expected[k]) + REL[dtype] * largest + 1e-300


# -- writes to the parameters between steps (what user code does, and what torch allows) --------------


def torch_writes() -> dict[str, Callable[[], Callable[[Any, int], None]]]:
    """Each pattern as a factory of ``write(model, step)`` (a pattern may keep state: a slow copy,
    a persistent buffer). All of them bypass nothing the optimizer may rely on, or bypass
    version counters: the optimizer must see the parameters as they are at its next step."""
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    def clamp():  # WGAN-style clipping, max-norm constraints
        return lambda model, t: [p.data.clamp_(-0.3, 0.3) for p in model.parameters()]

    def lookahead():  # older timm's Lookahead: fast.data.copy_(slow) every other step
        slow: dict[str, Any] = {}

        def write(model, t):
            for k, p in model.named_parameters():
                s = slow.setdefault(k, p.detach().clone())
                s.add_(p.detach() - s, alpha=0.5)
                if t % 2 == 1:
                    p.data.copy_(s)
        return write

    def to_parameters():  # averaging into one persistent buffer: no .data in user code
        flat: list[Any] = []

        def write(model, t):
            with torch.no_grad():
                vec = parameters_to_vector(model.parameters()) * 0.99
                if not flat:
                    flat.append(vec.clone())
                flat[0].copy_(vec)
                vector_to_parameters(flat[0], model.parameters())
        return write

    def load_state_dict():
        return lambda model, t: model.load_state_dict({k: v * 0.98 for k, v in model.state_dict().items()})

    def set_():
        def write(model, t):
            with torch.no_grad():
                for p in model.parameters():
                    p.set_(p.detach() * 0.98)
        return write

    def data_assign():
        def write(model, t):
            for p in model.parameters():
                p.data = p.data * 0.97
        return write

    def outer():  # an outer optimizer's own step after the inner one (a foreach kernel under no_grad)
        def write(model, t):
            with torch.no_grad():
                torch._foreach_mul_(list(model.parameters()), 0.995)
        return write

    return {"none": lambda: (lambda model, t: None), "clamp": clamp, "lookahead": lookahead,
            "vector_to_parameters": to_parameters, "load_state_dict": load_state_dict, "set_": set_,
            "data_assign": data_assign, "outer": outer}


def mlx_writes() -> dict[str, Callable[[], Callable[[dict], dict]]]:
    """MLX parameters are values: a write is a new tree handed to the next step."""
    import mlx.core as mx

    return {"none": lambda: (lambda params: params),
            "clamp": lambda: (lambda params: {k: mx.clip(v, -0.3, 0.3) for k, v in params.items()})}


# -- the oracle --------------------------------------------------------------------------------------


def oracle_base(base: str, flags: dict) -> Any:
    """The NumPy oracle's base optimizer for ``base`` with ``flags``."""
    from gradsmooth.reference import SGD as RefSGD
    from gradsmooth.reference import AdamW as RefAdamW
    from gradsmooth.reference import mlx_optimizers

    if base == "adamw":
        return RefAdamW(**ADAMW, **flags)
    if base == "sgd":
        return RefSGD(**{**SGD, **flags})
    if base == "mlx-adamw":
        return mlx_optimizers.AdamW(ADAMW["lr"], betas=ADAMW["betas"], eps=ADAMW["eps"],
                                    weight_decay=ADAMW["weight_decay"], **flags)
    return mlx_optimizers.SGD(SGD["lr"], momentum=SGD["momentum"], weight_decay=SGD["weight_decay"], **flags)


def run_case(run: Any, oracle: Smoothed, dtype: str, checkpoint_at: int | None, seed: int = 0) -> Iterator[int]:
    """Step ``run`` and the oracle side by side; check every parameter after every step. ``run``
    has ``params()`` (float64 NumPy copies), ``step(grads)`` (returns the gradients as the
    framework rounded them), ``write(t)`` and ``round_trip()`` (a checkpoint saved and loaded
    into a new optimizer)."""
    rng = np.random.default_rng(seed)
    for t in range(STEPS):
        if t == checkpoint_at:
            run.round_trip()
        before = run.params()
        grads = run.step({k: rng.standard_normal(v.shape) for k, v in before.items()})
        expected = oracle.step(before, grads)
        got = run.params()
        tol = tolerance(dtype, expected, before)
        for k in expected:
            err = np.abs(got[k] - expected[k])
            worst = float(np.max(err - tol(k)))
            assert worst <= 0, (f"{k} at step {t}: off by {float(np.max(err)):.3g} (tolerance exceeded by {worst:.3g}; "
                                f"largest change {float(np.max(np.abs(expected[k] - before[k]))):.3g})")
        run.write(t)
        yield t


def saved(obj: Any) -> Any:
    """``obj`` through torch.save and torch.load, as a checkpoint on disk."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)
