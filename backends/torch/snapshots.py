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
        """The snapshot rows of group ``index`` for ``shards`` (allocated for ``capacity``
        members on first use, and again where the parameters' dtype, device or size changed
        since, as after ``model.to(...)``; the present members take the first rows)."""
        p, old = shards[0], self._buffers.get(index)
        if old is None or (old.dtype, old.device, old.shape[1]) != (p.dtype, p.device, p.numel()) \
                or old.shape[0] < len(shards):
            del old
            self._buffers.pop(index, None)  # the old buffer freed before the new one is made
            self._buffers[index] = torch.empty((max(capacity, len(shards)), p.numel()), dtype=p.dtype, device=p.device)
        return self._buffers[index][: len(shards)]

    @staticmethod
    def take(rows: list[Tensor], shards: list[Tensor]) -> None:
        """Copy the parameters ``shards`` into their snapshot ``rows``, in one foreach copy."""
        if rows:
            torch._foreach_copy_([row.view(t.shape) for row, t in zip(rows, shards)], shards)
