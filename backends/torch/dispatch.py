"""Which kernel mixes a group, chosen in one place (`select`), and a group's step planned and
run through the kernel contract (``contract.py``): `plan` before anything changes
(compiling, allocating, binding), `run` after.

The compiled kernels are registered in `COMPILED`, in order of preference, each for the kinds
it serves; the eager kernel serves every kind and is the fallback. Which kernel serves which
kinds, and why it exists, is measured: docs/architecture.md has the table, benchmarks/README.md
the measurements. A kernel that cannot compile (no compiler, a compiler error) warns once and
is given up for that kind, dtype and device: the eager kernel runs instead, now and later.
Running out of memory while compiling is not a compile failure: it propagates (the step raises
before anything changed, and the next step compiles again).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from . import inductor
from .arithmetic import KINDS
from .bands import BandLayout
from .blocked import BLOCKED
from .contract import Call, GroupKernel, Members
from .eager import EAGER
from .inductor import INDUCTOR

__all__ = ["COMPILED", "KERNELS", "Planned", "give_up", "path", "plan", "ready", "run", "select"]

#: The compiled kernels, in order of preference, and the kinds each serves: each kept only where
#: it beats every simpler path by more than 10 % on an optimizer step (docs/architecture.md).
COMPILED: tuple[tuple[GroupKernel, frozenset[str]], ...] = (
    (BLOCKED, frozenset({"adamw"})),
    (INDUCTOR, frozenset({"update", "gradient", "adamw", "sgd", "sgd-plain"})),
)

#: Every kernel and the kinds it serves: the eager one (every kind), then the compiled ones.
KERNELS: tuple[tuple[GroupKernel, frozenset[str]], ...] = ((EAGER, frozenset(KINDS)), *COMPILED)

_GIVEN_UP: set[tuple[str, str, torch.dtype, torch.device]] = set()


def select(kind: str, dtype: torch.dtype, device: torch.device, numel: int, contiguous: bool = True,
           fused: bool | None = None) -> tuple[GroupKernel, str | None]:
    """The kernel that mixes a group of ``kind`` (members of ``dtype`` on ``device``, ``numel``
    elements each), and, for the eager kernel, why (None for a compiled one). ``fused``: None
    (a compiled kernel where one can run and its compiler is there), True (a compiled kernel
    even where no compiler was found: it warns if it cannot compile) or False (eager). The
    eager kernel's reason is the last compiled kernel's (the most general one's) refusal."""
    if fused is False:
        return EAGER, "fused=False"
    device = torch.device(device)
    last: str | None = None  # the reason of the last (most general) kernel that refused
    for kernel, kinds in COMPILED:
        if kind not in kinds:
            continue
        reason = kernel.refuses(kind, dtype, device, numel, contiguous)
        if reason is not None and fused and reason == inductor.compiler_missing(device.type):
            reason = None  # fused=True: try to compile anyway
        if reason is None and (kernel.name, kind, dtype, device) in _GIVEN_UP:
            reason = "its compiled kernel did not compile"
        if reason is None:
            return kernel, None
        last = reason
    return EAGER, last or "no compiled kernel for this kind"


def path(kernel: GroupKernel, reason: str | None, band: BandLayout, kind: str, dtype: torch.dtype,
         device: torch.device) -> str:
    """How ``print(opt.plan)`` shows a group's path: the compiled kernel's name ("blocked",
    "inductor"; "... (compiles at the first step)" until it is ready), or "eager (why)"."""
    if reason is not None:
        return f"eager ({reason})"
    ready_now = kernel.prepared(kind, band, dtype, torch.device(device))
    return kernel.name if ready_now else f"{kernel.name} (compiles at the first step)"


def give_up(kernel: GroupKernel, kind: str, dtype: torch.dtype, device: torch.device, error: BaseException) -> None:
    """Run the eager kernel for ``kind`` on ``dtype`` members on ``device`` from now on; say so once."""
    key = (kernel.name, kind, dtype, torch.device(device))
    if key in _GIVEN_UP:
        return
    _GIVEN_UP.add(key)
    first_line = str(error).splitlines()[0] if str(error) else ""
    warnings.warn(f"gradsmooth: the {kernel.name} kernel for {kind} ({dtype} on {device}) cannot run "
                  f"({type(error).__name__}: {first_line}); the eager kernel runs instead (same result, slower)",
                  RuntimeWarning, stacklevel=4)


def ready(kernel: GroupKernel, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> bool:
    """`GroupKernel.prepare` (compiling on first use), or False where that failed (given
    up, with one warning). Running out of memory propagates: it is not a compile failure."""
    try:
        kernel.prepare(kind, band, dtype, device)
    except Exception as error:
        if _out_of_memory(error):
            raise
        give_up(kernel, kind, dtype, device, error)
        return False
    return True


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from, as dynamo wraps them) is running out
    of memory: host (``MemoryError``) or device (``torch.OutOfMemoryError``)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class Planned(NamedTuple):
    """A group's step, ready to run: the kernel's call, and the eager kernel's call bound in
    advance where the kernel may refuse its call."""

    kernel: GroupKernel
    members: Members
    call: Call
    fallback: Call | None


def plan(members: Members, band: BandLayout, coefficients: Tensor | None, fused: bool | None) -> Planned:
    """Select, prepare (compile), allocate and bind a group's step. Changes nothing."""
    first = members.first
    contiguous = all(t.is_contiguous() for ts in members.arrays for t in ts)
    kernel, _ = select(members.kind, first.dtype, first.device, first.numel(), contiguous, fused)
    if kernel is not EAGER and not ready(kernel, members.kind, band, first.dtype, first.device):
        kernel = EAGER
    call = _bound(kernel, members, band, coefficients)
    fallback = _bound(EAGER, members, band, coefficients) if kernel.refusing else None
    return Planned(kernel, members, call, fallback)


def _bound(kernel: GroupKernel, members: Members, band: BandLayout, coefficients: Tensor | None) -> Call:
    first = members.first
    if kernel is EAGER:
        kernel.prepare(members.kind, band, first.dtype, first.device)
    return kernel.bind(members, band, coefficients, kernel.scratch(members, band))


def run(planned: Planned) -> None:
    """Mix the group: the kernel's call, or the eager kernel's where the call refused (before it
    wrote anything; the kernel is then given up, with one warning)."""
    if planned.fallback is not None:
        try:
            planned.call()
            return
        except RuntimeError as error:
            if _out_of_memory(error):  # not a refusal: no kernel is given up for it
                raise
            first = planned.members.first
            give_up(planned.kernel, planned.members.kind, first.dtype, first.device, error)
            planned.fallback()
            return
    planned.call()
