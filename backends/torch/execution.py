"""One smoothing step on torch tensors, group by group, as plain functions (the way torch.optim
puts an optimizer's arithmetic in functions beside its class).

A step has two halves around the base optimizer's step. Before it, `plan_group_steps`
plans every group's work and allocates all it needs (`GroupStep`: the band's program,
the fused kernel's bound call, the decay factors, the snapshot buffer; then one
`Workspace` for all groups), so anything that can fail fails before the first
write. Then `run_group_step` executes one group: its compiled kernel where it has one,
else the eager kernels (also when the kernel refuses to run: it never compiles inside a step).

Update mode (the paper's) mixes the base's step: ``theta_l <- d_l theta_l + sum_j A[l, j] delta_j``
with ``delta_j = p_j - d_j theta_j`` recovered from a snapshot of ``theta`` taken before the
base step (`Snapshots`). Gradient mode mixes the gradients before the base step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradsmooth import Band

from . import blocked
from .fused import FUSED_MIN_ELEMENTS, FusedKernel, band_pattern, compiler_missing, fused_kernel
from .groups import DTensor, local
from .mixing import (BandProgram, Workspace, band_program, compute_dtype, device_weights, mix_gradients, mix_updates,
                     warm_weights)

__all__ = ["GroupStep", "Snapshots", "base_step", "check_fused", "eager_reason", "fused_call", "group_path", "plan_group_step",
           "raise_if_not_finite", "refuse_sparse", "run_group_step", "to_device"]

class GroupStep(NamedTuple):
    """One group's work at one step, planned (and its memory allocated) before anything changes."""

    index: int  # the group's index in the plan
    members: list[Tensor]  # the parameters, as the optimizer holds them
    shards: list[Tensor]  # their local tensors (DTensor shards under FSDP2)
    targets: list[Tensor]  # what is mixed: the shards (update) or their gradients (gradient)
    program: BandProgram | None  # the eager kernels' band (of A - I in update mode); None on a pipeline stage
    fused: tuple[FusedKernel, Callable[[], None]] | None  # the compiled kernel and its bound call; None: eager
    decay: Tensor | None  # (n, 1) decoupled decay factors (update mode), None where all are 1
    before: Tensor | None  # the (n, numel) snapshot of theta (update mode)


class Snapshots:
    """Update mode's copies of the blocks' parameters before the base step: one (n, numel)
    buffer per group, kept across steps and refilled at every step (`take`).

    The copy is taken at every step, whatever happened since the last one: a write to the
    parameters between steps (under ``no_grad``, through ``p.data``, ``vector_to_parameters``,
    ``load_state_dict``, ``set_``, an outer optimizer) is always seen, because nothing here
    relies on a signal such a write could bypass (version counters, storage pointers).
    """

    def __init__(self) -> None:
        self._buffers: dict[int, Tensor] = {}

    @property
    def nbytes(self) -> int:
        """Bytes the buffers hold between steps (update mode's extra memory)."""
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        """Forget every buffer (the groups changed)."""
        self._buffers.clear()

    def buffer(self, index: int, shards: list[Tensor], capacity: int) -> Tensor:
        """The snapshot rows of group ``index`` for ``shards`` (allocated on first use for
        ``capacity`` members; the present members take the first rows)."""
        buf = self._buffers.get(index)
        if buf is None:
            p = shards[0]
            buf = self._buffers[index] = torch.empty((capacity, p.numel()), dtype=p.dtype, device=p.device)
        return buf[: len(shards)]

    @staticmethod
    def take(work: list[GroupStep]) -> None:
        """Copy every group's parameters into its snapshot rows, in one foreach copy."""
        if work:
            torch._foreach_copy_([row.view(t.shape) for w in work for row, t in zip(w.before.unbind(0), w.shards)],
                                 [t for w in work for t in w.shards])


def to_device(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a 1-D tensor on ``device``, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def check_fused(fused: object) -> None:
    """``fused`` should be None (compiled kernels where they can run), True or False."""
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused should be None (compiled kernels where they can run), True or False but is: {fused!r}")


def eager_reason(targets: list[Tensor], fused: bool | None, mode: str = "") -> str | None:
    """Why a group's ``targets`` are mixed by the eager kernels, or None when the compiled kernel
    may run: ``fused=False``; small members (an inductor call's fixed cost, about half a
    millisecond, exceeds the work; a blocked kernel's, ``mode`` "adamw" or "sgd" on a CPU, is
    a few microseconds: any size); non-contiguous members; and, by default (``fused=None``),
    no compiler for the device (``fused=True`` tries anyway, and warns if it cannot compile)."""
    if fused is False:
        return "fused=False"
    if targets[0].numel() < FUSED_MIN_ELEMENTS and not blocked.applies(mode, targets[0].dtype, targets[0].device):
        return f"members under {FUSED_MIN_ELEMENTS:,} elements"
    if not all(t.is_contiguous() for t in targets):
        return "members not contiguous"
    return compiler_missing(targets[0].device.type) if fused is None else None


def fused_call(band: Band, targets: list[Tensor], mode: str, fused: bool | None = True) -> tuple[FusedKernel, Tensor] | None:
    """The compiled kernel for ``band`` (prepared for the targets' dtype and device: compiled on
    first use) and its weights (``A``'s band, or ``A - I``'s in update mode), or None where the
    eager kernels run (`eager_reason`, or a kernel that could not compile: it warns once)."""
    if eager_reason(targets, fused) is not None:
        return None
    pattern, values = band_pattern(band, mode == "update")
    kernel = fused_kernel(pattern, mode)
    if not kernel.ready(targets[0].dtype, targets[0].device):
        return None
    return kernel, device_weights(values, compute_dtype(targets[0].dtype), targets[0].device).view(-1)


def group_path(band: Band, targets: list[Tensor], mode: str, fused: bool | None) -> str:
    """Which kernels mix a group, for the printed plan: "fused", "fused (compiles at the first
    step)", or "eager (why)". Compiles nothing."""
    reason = eager_reason(targets, fused, mode)
    if reason is not None:
        return f"eager ({reason})"
    status = fused_kernel(band_pattern(band, mode == "update")[0], mode).status(targets[0].dtype, targets[0].device)
    return {"compiled": "fused", "failed": "eager (its fused kernel did not compile)"}.get(
        status, "fused (compiles at the first step)")


def plan_group_step(index: int, members: list[Tensor], band: Band, mode: str, *, fused: bool | None,
                    snapshots: Snapshots, capacity: int, decays: dict[int, float]) -> GroupStep:
    """Group ``index``'s work at this step: its program, its fused kernel bound to its tensors
    (where one runs: `fused_call`), and in update mode its decay factors and snapshot
    buffer. Allocates (and compiles a new kernel); changes nothing."""
    update = mode == "update"
    shards = [local(p) for p in members]
    targets = shards if update else [local(p.grad) for p in members]
    program = band_program(band, minus_identity=update)
    cdtype = compute_dtype(targets[0].dtype)
    warm_weights(program, cdtype, targets[0].device)  # the eager kernels are the fallback
    kernel = fused_call(band, targets, mode, fused)
    decay = before = None
    if update:
        before = snapshots.buffer(index, shards, capacity)  # (n, local numel)
        d = [decays.get(id(p), 1.0) for p in members]
        if kernel is not None or any(x != 1.0 for x in d):  # the kernel always takes the factors
            decay = to_device(d, cdtype, before.device).unsqueeze(1)
    bound = None
    if kernel is not None:
        k, weights = kernel
        args = (list(before.unbind(0)), weights, decay.view(-1)) if update else (weights,)
        bound = k, k.bind(targets, *args)
    return GroupStep(index, members, shards, targets, program, bound, decay, before)


def run_group_step(step: GroupStep, mode: str, ws: Workspace) -> None:
    """Mix one group in place: its fused kernel, or the eager kernels (also when the kernel
    refuses to run, before it writes anything: a recompile is never done inside a step)."""
    if step.fused is not None:
        kernel, run = step.fused
        try:
            run()
            return
        except RuntimeError as error:  # raised before the kernel wrote anything
            kernel.give_up(step.targets[0].dtype, step.targets[0].device, error)
    if mode == "update":
        mix_updates(step.program, step.shards, step.before, step.decay, ws)
    else:
        mix_gradients(step.program, step.targets, ws)


def refuse_sparse(members: list[Tensor], name: Callable[[Tensor], str]) -> None:
    """Gradient mode mixes dense gradients only: refuse a sparse one before anything changes."""
    for p in members:
        if p.grad.layout != torch.strided:
            raise ValueError(
                f"gradient of {name(p)!r} is {p.grad.layout} (sparse); mode='gradient' smooths dense gradients "
                "only and nothing was changed: use mode='update', or exclude the parameter"
            )


def base_step(base: Optimizer) -> None:
    """``base.step()`` without torch's global optimizer hooks (the wrapper's own step already
    ran them: they fire once per step); the base's own step hooks still fire, around it."""
    step = type(base).step
    if not getattr(step, "hooked", False) or not hasattr(step, "__wrapped__"):
        base.step()
        return
    args: tuple[Any, ...] = (base,)
    kwargs: dict[str, Any] = {}
    with torch.autograd.profiler.record_function(f"Optimizer.step#{type(base).__name__}.step"):
        for hook in list(base._optimizer_step_pre_hooks.values()):
            result = hook(base, args, kwargs)
            if result is not None:
                args, kwargs = result
        step.__wrapped__(*args, **kwargs)
        base._optimizer_step_code()
        for hook in list(base._optimizer_step_post_hooks.values()):
            hook(base, args, kwargs)
    base._opt_called = True  # an LR scheduler built on the base checks it, as its own step wrapper would


def raise_if_not_finite(params: list[Tensor], name: Callable[[Tensor], str], step: int) -> None:
    """Raise ``FloatingPointError`` naming the first parameter with a non-finite gradient.

    One read of every gradient and one synchronisation per device: a sum is finite when its
    terms are (inf, -inf and NaN all propagate); a sum that overflowed from finite terms
    (float32 gradients near 3e38) is checked element by element, so a finite gradient is never
    refused. Under FSDP2 the ranks decide together (one small all-reduce)."""
    by_device: dict[torch.device, list[Tensor]] = {}
    for p in params:
        by_device.setdefault(p.grad.device, []).append(p)
    for device_params in by_device.values():
        sums = torch.stack([_sum(local(p.grad)) for p in device_params])
        distributed = any(isinstance(p.grad, DTensor) for p in device_params)
        if distributed:
            torch.distributed.all_reduce(sums)  # every rank takes the same decision
        suspects = (~torch.isfinite(sums)).nonzero().view(-1).tolist()
        if not suspects:
            continue
        exact = torch.tensor([_all_finite(local(device_params[i].grad)) for i in suspects], dtype=torch.float32,
                             device=sums.device)
        if distributed:  # a rank's shard may hold the non-finite value: decide together
            torch.distributed.all_reduce(exact, op=torch.distributed.ReduceOp.MIN)
        for i, finite in zip(suspects, exact.tolist()):
            if not finite:
                raise FloatingPointError(
                    f"gradient of {name(device_params[i])!r} is not finite at step {step}; nothing was changed "
                    "(pass check_finite=False to let the base optimizer see it)"
                )


def _sum(g: Tensor) -> Tensor:
    """``g``'s sum in float32 or wider (float16 would overflow on large finite sums)."""
    if g.is_sparse:
        g = g.coalesce().values()
    return g.sum(dtype=torch.promote_types(g.dtype, torch.float32))


def _all_finite(g: Tensor) -> bool:
    """Whether every element of ``g`` is finite (the exact check, for the rare sum that is not)."""
    if g.is_sparse:
        g = g.coalesce().values()
    return bool(torch.isfinite(g).all())
