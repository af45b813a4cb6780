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
from gradsmooth.smoothing import weighted_sum

from .execution import GroupStep, Snapshots
from .groups import local
from .mixing import compute_dtype

__all__ = ["PipelineStages", "check_stage", "exchange_boundaries", "mix_stage", "stage_gradients", "stage_snapshots",
           "stage_updates"]


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


def mix_stage(band: Any, first: int, own: list[Tensor], received: tuple[list[Tensor], list[Tensor]]) -> list[Tensor]:
    """Each own member's row of the global band applied over (previous, own, next) members:
    ``sum_j A[first + l, j] U_j`` for l = 0..len(own) - 1, as new tensors."""
    before, after = received
    extended = [*before, *own, *after]
    start = first - len(before)  # global index of extended[0]
    out = []
    for l in range(len(own)):
        row = band.rows[first + l]
        if any(not 0 <= j - start < len(extended) for j, _ in row):
            raise ValueError(f"the window of block {first + l} reaches past the neighbouring stages")
        out.append(weighted_sum(extended, tuple((j - start, w) for j, w in row)))
    return out


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
    grads = [[local(p.grad).reshape(-1).to(compute_dtype(p.dtype)) for p in m] for m in groups]
    received = exchange_boundaries(stages, grads, r) if r else [([], [])] * len(grads)
    for members, flat, got in zip(groups, grads, received):
        for p, value in zip(members, mix_stage(band, stages.first_block, flat, got)):
            local(p.grad).copy_(value.view(local(p.grad).shape))


def stage_snapshots(groups: list[list[Tensor]], snapshots: Snapshots) -> list[GroupStep]:
    """Update mode, before the base step: every group's snapshot, taken in one copy."""
    work = []
    for gi, members in enumerate(groups):
        shards = [local(p) for p in members]
        work.append(GroupStep(gi, members, shards, shards, None, None, None,
                              snapshots.buffer(gi, shards, len(members))))
    Snapshots.take(work)
    return work


def stage_updates(stages: PipelineStages, band: Band, pending: list[GroupStep], decays: dict[int, float]) -> None:
    """Update mode, after the base step: recover each step ``delta = p - decay * theta`` (theta the
    snapshot), exchange the boundary deltas, then ``p_l <- p_l + sum_j A[l, j] delta_j - delta_l``
    (``= decay_l theta_l + sum_j A[l, j] delta_j``), all in the compute dtype (float32 for
    bfloat16 and float16 members) and rounded once to the parameters' dtype, as the other paths."""
    r = band.radius
    deltas = []
    for w in pending:
        cdtype = compute_dtype(w.shards[0].dtype)
        deltas.append([s.reshape(-1).to(cdtype) - decays.get(id(p), 1.0) * theta.to(cdtype)
                       for p, s, theta in zip(w.members, w.shards, w.before.unbind(0))])
    received = exchange_boundaries(stages, deltas, r) if r else [([], [])] * len(deltas)
    for w, rows, got in zip(pending, deltas, received):
        for shard, delta, mixed in zip(w.shards, rows, mix_stage(band, stages.first_block, rows, got)):
            shard.copy_((shard.reshape(-1).to(delta.dtype) + (mixed - delta)).view(shard.shape))
