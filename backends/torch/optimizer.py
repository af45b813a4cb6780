"""GradientSmoothing: wraps any torch optimizer and couples its block-wise updates along depth.

``mode="update"`` (default, the paper's): before the base step each grouped parameter is
snapshotted (theta); after it, ``delta = p - decay * theta`` is the base's step without
decoupled weight decay (``decay = 1 - lr * weight_decay`` for AdamW, Adam with
``decoupled_weight_decay=True``, NAdam/RAdam with it, and Muon; 1 otherwise), and

    theta_l <- decay_l * theta_l + sum_j A[l, j] delta_j

so decoupled decay stays per layer and is never mixed. Coupled L2 decay (SGD, Adam) is
part of the gradient, hence of delta, and is smoothed with it.

``mode="gradient"`` (cheaper, no snapshot): ``g_l <- sum_j A[l, j] g_j`` before the base
step. The base then adds any coupled L2 term per layer.
"""

from __future__ import annotations

import numbers
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsmooth import MODES, Band, BlockPlan, DepthOperator, check_mode, find_blocks, make_operator
from gradsmooth.blocks import Exclude, Stacks
from gradsmooth.decay import DecoupledDecay, check_decoupled_decay, classify_decay, decay_warning
from gradsmooth.operators import Alpha

from .blocks import module_sites, named_parameters
from .fused import FUSED_MIN_ELEMENTS, FusedKernel, band_pattern, fused_kernel
from .mixing import (BandProgram, Workspace, band_program, compute_dtype, device_weights, mix_gradients, mix_updates,
                     warm_weights, workspace)
from .pipeline import PipelineStages, exchange_boundaries, mix_stage

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch built without distributed
    DTensor = ()  # type: ignore[assignment,misc]

__all__ = ["GradientSmoothing", "MODES"]

_STATE_KEY = "gradsmooth"


def _as_bases(optimizer: Optimizer | Sequence[Optimizer]) -> list[Optimizer]:
    bases = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer) if isinstance(optimizer, Iterable) else None
    if not bases:
        raise TypeError(f"optimizer should be a torch.optim.Optimizer or a list of them but is: {optimizer!r}")
    for b in bases:
        if not isinstance(b, Optimizer):
            raise TypeError(f"optimizer should be a torch.optim.Optimizer or a list of them but holds: {b!r}")
        if isinstance(b, GradientSmoothing):
            raise TypeError("optimizer is already a GradientSmoothing; wrap its base optimizer instead")
    if len({id(b) for b in bases}) != len(bases):
        raise ValueError("optimizer lists the same optimizer twice")
    return bases


def _decay(base: Optimizer, group: dict[str, Any], declared: DecoupledDecay) -> float:
    """The decoupled weight-decay factor ``1 - lr * weight_decay`` this group applies, or 1
    (no decay, or coupled L2 decay, which is part of the gradient): see gradsmooth.decay."""
    wd = group.get("weight_decay", 0.0)
    if not wd or not classify_decay(base, group, declared):
        return 1.0
    return 1.0 - float(group["lr"]) * float(wd)


def _base_step(base: Optimizer) -> None:
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


def _to_device(values: Sequence[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a 1-D tensor on ``device``, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def _versions(tensors: list[Tensor]) -> tuple[tuple[int, int, int], ...]:
    """What identifies the values of ``tensors`` without reading them: object, storage, version."""
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


def _local(t: Tensor) -> Tensor:
    """The tensor itself, or a DTensor's local shard (FSDP2): members are smoothed shard by shard."""
    return t.to_local() if isinstance(t, DTensor) else t


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


def _comparable(setting: Any) -> Any:
    """A saved setting without object addresses (``<function f at 0x7f...>``): a schedule
    given as a function is the same setting in the process that resumes."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", setting) if isinstance(setting, str) else setting


class _GroupStep(NamedTuple):
    """One group's work at one step, planned (and its memory allocated) before anything changes."""

    index: int  # the group's index in the plan
    band: Band | None  # None on a pipeline stage (it mixes with the global band)
    members: list[Tensor]  # the parameters, as the optimizer holds them
    shards: list[Tensor]  # their local tensors (DTensor shards under FSDP2)
    targets: list[Tensor]  # what is mixed: the shards (update) or their gradients (gradient)
    program: BandProgram | None  # the eager kernels' band (of A - I in update mode)
    fused: tuple[FusedKernel, Callable[[], None]] | None  # the compiled kernel and its bound call, or None: eager
    decay: Tensor | None  # (n, 1) decoupled decay factors (update mode), None where all are 1
    before: Tensor | None  # the (n, numel) snapshot (update mode)


class GradientSmoothing(Optimizer):
    """Gradient Smoothing around any torch optimizer (or a list of them).

    Args:
        optimizer: a ``torch.optim.Optimizer``, or a list of them (e.g. Muon for the
            blocks' matrices and AdamW for the rest).
        model: an ``nn.Module`` (blocks found from its structure) or an iterable of
            ``(name, parameter)`` pairs (blocks found from the names).
        window, kernel, boundary, alpha, sigma, normalize: the Window Smoothing operator
            (see :class:`gradsmooth.WindowSmoothing`); ``alpha`` may be a function of the step.
        mode: ``"update"`` (smooth the base's step) or ``"gradient"`` (smooth the gradients).
        operator: any :class:`gradsmooth.DepthOperator`, in place of the window arguments.
        stacks, exclude: as :func:`gradsmooth.find_blocks` (``stacks`` switches to names).
        check_finite: raise ``FloatingPointError`` on a non-finite gradient, before anything
            changes. Off by default, as in torch.optim: it reads every gradient once more and
            synchronises with the device once per step (under ``GradScaler`` the scaler
            already skips steps with non-finite gradients).
        fused: mix each group with one compiled kernel (``torch.compile``: inductor's C++ on a
            CPU, Triton on CUDA) instead of the eager chunked kernels; the first step with a
            new band pattern compiles (seconds; cached on disk by inductor). In update mode
            the kernel also writes the next step's snapshot, so no copy is taken before the
            base step while every member's version counter and storage are unchanged since
            that write. In-place changes that bypass version counters (through ``p.data``)
            are then not seen: make them through ``torch.no_grad()`` instead.
        pipeline: a :class:`PipelineStages` when this process holds one stage of a pipeline:
            boundary members are exchanged with the neighbouring stages so the result equals
            smoothing the whole stack.
        decoupled_decay: whether the bases' ``weight_decay`` is decoupled (kept per layer,
            never mixed) or coupled L2 (smoothed with the gradient): ``None`` (default)
            classifies each optimizer (torch.optim's flags, timm, bitsandbytes, torchao, apex,
            DeepSpeed by class name: see :mod:`gradsmooth.decay`) and warns once, naming the
            class, where it cannot tell; ``True``/``False`` declares it for every group; a
            function ``param_group -> bool`` declares it group by group.

    Under FSDP2 (``fully_shard``) the members of a group are DTensors of one shape and one
    placement, so each rank smooths its own shards with no communication.

    ``param_groups`` and ``state`` are the base optimizers' own, so LR schedulers, gradient
    clipping and ``GradScaler`` act on the base. ``plan`` shows what is smoothed.
    """

    def __init__(
        self,
        optimizer: Optimizer | Sequence[Optimizer],
        model: nn.Module | Iterable[tuple[str, Tensor]],
        *,
        window: int = 3,
        kernel: str | Sequence[float] = "uniform",
        boundary: str = "renormalize",
        alpha: Alpha = 1.0,
        sigma: float | None = None,
        normalize: bool = True,
        mode: str = "update",
        operator: DepthOperator | None = None,
        stacks: Stacks = None,
        exclude: Exclude = None,
        check_finite: bool = False,
        fused: bool = False,
        pipeline: PipelineStages | None = None,
        decoupled_decay: DecoupledDecay = None,
    ) -> None:
        self._initialized = False
        bases = _as_bases(optimizer)
        check_mode(mode)
        if not isinstance(check_finite, bool):
            raise TypeError(f"check_finite should be True or False but is: {check_finite!r}")
        self.decoupled_decay = check_decoupled_decay(decoupled_decay)
        operator = make_operator(operator, window=window, kernel=kernel, boundary=boundary, alpha=alpha, sigma=sigma,
                                 normalize=normalize)
        named = list(named_parameters(model))
        self._bases = bases
        self._model = model if isinstance(model, nn.Module) else None
        self._names = {id(p): name for name, p in named}
        self._named = dict(named)
        self._sites = module_sites(model) if isinstance(model, nn.Module) and stacks is None else None
        self._stacks, self._exclude = stacks, exclude
        if pipeline is not None and not isinstance(pipeline, PipelineStages):
            raise TypeError(f"pipeline should be a PipelineStages but is: {pipeline!r}")
        if not isinstance(fused, bool):
            raise TypeError(f"fused should be True or False but is: {fused!r}")
        if fused and pipeline is not None:
            raise ValueError("fused=True is not available with pipeline stages: pass fused=False")
        self.fused = fused
        self._carried: dict[int, tuple] = {}
        self.pipeline = pipeline
        self._check_ownership()
        self.operator, self.mode, self.check_finite = operator, mode, check_finite
        self._step_count = 0
        self._snapshots: dict[int, Tensor] = {}
        self._warned: set[type] = set()
        self._active_key: tuple | None = None
        self._active: list[tuple[int, list[Tensor]]] = []
        self.plan = self._make_plan()
        self._warn_unclassified_decay()
        self.settings = {"mode": mode, "operator": repr(operator), "check_finite": check_finite, "fused": fused}
        # the bases' defaults (schedulers such as OneCycleLR read them), the first base's first
        defaults = {k: v for b in reversed(bases) for k, v in b.defaults.items()}
        super().__init__([p for b in bases for g in b.param_groups for p in g["params"]], defaults)
        self._initialized = True

    # -- the base's groups and state, read through ----------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if len(self._bases) == 1:
            return self._bases[0].param_groups
        return [g for b in self._bases for g in b.param_groups]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        if self._initialized:
            raise AttributeError("param_groups are the base optimizer's: change them there, or use add_param_group")

    @property
    def state(self) -> dict[Tensor, Any]:  # type: ignore[override]
        if len(self._bases) == 1:
            return self._bases[0].state
        merged: defaultdict[Tensor, Any] = defaultdict(dict)
        for b in self._bases:
            merged.update(b.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:
        if self._initialized:
            raise AttributeError("state is the base optimizer's: load it with load_state_dict")

    @property
    def optimizers(self) -> tuple[Optimizer, ...]:
        """The base optimizer(s)."""
        return tuple(self._bases)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the (first) base optimizer, then plan again; on any error nothing
        is added (the group is checked first, and taken out again if planning fails)."""
        if not self._initialized:  # Optimizer.__init__ registering the base's params: they are there
            return
        base = self._bases[0]
        if self._model is not None:  # name (and plan) parameters the model gained since construction
            self._name_parameters(named_parameters(self._model))
        params = param_group.get("params") if isinstance(param_group, Mapping) else None
        params = [params] if isinstance(params, Tensor) else list(params) if isinstance(params, (list, tuple)) else []
        for p in params:
            if isinstance(p, Tensor):
                self._check_muon(base, 0, p)
        groups_before = len(base.param_groups)
        base.add_param_group(param_group)  # torch checks the group before it appends it
        try:
            self._check_ownership()
            self.plan = self._make_plan()
        except Exception:
            del base.param_groups[groups_before:]
            self._check_ownership()
            self.plan = self._make_plan()
            raise
        self._warn_unclassified_decay()

    def _name_parameters(self, named: Iterable[tuple[str, Tensor]]) -> None:
        named = list(named)
        self._names = {id(p): name for name, p in named}
        self._named = dict(named)
        if self._sites is not None:
            self._sites = module_sites(self._model)

    # -- planning ----------------------------------------------------------------------------

    def _name(self, p: Tensor) -> str:
        name = self._names.get(id(p))
        if name is not None:
            return name
        for i, b in enumerate(self._bases):
            for gi, g in enumerate(b.param_groups):
                for pi, q in enumerate(g["params"]):
                    if q is p:
                        return f"optimizers[{i}].param_groups[{gi}]['params'][{pi}]"
        return f"parameter of shape {tuple(p.shape)}"

    def _check_muon(self, base: Optimizer, i: int, p: Tensor) -> None:
        if isinstance(base, torch.optim.Muon) and p.ndim != 2:
            raise ValueError(
                f"Muon handles 2-D parameters only, but optimizer {i} holds {self._name(p)!r} "
                f"of shape {tuple(p.shape)}; give it to an AdamW beside the Muon"
            )

    def _check_ownership(self) -> None:
        owner: dict[int, int] = {}
        for i, b in enumerate(self._bases):
            for g in b.param_groups:
                for p in g["params"]:
                    if owner.setdefault(id(p), i) != i:
                        raise ValueError(f"parameter {self._name(p)!r} is claimed by two optimizers: {owner[id(p)]} and {i}")
                    self._check_muon(b, i, p)
        if not any(id(p) in owner for p in self._named.values()):
            raise ValueError(
                "optimizer does not own any parameter of model: build the optimizer from model.parameters() "
                "(or pass the model whose parameters it holds)"
            )
        self._owner = owner

    def _make_plan(self) -> BlockPlan:
        owned = {name: p for name, p in self._named.items() if id(p) in self._owner}
        if self._sites is not None:
            plan = find_blocks(owned, exclude=self._exclude, sites=self._sites)
        else:
            plan = find_blocks(owned, stacks=self._stacks, exclude=self._exclude)
        self._members = [[self._named[name] for name in g.names] for g in plan.groups]
        for g, members in zip(plan.groups, self._members):
            self._check_layout(g.names, members)
        if self.pipeline is not None and len({len(m) for m in self._members}) > 1:
            raise ValueError("pipeline stages need every role in every block of the stage, but the groups hold "
                             f"{sorted({len(m) for m in self._members})} members")
        self._snapshots.clear()
        self._carried.clear()
        self._active_key = None
        return plan.with_operator(self.operator)

    def _check_layout(self, names: tuple[str, ...], members: list[Tensor]) -> None:
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

    def _active_groups(self) -> list[tuple[int, list[Tensor]]]:
        """Per group, the members that have a gradient at this step (two or more)."""
        key = tuple(p.grad is not None for members in self._members for p in members)
        if key != self._active_key:
            active = []
            for gi, members in enumerate(self._members):
                present = [p for p in members if p.grad is not None]
                if len(present) >= 2:
                    active.append((gi, present))
            self._active_key, self._active = key, active
        return self._active

    # -- the step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Smooth and step: ``closure`` (optional) re-evaluates the model and returns the loss.

        Everything that can fail (the checks, compiling fused kernels, allocating the
        workspace and the snapshot) happens before the first write. A step where no
        parameter has a gradient changes nothing and does not advance the step counter,
        as the base optimizers' own counters do not advance.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not any(p.grad is not None for b in self._bases for g in b.param_groups for p in g["params"]):
            return loss
        pending, ws = self._before_base_step()
        for b in self._bases:
            _base_step(b)
        self._after_base_step(pending, ws)
        return loss

    @torch.compiler.disable
    def _before_base_step(self) -> tuple[list[_GroupStep], Workspace | None]:
        """Check and plan every group's work (compiling fused kernels, allocating the workspace
        and snapshots), then change things: the gradient mixing (gradient mode) or the
        snapshots (update mode). Returns what the update mode does after the base step."""
        carried, self._carried = self._carried, {}  # valid again only once this step's kernels wrote them
        if self.check_finite:
            self._raise_if_not_finite()
        if self.pipeline is not None:
            return self._before_pipeline_step(), None
        work = self._plan_step()
        ws = workspace([w.targets for w in work])
        if self.mode == "gradient":
            for w in work:
                self._mix(w, ws)
            return [], None
        copies_to, copies_from = [], []
        for w in work:
            if w.fused is None or carried.get(w.index) != _versions(w.shards):
                copies_to.extend(row.view(t.shape) for row, t in zip(w.before.unbind(0), w.shards))
                copies_from.extend(w.shards)
        if copies_to:
            torch._foreach_copy_(copies_to, copies_from)
        return work, ws

    def _plan_step(self) -> list[_GroupStep]:
        """Each active group's work at this step; nothing is changed, everything is allocated."""
        update = self.mode == "update"
        decays = self._decays() if update else {}
        work = []
        for gi, members in self._active_groups():
            band = self.operator.band(len(members), self._step_count)
            if band.is_identity:
                continue
            shards = [_local(p) for p in members]
            targets = shards if update else [_local(p.grad) for p in members]
            if not update:
                self._refuse_sparse(members, targets)
            program = band_program(band, minus_identity=update)
            cdtype = compute_dtype(targets[0].dtype)
            warm_weights(program, cdtype, targets[0].device)  # the eager kernels are the fallback
            fused = self._fused(band, targets)
            decay = before = None
            if update:
                before = self._snapshot(gi)[: len(members)]  # (n, local numel)
                d = [decays.get(id(p), 1.0) for p in members]
                if fused is not None or any(x != 1.0 for x in d):  # the kernel always takes the factors
                    decay = _to_device(d, cdtype, before.device).unsqueeze(1)
            if fused is not None:
                kernel, weights = fused
                args = (list(before.unbind(0)), weights, decay.view(-1)) if update else (weights,)
                fused = kernel, kernel.bind(targets, *args)
            work.append(_GroupStep(gi, band, members, shards, targets, program, fused, decay, before))
        return work

    def _before_pipeline_step(self) -> list[_GroupStep]:
        """A pipeline stage mixes every block at every step, with the global band, after
        exchanging its boundary members with the neighbouring stages."""
        if self._global_band()[0].is_identity:
            return []
        missing = [self._name(p) for m in self._members for p in m if p.grad is None]
        if missing:
            raise ValueError(f"pipeline stages smooth every block at every step, but {missing[0]!r} has no gradient")
        if self.mode == "gradient":
            self._pipeline_gradients()
            return []
        work = []
        for gi, members in enumerate(self._members):
            shards = [_local(p) for p in members]
            work.append(_GroupStep(gi, None, members, shards, shards, None, None, None,
                                   self._snapshot(gi)[: len(members)]))
        torch._foreach_copy_([row.view(t.shape) for w in work for row, t in zip(w.before.unbind(0), w.shards)],
                             [t for w in work for t in w.shards])
        return work

    def _mix(self, w: _GroupStep, ws: Workspace) -> None:
        """Mix one group: its fused kernel, or the eager kernels (also when the kernel refuses
        to run: a recompile is never done inside a step)."""
        if w.fused is not None:
            kernel, run = w.fused
            try:
                run()
                if self.mode == "update":
                    self._carried[w.index] = _versions(w.shards)
                return
            except RuntimeError as error:  # raised before the kernel wrote anything
                kernel.give_up(w.targets[0].dtype, w.targets[0].device, error)
        if self.mode == "update":
            mix_updates(w.program, w.shards, w.before, w.decay, ws)
        else:
            mix_gradients(w.program, w.targets, ws)

    def _fused(self, band: Band | None, targets: list[Tensor]) -> tuple[FusedKernel, Tensor] | None:
        """The compiled kernel for ``band`` (prepared for the targets' dtype and device) and its
        weights (``A``'s band, or ``A - I``'s in update mode), or None where the eager kernels run:
        ``fused=False``, pipeline stages, non-contiguous members, small members (a compiled
        call's fixed cost, about half a millisecond, exceeds the work), and a kernel that
        could not compile (it warns once)."""
        if not self.fused or band is None or targets[0].numel() < FUSED_MIN_ELEMENTS or \
                not all(t.is_contiguous() for t in targets):
            return None
        pattern, values = band_pattern(band, self.mode == "update")
        kernel = fused_kernel(pattern, self.mode)
        if not kernel.ready(targets[0].dtype, targets[0].device):
            return None
        cdtype = compute_dtype(targets[0].dtype)
        return kernel, device_weights(values, cdtype, targets[0].device).view(-1)

    @torch.compiler.disable
    def _after_base_step(self, pending: list[_GroupStep], ws: Workspace | None) -> None:
        if pending:
            if self.pipeline is not None:
                self._pipeline_updates(pending, self._decays())
            else:
                for w in pending:
                    self._mix(w, ws)
        self._step_count += 1

    def _refuse_sparse(self, members: list[Tensor], grads: list[Tensor]) -> None:
        for p, g in zip(members, grads):
            if g.layout != torch.strided:
                raise ValueError(
                    f"gradient of {self._name(p)!r} is {g.layout} (sparse); mode='gradient' smooths dense gradients "
                    "only and nothing was changed: use mode='update', or exclude the parameter"
                )

    # -- pipeline stages -----------------------------------------------------------------------

    def _global_band(self):
        stages = self.pipeline
        band = self.operator.band(stages.num_blocks, self._step_count)
        return band, stages.first_block, band.radius

    def _pipeline_gradients(self) -> None:
        band, first, r = self._global_band()
        groups = self._members
        grads = [[_local(p.grad).reshape(-1) for p in m] for m in groups]
        received = exchange_boundaries(self.pipeline, grads, r) if r else [([], [])] * len(grads)
        for members, flat, got in zip(groups, grads, received):
            for p, value in zip(members, mix_stage(band, first, flat, got)):
                _local(p.grad).copy_(value.view(_local(p.grad).shape))

    def _pipeline_updates(self, pending: list[_GroupStep], decays: dict[int, float]) -> None:
        band, first, r = self._global_band()
        deltas = []
        for w in pending:  # before <- delta = p - decay * theta, in place
            rows = list(w.before.unbind(0))
            torch._foreach_mul_(rows, [decays.get(id(p), 1.0) for p in w.members])
            torch._foreach_sub_(rows, [s.reshape(-1) for s in w.shards])
            torch._foreach_neg_(rows)
            deltas.append(rows)
        received = exchange_boundaries(self.pipeline, deltas, r) if r else [([], [])] * len(deltas)
        for w, rows, got in zip(pending, deltas, received):
            for shard, delta, mixed in zip(w.shards, rows, mix_stage(band, first, rows, got)):
                shard.add_(mixed.view(shard.shape)).sub_(delta.view(shard.shape))  # decay * theta + (A delta)_l

    def _snapshot(self, gi: int) -> Tensor:
        buf = self._snapshots.get(gi)
        if buf is None:
            members = self._members[gi]
            p = _local(members[0])
            buf = self._snapshots[gi] = torch.empty((len(members), p.numel()), dtype=p.dtype, device=p.device)
        return buf

    def _decays(self) -> dict[int, float]:
        return {id(p): _decay(b, g, self.decoupled_decay) for b in self._bases for g in b.param_groups
                for p in g["params"]}

    def _warn_unclassified_decay(self) -> None:
        """One warning per optimizer class whose decay cannot be classified (gradsmooth.decay)."""
        for b in self._bases:
            if type(b) in self._warned:
                continue
            if any(g.get("weight_decay") and classify_decay(b, g, self.decoupled_decay) is None for g in b.param_groups):
                self._warned.add(type(b))
                warnings.warn(decay_warning(b), UserWarning, stacklevel=4)

    def _raise_if_not_finite(self) -> None:
        """One read of every gradient and one synchronisation per device: a sum is finite
        when its terms are (inf, -inf and NaN all propagate); a sum that overflowed from
        finite terms (float32 gradients near 3e38) is checked element by element, so a
        finite gradient is never refused."""
        params = [p for b in self._bases for g in b.param_groups for p in g["params"] if p.grad is not None]
        by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
        for p in params:
            by_device[p.grad.device].append(p)
        for device_params in by_device.values():
            sums = torch.stack([_sum(_local(p.grad)) for p in device_params])
            distributed = any(isinstance(p.grad, DTensor) for p in device_params)
            if distributed:
                torch.distributed.all_reduce(sums)  # every rank takes the same decision
            suspects = (~torch.isfinite(sums)).nonzero().view(-1).tolist()
            if not suspects:
                continue
            exact = torch.tensor([_all_finite(_local(device_params[i].grad)) for i in suspects], dtype=torch.float32,
                                 device=sums.device)
            if distributed:  # a rank's shard may hold the non-finite value: decide together
                torch.distributed.all_reduce(exact, op=torch.distributed.ReduceOp.MIN)
            for i, finite in zip(suspects, exact.tolist()):
                if not finite:
                    self._refuse(device_params[i])

    def _refuse(self, p: Tensor) -> None:
        raise FloatingPointError(
            f"gradient of {self._name(p)!r} is not finite at step {self._step_count}; nothing was changed "
            "(pass check_finite=False to let the base optimizer see it)"
        )

    # -- state dict --------------------------------------------------------------------------

    def _own_state(self) -> dict[str, Any]:
        return {"step": self._step_count, **self.settings}

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The bases' state dict in the standard shape (their groups in order, ids numbered
        across them), each group carrying ``"gradsmooth": {"step": ..., settings}``."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state, groups, offset = {}, [], 0
        for b in self._bases:
            part = b.state_dict()
            state.update({k + offset: v for k, v in part["state"].items()})
            for g in part["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]], _STATE_KEY: self._own_state()})
            offset += sum(len(g["params"]) for g in b.param_groups)
        state_dict = {"state": state, "param_groups": groups}
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    @torch._disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint of this wrapper, or a plain checkpoint of its base optimizer(s).

        The whole dict is checked before anything is loaded, and the bases are loaded all or
        none. A checkpoint saved with other smoothing settings (operator or mode) loads with
        a warning naming both: resuming with new settings is allowed, never silent."""
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = self._checked_groups(state_dict)
        step, settings = self._checked_own_state(saved)
        saved = [{k: v for k, v in g.items() if k != _STATE_KEY} for g in saved]
        parts, start = [], 0
        for b in self._bases:
            groups = saved[start : start + len(b.param_groups)]
            start += len(b.param_groups)
            ids = [i for g in groups for i in g["params"]]
            renumber = {old: new for new, old in enumerate(ids)}
            parts.append(
                {
                    "state": {renumber[k]: v for k, v in state_dict["state"].items() if k in renumber},
                    "param_groups": [{**g, "params": [renumber[i] for i in g["params"]]} for g in groups],
                }
            )
        previous = [b.state_dict() for b in self._bases]
        loaded = 0
        try:
            for b, part in zip(self._bases, parts):
                b.load_state_dict(part)
                loaded += 1
        except Exception:
            for b, part in zip(self._bases[:loaded], previous):
                b.load_state_dict(part)
            raise
        if settings is not None:
            self._warn_other_settings(settings)
        self._step_count = step
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def _checked_groups(self, state_dict: Any) -> list[dict[str, Any]]:
        """``state_dict``'s param groups, after checking its shape against the optimizer(s)."""
        saved = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
        if not isinstance(saved, list) or not isinstance(state_dict.get("state"), Mapping):
            raise ValueError("state_dict should hold 'state' (a dict) and 'param_groups' (a list)")
        if len(saved) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved)} parameter groups but the optimizer(s) have {len(self.param_groups)}"
            )
        for i, (g, s) in enumerate(zip(self.param_groups, saved)):
            if not isinstance(s, Mapping) or not isinstance(s.get("params"), list):
                raise ValueError(f"loaded state dict's parameter group {i} should be a dict with a 'params' list")
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"loaded state dict's parameter group {i} has {len(s['params'])} parameters "
                    f"but the optimizer's has {len(g['params'])}"
                )
        return saved

    @staticmethod
    def _checked_own_state(saved: list[dict[str, Any]]) -> tuple[int, dict[str, Any] | None]:
        """The step counter and settings saved in the groups' ``"gradsmooth"`` entries (0 and
        None for a plain base checkpoint), after checking every entry."""
        entries = [(i, g[_STATE_KEY]) for i, g in enumerate(saved) if _STATE_KEY in g]
        if not entries:
            return 0, None
        steps = set()
        for i, own in entries:
            where = f"state_dict['param_groups'][{i}]['{_STATE_KEY}']"
            if not isinstance(own, Mapping) or "step" not in own:
                raise ValueError(f"{where} should be a dict with a 'step' but is: {own!r}")
            step = own["step"]
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise ValueError(f"{where}['step'] should be an integer >= 0 but is: {step!r}")
            steps.add(int(step))
        if len(steps) > 1:
            raise ValueError(f"the loaded state dict's groups disagree on the '{_STATE_KEY}' step: {sorted(steps)}")
        return steps.pop(), dict(entries[0][1])

    def _warn_other_settings(self, saved: Mapping[str, Any]) -> None:
        differ = [k for k in ("operator", "mode") if k in saved and _comparable(saved[k]) != _comparable(self.settings[k])]
        if differ:
            then = ", ".join(f"{k}={saved[k]}" for k in differ)
            now = ", ".join(f"{k}={self.settings[k]}" for k in differ)
            warnings.warn(
                f"the checkpoint was saved with {then}; this wrapper uses {now}: loaded anyway (the base state and "
                "the step counter carry over; smoothing continues with this wrapper's settings)",
                UserWarning,
                stacklevel=3,
            )

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        bases = ", ".join(type(b).__name__ for b in self._bases)
        return f"GradientSmoothing([{bases}], {self.operator!r}, mode={self.mode!r}, {len(self.plan.groups)} groups)"
