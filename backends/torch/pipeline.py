"""Pipeline stages: a stack split over processes, smoothed as if it were whole.

Under pipeline parallelism each stage holds a contiguous range of a stack's blocks. A window
of radius r at a stage boundary reads r members of the neighbouring stage, so each step every
stage sends its first r members' updates (or gradients) to the previous stage and its last r
to the next, and receives theirs, in one batch of P2P operations. Then each stage mixes its
own members with the global band, and the result equals the single-process smoothing of the
whole stack.

Cost per step: 2 * r * (bytes of one member in the compute dtype: float32 for bfloat16 and
float16 members) per role, in each direction of every stage boundary; no other communication.
Low precision is mixed in float32 and rounded once, as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from gradsmooth import Band

from .bands import BandLayout
from .contract import Members
from .dispatch import plan, run
from .eager import compute_dtype
from .groups import local

__all__ = ["PipelineStages", "check_stage", "exchange_boundaries", "mix_stage", "stage_gradients", "stage_updates"]


@dataclass(frozen=True)
class PipelineStages:
    """This process's place in a pipeline: it holds blocks ``first_block .. first_block + k - 1``
    of a stack of ``num_blocks``; stages are the ranks of ``group`` (default: the world) in order."""

    num_blocks: int
    first_block: int
    group: Any = None

    def __post_init__(self) -> None:
        if not (isinstance(self.num_blocks, int) and self.num_blocks >= 1):
            raise ValueError(f"num_blocks should be a positive integer but is: {self.num_blocks!r}")
        if not (isinstance(self.first_block, int) and 0 <= self.first_block < self.num_blocks):
            raise ValueError(f"first_block should be in [0, {self.num_blocks}) but is: {self.first_block!r}")

    def neighbours(self) -> tuple[int | None, int | None]:
        """Global ranks of the previous and next stage (None at the ends)."""
        if not dist.is_initialized():
            raise RuntimeError("pipeline stages need torch.distributed: call init_process_group first")
        rank, world = dist.get_rank(self.group), dist.get_world_size(self.group)
        glob = (lambda r: r) if self.group is None else (lambda r: dist.get_global_rank(self.group, r))
        return (glob(rank - 1) if rank > 0 else None), (glob(rank + 1) if rank < world - 1 else None)


def exchange_boundaries(stages: PipelineStages, groups: list[list[Tensor]], r: int) -> list[tuple[list[Tensor], list[Tensor]]]:
    """For each group of own members (1-D tensors in depth order), send the first ``r`` to the
    previous stage and the last ``r`` to the next; return what came from (previous, next)."""
    prev, nxt = stages.neighbours()
    ops, received = [], []
    for members in groups:
        if len(members) < r:
            raise ValueError(f"a stage holds {len(members)} members of a group but the window reaches {r} across a "
                             "stage boundary: give each stage at least as many blocks as the window's radius")
        got: tuple[list[Tensor], list[Tensor]] = ([], [])
        for side, peer, mine in ((0, prev, members[:r]), (1, nxt, members[-r:])):
            if peer is None:
                continue
            send = torch.stack(mine)  # (r, numel)
            recv = torch.empty_like(send)
            ops += [dist.P2POp(dist.isend, send, peer, stages.group), dist.P2POp(dist.irecv, recv, peer, stages.group)]
            got[side].extend(recv.unbind(0))
        received.append(got)
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return received


def stage_layout(band: Band, first: int, own: int, received: tuple[int, int]) -> BandLayout:
    """The band of a stage's extended members (``received[0]`` from the previous stage, ``own``
    of its own, ``received[1]`` from the next): the own rows are the global band's rows
    ``first .. first + own - 1``, the received rows the identity (their members are kept)."""
    before, after = received
    start = first - before  # global index of the first extended member
    pattern, values = [], []
    for i in range(before + own + after):
        if before <= i < before + own:
            row = band.rows[start + i]
            if any(not 0 <= j - start < before + own + after for j, _ in row):
                raise ValueError(f"the window of block {start + i} reaches past the neighbouring stages")
            pattern.append(tuple(j - start for j, _ in row))
            values.extend(w for _, w in row)
        else:
            pattern.append((i,))
            values.append(1.0)
    return BandLayout(tuple(pattern), tuple(values))


def mix_stage(band: Band, first: int, own: list[Tensor], received: tuple[list[Tensor], list[Tensor]]) -> None:
    """In place, each own member's row of the global band over (previous, own, next) members:
    ``own_l <- sum_j A[first + l, j] U_j``, by the eager kernel (``gradient`` kind) over the
    extended members, which are tensors of one dtype (the compute dtype)."""
    before, after = received
    extended = [*before, *own, *after]
    layout = stage_layout(band, first, len(own), (len(before), len(after)))
    run(plan(Members("gradient", [extended]), layout, None, fused=False))


# -- a stage's step: the wrapper calls these in place of the single-process execution ------------


def check_stage(groups: list[list[Tensor]], name: Callable[[Tensor], str]) -> None:
    """A stage smooths every block at every step: each member needs a gradient."""
    missing = [name(p) for m in groups for p in m if p.grad is None]
    if missing:
        raise ValueError(f"pipeline stages smooth every block at every step, but {missing[0]!r} has no gradient")


def stage_gradients(stages: PipelineStages, band: Band, groups: list[list[Tensor]]) -> None:
    """Gradient mode: exchange boundary gradients, then ``g_l <- sum_j A[l, j] g_j`` with the global
    band, in the compute dtype (float32 for bfloat16 and float16 members), rounded once."""
    r = band.radius
    grads = [[local(p.grad).reshape(-1).to(compute_dtype(p.dtype), copy=True) for p in m] for m in groups]
    received = exchange_boundaries(stages, grads, r) if r else [([], [])] * len(grads)
    for members, flat, got in zip(groups, grads, received):
        mix_stage(band, stages.first_block, flat, got)
        for p, value in zip(members, flat):
            local(p.grad).copy_(value.view(local(p.grad).shape))


def stage_updates(stages: PipelineStages, band: Band, groups: list[list[Tensor]], snapshots: list[list[Tensor]],
                  decays: dict[int, float]) -> None:
    """Update mode, after the base step: recover each step ``delta = p - decay * theta`` (theta
    the snapshot rows), exchange the boundary deltas, then ``p_l <- decay_l theta_l + sum_j A[l,
    j] delta_j``, all in the compute dtype (float32 for bfloat16 and float16 members) and
    rounded once to the parameters' dtype, as the other paths."""
    r = band.radius
    deltas, kept = [], []
    for members, rows in zip(groups, snapshots):
        cdtype = compute_dtype(members[0].dtype)
        theta = [decays.get(id(p), 1.0) * row.to(cdtype) for p, row in zip(members, rows)]  # decay * theta
        deltas.append([local(p).reshape(-1).to(cdtype) - t for p, t in zip(members, theta)])
        kept.append(theta)
    received = exchange_boundaries(stages, deltas, r) if r else [([], [])] * len(deltas)
    for members, rows, theta, got in zip(groups, deltas, kept, received):
        mix_stage(band, stages.first_block, rows, got)  # rows <- (A delta)_l
        for p, t, mixed in zip(members, theta, rows):
            local(p).copy_((t + mixed).view(local(p).shape))
