"""Update mode's snapshots: the blocks' parameters before the base step, from which the wrapper
recovers the base's step (``delta = p - decay * theta``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Snapshots"]


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
    def take(rows: list[Tensor], shards: list[Tensor]) -> None:
        """Copy the parameters ``shards`` into their snapshot ``rows``, in one foreach copy."""
        if rows:
            torch._foreach_copy_([row.view(t.shape) for row, t in zip(rows, shards)], shards)
