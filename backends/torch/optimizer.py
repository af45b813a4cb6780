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

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsmooth import MODES, Band, BlockPlan, DepthOperator, check_mode, find_blocks, make_operator
from gradsmooth.blocks import Exclude, Stacks
from gradsmooth.operators import Alpha

from .blocks import module_sites, named_parameters
from .fused import FUSED_MIN_ELEMENTS, FusedKernel, band_pattern, fused_kernel
from .mixing import band_program, compute_dtype, device_weights, mix_gradients, mix_updates
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


def _decay(base: Optimizer, group: dict[str, Any]) -> float:
    """The decoupled weight-decay factor ``1 - lr * weight_decay`` this group applies, or 1."""
    wd = group.get("weight_decay", 0.0)
    if not wd or not (group.get("decoupled_weight_decay", False) or isinstance(base, torch.optim.Muon)):
        return 1.0
    return 1.0 - float(group["lr"]) * float(wd)


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
    ) -> None:
        self._initialized = False
        bases = _as_bases(optimizer)
        check_mode(mode)
        operator = make_operator(operator, window=window, kernel=kernel, boundary=boundary, alpha=alpha, sigma=sigma,
                                 normalize=normalize)
        named = list(named_parameters(model))
        self._bases = bases
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
        self._active_key: tuple | None = None
        self._active: list[tuple[int, list[Tensor]]] = []
        self.plan = self._make_plan()
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
        """Add a group to the (first) base optimizer, then plan again."""
        if not self._initialized:  # Optimizer.__init__ registering the base's params: they are there
            return
        self._bases[0].add_param_group(param_group)
        self._check_ownership()
        self.plan = self._make_plan()

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

    def _check_ownership(self) -> None:
        owner: dict[int, int] = {}
        for i, b in enumerate(self._bases):
            for g in b.param_groups:
                for p in g["params"]:
                    if owner.setdefault(id(p), i) != i:
                        raise ValueError(f"parameter {self._name(p)!r} is claimed by two optimizers: {owner[id(p)]} and {i}")
                    if isinstance(b, torch.optim.Muon) and p.ndim != 2:
                        raise ValueError(
                            f"Muon handles 2-D parameters only, but optimizer {i} holds {self._name(p)!r} "
                            f"of shape {tuple(p.shape)}; give it to an AdamW beside the Muon"
                        )
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
        return plan

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
        """Smooth and step: ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending = self._before_base_step()
        for b in self._bases:
            b.step()
        self._after_base_step(pending)
        return loss

    @torch.compiler.disable
    def _before_base_step(self) -> list[tuple[Any, ...]]:
        """Check, plan every group's work (compiling fused kernels), then change things: the
        gradient mixing (gradient mode) or the snapshots (update mode). Returns what the
        update mode does after the base step."""
        carried, self._carried = self._carried, {}  # valid again only once this step's kernels wrote them
        if self.check_finite:
            self._raise_if_not_finite()
        active = self._active_groups()
        if self.pipeline is not None:
            if self._global_band()[0].is_identity:
                return []
            missing = [self._name(p) for m in self._members for p in m if p.grad is None]
            if missing:
                raise ValueError(f"pipeline stages smooth every block at every step, but {missing[0]!r} has no gradient")
            if self.mode == "gradient":
                self._pipeline_gradients()
                return []
            active = list(enumerate(self._members))
        work = []
        for gi, members in active:
            # a pipeline stage mixes with the global band after the exchange (_pipeline_updates)
            band = None if self.pipeline is not None else self.operator.band(len(members), self._step_count)
            if band is not None and band.is_identity:
                continue
            shards = [_local(p) for p in members]
            targets = [_local(p.grad) for p in members] if self.mode == "gradient" else shards
            work.append((gi, band, members, shards, targets, self._fused(band, targets)))
        pending, copies_to, copies_from = [], [], []
        for gi, band, members, shards, grads, fused in work:
            if self.mode == "gradient":
                if fused is None:
                    mix_gradients(band_program(band), grads)
                else:
                    kernel, weights = fused
                    kernel(grads, weights)
                continue
            before = self._snapshot(gi)[: len(members)]  # (n, local numel)
            if fused is None or carried.get(gi) != _versions(shards):
                copies_to.extend(row.view(t.shape) for row, t in zip(before.unbind(0), shards))
                copies_from.extend(shards)
            program = None if band is None or fused is not None else band_program(band, minus_identity=True)
            pending.append((gi, program, fused, members, shards, before))
        if copies_to:
            torch._foreach_copy_(copies_to, copies_from)
        return pending

    def _fused(self, band: Band | None, targets: list[Tensor]) -> tuple[FusedKernel, Tensor] | None:
        """The compiled kernel for ``band`` (prepared for the targets' dtype and device) and its
        weights (``A``'s band, or ``A - I``'s in update mode), or None where the eager kernels run:
        ``fused=False``, pipeline stages, non-contiguous members, and small members (a compiled
        call's fixed cost, about half a millisecond, exceeds the work)."""
        if not self.fused or band is None or targets[0].numel() < FUSED_MIN_ELEMENTS or \
                not all(t.is_contiguous() for t in targets):
            return None
        pattern, values = band_pattern(band, self.mode == "update")
        kernel = fused_kernel(pattern, self.mode)
        kernel.prepare(targets[0].dtype, targets[0].device)
        cdtype = compute_dtype(targets[0].dtype)
        return kernel, device_weights(values, cdtype, targets[0].device).view(-1)

    @torch.compiler.disable
    def _after_base_step(self, pending: list) -> None:
        if pending:
            decays = self._decays()
            if self.pipeline is not None:
                self._pipeline_updates(pending, decays)
            else:
                for gi, program, fused, members, shards, before in pending:
                    d = [decays.get(id(p), 1.0) for p in members]
                    cdtype = compute_dtype(before.dtype)
                    if fused is not None:
                        kernel, weights = fused
                        kernel(shards, list(before.unbind(0)), weights,
                               _to_device(d, cdtype, before.device))
                        self._carried[gi] = _versions(shards)
                        continue
                    decay = None if all(x == 1.0 for x in d) else _to_device(d, cdtype, before.device).unsqueeze(1)
                    mix_updates(program, shards, before, decay)
        self._step_count += 1

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

    def _pipeline_updates(self, pending: list, decays: dict[int, float]) -> None:
        band, first, r = self._global_band()
        deltas = []
        for *_, members, shards, before in pending:  # before <- delta = p - decay * theta, in place
            rows = list(before.unbind(0))
            torch._foreach_mul_(rows, [decays.get(id(p), 1.0) for p in members])
            torch._foreach_sub_(rows, [s.reshape(-1) for s in shards])
            torch._foreach_neg_(rows)
            deltas.append(rows)
        received = exchange_boundaries(self.pipeline, deltas, r) if r else [([], [])] * len(deltas)
        for (*_, shards, _), rows, got in zip(pending, deltas, received):
            for shard, delta, mixed in zip(shards, rows, mix_stage(band, first, rows, got)):
                shard.add_(mixed.view(shard.shape)).sub_(delta.view(shard.shape))  # decay * theta + (A delta)_l

    def _snapshot(self, gi: int) -> Tensor:
        buf = self._snapshots.get(gi)
        if buf is None:
            members = self._members[gi]
            p = _local(members[0])
            buf = self._snapshots[gi] = torch.empty((len(members), p.numel()), dtype=p.dtype, device=p.device)
        return buf

    def _decays(self) -> dict[int, float]:
        return {id(p): _decay(b, g) for b in self._bases for g in b.param_groups for p in g["params"]}

    def _raise_if_not_finite(self) -> None:
        """One read of every gradient and one synchronisation per device: a sum is finite
        exactly when its terms are (inf, -inf and NaN all propagate), barring an overflow of
        the float32-or-wider accumulator, which finite gradients never reach in practice."""
        params = [p for b in self._bases for g in b.param_groups for p in g["params"] if p.grad is not None]
        by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
        for p in params:
            by_device[p.grad.device].append(p)
        for device_params in by_device.values():
            sums = torch.stack([_sum(_local(p.grad)) for p in device_params])
            if any(isinstance(p.grad, DTensor) for p in device_params):
                torch.distributed.all_reduce(sums)  # every rank takes the same decision
            finite = torch.isfinite(sums)
            if not bool(finite.all()):
                self._refuse(device_params[int((~finite).nonzero()[0, 0])])

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
        """Load a checkpoint of this wrapper, or a plain checkpoint of its base optimizer(s)."""
        state_dict = state_dict.copy()
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        saved = state_dict.get("param_groups")
        if not isinstance(saved, list) or not isinstance(state_dict.get("state"), dict):
            raise ValueError("state_dict should hold 'state' (a dict) and 'param_groups' (a list)")
        if len(saved) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved)} parameter groups but the optimizer(s) have {len(self.param_groups)}"
            )
        for i, (g, s) in enumerate(zip(self.param_groups, saved)):
            if len(g["params"]) != len(s["params"]):
                raise ValueError(
                    f"loaded state dict's parameter group {i} has {len(s['params'])} parameters "
                    f"but the optimizer's has {len(g['params'])}"
                )
        own = next((g[_STATE_KEY] for g in saved if _STATE_KEY in g), None)
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
        for b, part in zip(self._bases, parts):
            b.load_state_dict(part)
        self._step_count = int(own["step"]) if own else 0
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        bases = ", ".join(type(b).__name__ for b in self._bases)
        return f"GradientSmoothing([{bases}], {self.operator!r}, mode={self.mode!r}, {len(self.plan.groups)} groups)"
