"""The one contract every kernel keeps: how a group's members are mixed along depth.

A *kernel* runs the group steps of some kinds (``arithmetic.KINDS``: ``update``, ``gradient``,
``adamw``, ``sgd``, ``sgd-plain``) on some devices and dtypes. ``dispatch.select`` is the only
place that chooses one for a group; the group's step then calls

    scratch = kernel.scratch(members, band)                   # allocate, before anything changes
    call = kernel.bind(members, band, coefficients, scratch)   # make the call ready
    call()                                                    # mix, in place

Every kernel guarantees, and ``tests/backends/test_differential.py`` holds each registered one to:

1. **It mixes in place.** ``call()`` writes each member's row into its own tensors (the
   parameter, or the gradient in gradient mode, and the state a kind writes), nothing else.
2. **It allocates nothing after binding.** Everything it needs is made by ``scratch`` and
   ``bind``, which run before the step's first write; ``call()`` allocates nothing.
3. **It raises only before its first write.** ``prepare`` (compiling) and ``bind`` may raise;
   ``call()`` either runs to the end or raises ``RuntimeError`` before writing anything
   (``refusing``: its caller then runs the eager kernel on the same members).
4. **Low precision is computed in float32 and rounded once**, on the write.
5. **It equals the eager reference to rounding** (``eager.py``: the sums' order may differ).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from .bands import BandLayout

__all__ = ["Call", "GroupKernel", "Members"]

Call = Callable[[], None]


class Members(NamedTuple):
    """One group's tensors for a kind: ``arrays[k]`` is the list of the members' k-th array in
    the kind's order (``arithmetic.KINDS[kind].arrays``: ``p, s`` for update, ``g`` for
    gradient, ``p, g, m, v`` for adamw, ``p, g, b`` for sgd, ``p, g`` for sgd-plain), one
    tensor per member, in depth order; all of one shape, dtype and device."""

    kind: str
    arrays: list[list[Tensor]]

    @property
    def first(self) -> Tensor:
        return self.arrays[0][0]

    @property
    def n(self) -> int:
        return len(self.arrays[0])


class GroupKernel(Protocol):
    """A way to mix a group (module docstring: the guarantees it keeps)."""

    name: str  # "eager", "inductor", "blocked"
    refusing: bool  # whether a bound call may refuse to run (raising before it writes anything)

    def refuses(self, kind: str, dtype: torch.dtype, device: torch.device, numel: int, contiguous: bool) -> str | None:
        """Why this kernel cannot run ``kind`` for members of ``dtype`` on ``device``, of ``numel``
        elements each, (not) all contiguous (None: it can), told without compiling anything."""

    def prepare(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> None:
        """Make the kernel for ``kind`` and ``band``'s pattern ready (compile it): may raise."""

    def prepared(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether `prepare` has made the kernel ready (nothing left to compile)."""

    def scratch(self, members: Members, band: BandLayout) -> Tensor | None:
        """The scratch ``members``' call with ``band`` needs, allocated now (None: none)."""

    def bind(self, members: Members, band: BandLayout, coefficients: Tensor | None, scratch: Tensor | None) -> Call:
        """The call that mixes ``members`` with ``band`` and ``coefficients`` (the kind's
        per-member and per-row scalars in the compute dtype, ``c[k * n + j]``), ready to run."""
