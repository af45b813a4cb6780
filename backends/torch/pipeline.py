"""Pipeline stages: a stack split over processes, smoothed as if it were whole.

Under pipeline parallelism each stage holds a contiguous range of a stack's blocks. A window
of radius r at a stage boundary reads r members of the neighbouring stage, so each step every
stage sends its first r members' updates (or gradients) to the previous stage and its last r
to the next, and receives theirs, in one batch of P2P operations. Then each stage mixes its
own members with the global band, and the result equals the single-process smoothing of the
whole stack.

Cost per step: 2 * r * (bytes of one member) per role, in each direction of every stage
boundary; no other communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["PipelineStages", "exchange_boundaries"]


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
    from gradsmooth.smoothing import weighted_sum

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
