"""Execution: apply a depth operator to the updates of a plan, as banded weighted sums.

``U~_l = sum_{(j, w) in band.rows[l]} w * U_j`` for each member ``l`` of each group:
2r + 1 terms per member, no stacking and no dense n x n product. Only ``*`` and ``+``
with Python scalars are used, so any Array API array works and keeps its namespace,
device and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from .blocks import BlockPlan
from .namespace import array_namespace, is_floating
from .operators import DepthOperator, Row, check_operator

__all__ = ["smooth", "smooth_stack", "weighted_sum", "check_updates"]

A = TypeVar("A")


def weighted_sum(members: Sequence[A], row: Row) -> A:
    """``sum_{(j, w) in row} w * members[j]``, a new array; an identity row returns ``members[l]``
    itself, and an empty row (an all-zero row of A) zeros."""
    if not row:
        return array_namespace(members[0]).zeros_like(members[0])
    (j0, w0), *rest = row
    if not rest and isinstance(w0, float) and w0 == 1.0:
        return members[j0]
    acc = members[j0] * w0
    for j, w in rest:
        acc = acc + members[j] * w
    return acc


def _check_plan(plan: object) -> None:
    if not isinstance(plan, BlockPlan):
        raise TypeError(f"plan should be a gradsmooth BlockPlan (from find_blocks) but is: {type(plan).__name__}")


def _library(x: Any) -> str:
    """The array library an array belongs to, by its type's top-level module (numpy, torch, mlx, ...)."""
    return type(x).__module__.split(".")[0]


def check_updates(updates: Mapping[str, Any], plan: BlockPlan) -> None:
    """Raise if ``updates`` lacks a planned name, or a member's shape or dtype is not its group's."""
    if not isinstance(updates, Mapping):
        raise TypeError(f"updates should be a mapping name -> array but is: {type(updates).__name__}")
    _check_plan(plan)
    for group in plan.groups:
        dtype = None
        for name in group.names:
            if name not in updates:
                raise ValueError(f"updates has no entry for planned parameter {name!r} (group {group.role!r})")
            x = updates[name]
            if not (hasattr(x, "shape") and hasattr(x, "dtype")):
                raise TypeError(f"updates[{name!r}] should be an array but is: {type(x).__name__}")
            if tuple(x.shape) != group.shape:
                raise ValueError(f"updates[{name!r}] should have shape {group.shape} (the plan's) but has {tuple(x.shape)}")
            if dtype is None:
                dtype, library = x.dtype, _library(x)
                if not is_floating(x):
                    raise TypeError(f"updates[{name!r}] should be a floating-point array but has dtype {x.dtype}")
            elif _library(x) != library:
                raise TypeError(
                    f"updates[{name!r}] is a {_library(x)} array but its group {group.role!r} holds {library} arrays: "
                    "a group must hold arrays of one array library"
                )
            elif x.dtype != dtype:
                raise TypeError(
                    f"updates[{name!r}] has dtype {x.dtype} but its group {group.role!r} holds {dtype}: "
                    "members of a group share one dtype"
                )


def smooth(updates: Mapping[str, A], plan: BlockPlan, op: DepthOperator, step: int = 0) -> dict[str, A]:
    """Smooth every group of ``plan`` along depth with ``op``; a pure function.

    ``updates`` maps names to arrays of any Array API namespace. Returns a new dict:
    grouped names get ``U~_l = sum_j A[l, j] U_j`` (``A`` the operator at ``step``),
    every other name passes through as the same object. Inputs are never mutated.
    Arguments of the wrong type raise TypeError naming the argument and the type it got.
    """
    check_updates(updates, plan)
    check_operator(op, "op")
    out = dict(updates)
    for group in plan.groups:
        members = [updates[name] for name in group.names]
        band = op.band(len(members), step)
        for name, row in zip(group.names, band.rows):
            out[name] = weighted_sum(members, row)
    return out


def smooth_stack(stack: A, op: DepthOperator, step: int = 0) -> A:
    """The same smoothing on a pre-stacked ``(n, ...)`` array: row ``l`` becomes ``sum_j A[l, j] stack[j]``."""
    check_operator(op, "op")
    try:
        xp = array_namespace(stack)
    except TypeError:
        raise TypeError(f"stack should be an (n, ...) array of an Array API namespace but is: {type(stack).__name__}") from None
    if stack.ndim < 1 or stack.shape[0] < 1:
        raise ValueError(f"stack should have shape (n, ...) with n >= 1 but has shape {tuple(stack.shape)}")
    if not is_floating(stack):
        raise TypeError(f"stack should be a floating-point array but has dtype {stack.dtype}")
    band = op.band(stack.shape[0], step)
    if band.is_identity:
        return stack
    members = [stack[l, ...] for l in range(stack.shape[0])]
    return xp.stack([weighted_sum(members, row) for row in band.rows], axis=0)
