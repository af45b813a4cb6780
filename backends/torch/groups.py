"""Planning on the torch side: which optimizer steps which parameter, and which parameters
form the groups that are smoothed together. Nothing here changes a tensor.

The plan itself (stacks, roles, depth order) is the core's [`gradsmooth.find_blocks`][gradsmooth.find_blocks];
this module feeds it the parameters the base optimizers own, under their model names, and
checks what only torch can tell: Muon's 2-D rule, one owner per parameter, FSDP2 layouts.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from gradsmooth import BlockPlan, DepthOperator, find_blocks
from gradsmooth.blocks import Exclude, Stacks
from gradsmooth.decay import DecoupledDecay, classify_decay, decay_factor

from .blocks import ModelParameters

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()  # type: ignore[assignment,misc]

__all__ = ["Groups", "check_muon", "decay_factors", "local", "make_groups", "owners", "unclassified",
           "warn_if_nothing_smoothed"]


class Groups(NamedTuple):
    """What is smoothed: the core's plan (knowing its operator) and, per group, the
    parameters in depth order."""

    plan: BlockPlan
    members: list[list[Tensor]]


def warn_if_nothing_smoothed(plan: BlockPlan, stacklevel: int) -> None:
    """Warn, at construction, when ``plan`` smooths nothing (``BlockPlan.nothing_smoothed``);
    ``stacklevel`` counts from the caller of this function."""
    message = plan.nothing_smoothed()
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


def local(t: Tensor) -> Tensor:
    """The tensor itself, or a DTensor's local shard (FSDP2): members are smoothed shard by shard."""
    return t.to_local() if isinstance(t, DTensor) else t


def check_muon(base: Optimizer, i: int, p: Tensor, name: str) -> None:
    """torch.optim.Muon steps 2-D parameters only: refuse another before it is added."""
    if isinstance(base, torch.optim.Muon) and p.ndim != 2:
        raise ValueError(
            f"Muon handles 2-D parameters only, but optimizer {i} holds {name!r} "
            f"of shape {tuple(p.shape)}; give it to an AdamW beside the Muon"
        )


def owners(bases: list[Optimizer], params: ModelParameters) -> dict[int, int]:
    """``id(parameter) -> index of the base that steps it``, after checking that no parameter
    has two owners, Muon holds only matrices, and the bases own some parameter of the model."""
    owner: dict[int, int] = {}
    for i, b in enumerate(bases):
        for g in b.param_groups:
            for p in g["params"]:
                if owner.setdefault(id(p), i) != i:
                    raise ValueError(f"parameter {params.name(p, bases)!r} is claimed by two optimizers: "
                                     f"{owner[id(p)]} and {i}")
                check_muon(b, i, p, params.name(p, bases))
    if not any(id(p) in owner for p in params.named.values()):
        raise ValueError(
            "optimizer does not own any parameter of model: build the optimizer from model.parameters() "
            "(or pass the model whose parameters it holds)"
        )
    return owner


def make_groups(params: ModelParameters, owner: dict[int, int], operator: DepthOperator, stacks: Stacks,
                exclude: Exclude, whole_stages: bool = False) -> Groups:
    """The groups of the owned parameters (``whole_stages``: a pipeline stage needs every role
    in every block, so all groups have as many members)."""
    owned = {name: p for name, p in params.named.items() if id(p) in owner}
    if params.sites is not None:
        plan = find_blocks(owned, exclude=exclude, sites=params.sites)
    else:
        plan = find_blocks(owned, stacks=stacks, exclude=exclude)
    members = [[params.named[name] for name in g.names] for g in plan.groups]
    for g, m in zip(plan.groups, members):
        _check_layout(g.names, m)
    if whole_stages and len({len(m) for m in members}) > 1:
        raise ValueError("pipeline stages need every role in every block of the stage, but the groups hold "
                         f"{sorted({len(m) for m in members})} members")
    return Groups(plan.with_operator(operator), members)


def _check_layout(names: tuple[str, ...], members: list[Tensor]) -> None:
    """Members of a group must shard alike: one mesh, one placement, one local shape."""
    kinds = {isinstance(p, DTensor) for p in members}
    if kinds == {True}:
        first = members[0]
        for name, p in zip(names[1:], members[1:]):
            if p.device_mesh != first.device_mesh or p.placements != first.placements or \
                    p.to_local().shape != first.to_local().shape:
                raise ValueError(
                    f"{name!r} is sharded as {p.placements} on {p.device_mesh} but {names[0]!r} as "
                    f"{first.placements} on {first.device_mesh}: members of a group must be sharded alike "
                    "(a shard_placement_fn that shards blocks differently cannot be smoothed shard by shard)"
                )
    elif len(kinds) > 1:
        raise ValueError(f"group {names[0]!r}... mixes DTensor and plain tensor members: shard all blocks alike")


def decay_factors(bases: list[Optimizer], declared: DecoupledDecay) -> dict[int, float]:
    """``id(parameter) -> the factor f of theta <- f * theta + delta`` its base applies at this
    step (lr and weight_decay as the groups hold them now): the decoupled decay, kept per layer
    and never mixed; 1 for coupled L2 decay (part of the gradient, hence of delta), for no
    decay, and for a base whose kind cannot be told (warned about): gradsmooth.decay."""
    factors = {}
    for b in bases:
        for g in b.param_groups:
            f = decay_factor(b, g, declared)
            for p in g["params"]:
                factors[id(p)] = 1.0 if f is None else f
    return factors


def unclassified(bases: list[Optimizer], declared: DecoupledDecay) -> list[Optimizer]:
    """The bases with a nonzero ``weight_decay`` whose kind of decay cannot be told."""
    return [b for b in bases
            if any(g.get("weight_decay") and classify_decay(b, g, declared) is None for g in b.param_groups)]
