"""The checks a step makes before anything changes: a group's arrays alike (one shape, dtype and
device), no sparse gradient where the gradients are mixed, and (``check_finite=True``) no
non-finite gradient."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .groups import DTensor, local

__all__ = ["raise_if_not_alike", "raise_if_not_finite", "refuse_sparse"]


def raise_if_not_alike(members: list[Tensor], arrays: dict[str, list[Tensor]], name: Callable[[Tensor], str]) -> None:
    """Every array a group's kernel reads and writes (``arrays``: what each is, one tensor per
    member of ``members``, the parameters' local shards first) has one shape, dtype and device:
    the kernels mix them as one block of memory. A model cast or moved after its optimizer
    state was made, in part or in whole, or a parameter replaced by ``p.data = t`` of another
    shape, is refused by name before anything changes, as torch's own optimizers refuse it."""
    first = next(iter(arrays.values()))[0]
    want = (first.shape, first.dtype, first.device)
    for what, tensors in arrays.items():
        for p, t in zip(members, tensors):
            if (t.shape, t.dtype, t.device) != want:
                raise ValueError(
                    f"the {what} of {name(p)!r} is {_layout(t)} where its group's first parameter "
                    f"{name(members[0])!r} is {_layout(first)}; nothing was changed (a model cast or moved after "
                    "its optimizer state was made: make the optimizer after the cast, or cast its state too)")


def _layout(t: Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def refuse_sparse(members: list[Tensor], name: Callable[[Tensor], str]) -> None:
    """Gradient mode mixes dense gradients only: refuse a sparse one before anything changes."""
    for p in members:
        if p.grad.layout != torch.strided:
            raise ValueError(
                f"gradient of {name(p)!r} is {p.grad.layout} (sparse); mode='gradient' smooths dense gradients "
                "only and nothing was changed: use mode='update', or exclude the parameter"
            )


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
