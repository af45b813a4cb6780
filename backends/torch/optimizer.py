"""GradientSmoothing: wraps any torch optimizer and couples its block-wise updates along depth.

The class is thin, as torch.optim's are: it collects the groups (``groups.py``), orchestrates a
step around the base optimizer's (each group's step planned and run by ``dispatch.py`` through
the kernel contract, ``contract.py``; a pipeline stage's in ``pipeline.py``) and reads the base's
``param_groups``, ``state`` and checkpoints through (``checkpoint.py``). docs/method.md has the
method; docs/architecture.md shows how one step flows through these files.

``mode="update"`` (default, the paper's): ``theta_l <- decay_l * theta_l + sum_j A[l, j] delta_j``
where ``delta`` is the base's step without decoupled weight decay, so decoupled decay stays
per layer and is never mixed; coupled L2 decay is part of the gradient, hence of delta.
``mode="gradient"`` (cheaper, no snapshot): ``g_l <- sum_j A[l, j] g_j`` before the base step.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsmooth import MODES, Band, BlockPlan
from gradsmooth.decay import decay_warning
from gradsmooth.describe import describe
from gradsmooth.settings import Settings, SmoothingOptions

from . import checkpoint
from .bands import layout
from .blocks import ModelParameters
from .checks import raise_if_not_alike, raise_if_not_finite, refuse_sparse
from .coefficients import to_device
from .contract import Members
from .dispatch import Planned, path, plan, run, select
from .eager import compute_dtype
from .factory import factory_class, made_by_factory
from .groups import check_muon, decay_factors, local, make_groups, owners, unclassified, warn_if_nothing_smoothed
from .pipeline import PipelineStages, check_stage, stage_gradients, stage_updates
from .snapshots import Snapshots

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GradientSmoothing", "MODES"]


def _as_bases(optimizer: Optimizer | Sequence[Optimizer]) -> list[Optimizer]:
    """``optimizer`` as a list of distinct torch optimizers (one, or several side by side)."""
    if isinstance(optimizer, nn.Module):
        raise TypeError(f"optimizer should be a torch.optim.Optimizer or a list of them but is: {describe(optimizer)}: "
                        "the optimizer comes first, GradientSmoothing(optimizer, model)")
    bases = [optimizer] if isinstance(optimizer, Optimizer) else list(optimizer) if isinstance(optimizer, Iterable) else None
    if not bases:
        raise TypeError(f"optimizer should be a torch.optim.Optimizer or a list of them but is: {describe(optimizer)}")
    for b in bases:
        if not isinstance(b, Optimizer):
            raise TypeError(f"optimizer should be a torch.optim.Optimizer or a list of them but holds: {describe(b)}")
        if isinstance(b, GradientSmoothing):
            raise TypeError("optimizer is already a GradientSmoothing; wrap its base optimizer instead")
    if len({id(b) for b in bases}) != len(bases):
        raise ValueError("optimizer lists the same optimizer twice")
    return bases


#: The options GradientSmoothing takes (gradsmooth.settings), besides the window options.
OPTIONS = ("mode", "operator", "stacks", "exclude", "check_finite", "fused", "decoupled_decay")


def _settings(options: Mapping[str, Any], pipeline: object) -> Settings:
    """The checked settings of ``options``, with ``pipeline`` checked beside them."""
    settings = Settings.of(options, OPTIONS, "GradientSmoothing")
    if pipeline is not None and not isinstance(pipeline, PipelineStages):
        raise TypeError(f"pipeline should be a PipelineStages but is: {describe(pipeline)}")
    if settings.fused and pipeline is not None:
        raise ValueError("fused=True is not available with pipeline stages: pass fused=False")
    return settings


def _check_base(base: object) -> None:
    """``base`` should build a torch optimizer: an ``Optimizer`` subclass (not a wrapper) or a function."""
    if isinstance(base, type):
        if not issubclass(base, Optimizer):
            raise TypeError("base should be a torch.optim.Optimizer subclass or a function (params, **kwargs) -> "
                            f"Optimizer but is: {describe(base)}")
        if issubclass(base, GradientSmoothing):
            raise TypeError(f"base should be the base optimizer's class but is a GradientSmoothing class: {describe(base)}")
    elif not callable(base) or isinstance(base, (nn.Module, Optimizer)):
        raise TypeError("base should be a torch.optim.Optimizer subclass or a function (params, **kwargs) -> "
                        f"Optimizer but is: {describe(base)}" + (": factory(base, model) takes the base optimizer's "
                                                                  "class first" if isinstance(base, nn.Module) else ""))


def base_step(base: Optimizer) -> None:
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


def _as_pairs(model: object) -> list[tuple[str, Tensor]]:
    """``model``'s ``(name, parameter)`` pairs as a list (read once), each checked."""
    if isinstance(model, (str, bytes, Mapping)) or not isinstance(model, Iterable):
        raise TypeError(f"model should be an nn.Module or an iterable of (name, parameter) pairs but is: {describe(model)}")
    pairs = list(model)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], Tensor)):
            raise TypeError(
                f"model should be an nn.Module or an iterable of (name, parameter) pairs but holds: {describe(pair)}")
    return pairs


def _check_smoothing(model: nn.Module | list[tuple[str, Tensor]], smoothing: Mapping[str, Any]) -> None:
    """Check ``GradientSmoothing``'s keyword arguments ``smoothing`` as its ``__init__`` would, and
    plan ``model``'s trainable parameters with them (``stacks`` and ``exclude`` are checked
    against the names)."""
    if "optimizer" in smoothing:
        raise TypeError("optimizer is not a smoothing argument: the factory builds the optimizer from base; "
                        f"got optimizer={describe(smoothing['optimizer'])}")
    options = {k: v for k, v in smoothing.items() if k != "pipeline"}
    settings = _settings(options, smoothing.get("pipeline"))
    params = ModelParameters.of(model, from_structure=settings.stacks is None)
    trainable = {id(p): 0 for p in params.named.values() if p.requires_grad}
    make_groups(params, trainable, settings.operator, settings.stacks, settings.exclude,
                whole_stages=smoothing.get("pipeline") is not None)


class GradientSmoothing(Optimizer):
    """Gradient Smoothing around any torch optimizer (or a list of them).

    Args:
        optimizer: a ``torch.optim.Optimizer``, or a list of them (e.g. Muon for the
            blocks' matrices and AdamW for the rest).
        model: an ``nn.Module`` (blocks found from its structure) or an iterable of
            ``(name, parameter)`` pairs (blocks found from the names).
        pipeline: a [`PipelineStages`][gradsmooth.backends.torch.PipelineStages] when this process
            holds one stage of a pipeline: boundary members are exchanged with the neighbouring
            stages so the result equals smoothing the whole stack.
        **options: the smoothing options ([`Settings`][gradsmooth.settings.Settings], where each
            is described): ``mode``, ``operator``, ``stacks``, ``exclude``, ``check_finite``,
            ``fused``, ``decoupled_decay`` and the window options ``window``, ``kernel``,
            ``boundary``, ``alpha``, ``sigma``, ``normalize`` (default: window 3, uniform,
            renormalize, alpha 1, update mode).

    ``fused=None`` mixes each group of large members with one compiled kernel where a compiler
    is there (``torch.compile``: inductor's C++ on a CPU, Triton on CUDA), compiled before
    anything changes and never inside a step; ``print(opt.plan)`` says which path each group
    takes. Under FSDP2 (``fully_shard``) the members of a group are DTensors of one shape and one
    placement, so each rank smooths its own shards with no communication.

    ``param_groups`` and ``state`` are the base optimizers' own, so LR schedulers, gradient
    clipping and ``GradScaler`` act on the base. ``plan`` shows what is smoothed. A step is
    all or nothing: every check, compile and allocation happens before the first write.
    """

    def __init__(
        self,
        optimizer: Optimizer | Sequence[Optimizer],
        model: nn.Module | Iterable[tuple[str, Tensor]],
        *,
        pipeline: PipelineStages | None = None,
        **options: Unpack[SmoothingOptions],
    ) -> None:
        bases = _as_bases(optimizer)
        self.settings = settings = _settings(options, pipeline)
        self.operator, self.decoupled_decay = settings.operator, settings.decoupled_decay
        self.mode, self.check_finite, self.fused, self.pipeline = (settings.mode, settings.check_finite,
                                                                   settings.fused, pipeline)
        self._bases = bases
        self._params = ModelParameters.of(model, from_structure=settings.stacks is None)
        self._stacks, self._exclude = settings.stacks, settings.exclude
        self._step_count = 0
        self._snapshots = Snapshots()
        self._warned: set[type] = set()
        self._replan()
        warn_if_nothing_smoothed(self._plan, stacklevel=2)  # the caller of __init__
        # The wrapper holds no parameter groups of its own: it reads the bases' (below). So it
        # does not register parameters through Optimizer.__init__, but sets up the rest of
        # torch's machinery (hooks, the profiled step) the way an unpickled optimizer does;
        # its defaults are the bases' (schedulers such as OneCycleLR read them), the first's first.
        Optimizer.__setstate__(self, {"defaults": {k: v for b in reversed(bases) for k, v in b.defaults.items()}})

    @classmethod
    def factory(
        cls,
        base: type[Optimizer] | Callable[..., Optimizer],
        model: nn.Module | Iterable[tuple[str, Tensor]],
        **smoothing: Any,
    ) -> type[GradientSmoothing]:
        """An optimizer class that builds ``base`` over the parameters it is given and wraps it.

        For frameworks that create the optimizer themselves, from a class and its keyword
        arguments, as Hugging Face's ``Trainer(optimizer_cls_and_kwargs=(cls, kwargs))`` does
        (``cls(param_groups, **kwargs)``):

        ```python
        AdamWSmoothed = GradientSmoothing.factory(torch.optim.AdamW, model, window=3)
        opt = AdamWSmoothed(model.parameters(), lr=3e-4)
        # the same as GradientSmoothing(torch.optim.AdamW(model.parameters(), lr=3e-4), model, window=3)
        ```

        Every argument is checked now, and the model's trainable parameters are planned with
        ``stacks`` and ``exclude``, so a mistake raises here, naming the argument, and not later
        inside the framework.

        Args:
            base: the base optimizer's class (a ``torch.optim.Optimizer`` subclass), or any
                function ``(params, **kwargs) -> Optimizer`` (a ``functools.partial`` of a class).
            model: as for ``GradientSmoothing``. An ``nn.Module`` is read each time the class is
                instantiated (after a framework has moved, wrapped or sharded it); ``(name,
                parameter)`` pairs are read once, now.
            **smoothing: ``GradientSmoothing``'s keyword arguments (``window``, ``kernel``,
                ``mode``, ``operator``, ``stacks``, ``exclude``, ...).

        Returns:
            A subclass of this class whose ``__init__`` is ``(params, **kwargs)``; its instances
            are ``GradientSmoothing`` instances. Being an ``Optimizer`` subclass matters:
            transformers 5 takes anything else for an optimizer factory and calls it with no
            arguments first.
        """
        _check_base(base)
        model = model if isinstance(model, nn.Module) else _as_pairs(model)
        _check_smoothing(model, smoothing)
        wrapper = made_by_factory(cls)

        def init(self: GradientSmoothing, params: Any, **kwargs: Any) -> None:
            optimizer = base(params, **kwargs)
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"base should return a torch.optim.Optimizer but {describe(base)} returned: "
                                f"{describe(optimizer)}")
            wrapper.__init__(self, optimizer, model, **smoothing)

        label = getattr(base, "__name__", type(base).__name__)
        return factory_class(wrapper, label, init, f"{wrapper.__name__}.factory({label}, model, **{smoothing!r})")

    # -- the base's groups and state, read through ----------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        if len(self._bases) == 1:
            return self._bases[0].param_groups
        return [g for b in self._bases for g in b.param_groups]

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
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
        raise AttributeError("state is the base optimizer's: load it with load_state_dict")

    @property
    def optimizers(self) -> tuple[Optimizer, ...]:
        """The base optimizer(s)."""
        return tuple(self._bases)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the (first) base optimizer, then plan again; on any error nothing
        is added (the group is checked first, and taken out again if planning fails)."""
        base = self._bases[0]
        self._params = self._params.refreshed()  # name (and plan) parameters the model gained since
        params = param_group.get("params") if isinstance(param_group, Mapping) else None
        params = [params] if isinstance(params, Tensor) else list(params) if isinstance(params, (list, tuple)) else []
        for p in params:
            if isinstance(p, Tensor):
                check_muon(base, 0, p, self._name(p))
        groups_before = len(base.param_groups)
        base.add_param_group(param_group)  # torch checks the group before it appends it
        try:
            self._replan()
        except Exception:
            del base.param_groups[groups_before:]
            self._replan()
            raise

    # -- planning ----------------------------------------------------------------------------

    def _name(self, p: Tensor) -> str:
        return self._params.name(p, self._bases)

    def _replan(self) -> None:
        """Owners, groups and the plan, from the bases' groups as they are now."""
        owner = owners(self._bases, self._params)
        groups = make_groups(self._params, owner, self.operator, self._stacks, self._exclude,
                             whole_stages=self.pipeline is not None)
        self._plan: BlockPlan = groups.plan
        self._members = groups.members
        self._snapshots.clear()
        self._active_key: tuple | None = None
        self._active: list[tuple[int, list[Tensor]]] = []
        for b in unclassified(self._bases, self.decoupled_decay):
            if type(b) not in self._warned:
                self._warned.add(type(b))
                warnings.warn(decay_warning(b), UserWarning, stacklevel=3)  # the caller of __init__ or add_param_group

    @property
    def _fused(self) -> bool | None:
        """``fused`` as the step applies it: pipeline stages mix with the eager kernels."""
        return False if self.pipeline is not None else self.fused

    @property
    def plan(self) -> BlockPlan:
        """What is smoothed: the groups, in depth order, and what is not; printed, each group's
        ``path``: the compiled kernel that mixes it ("blocked", "inductor"; "... (compiles at
        the first step)" until it is ready), or "eager (why)": ``fused=False``, small or
        non-contiguous members, no compiler, a pipeline stage, or a kernel that did not compile
        (``dispatch.select`` decides)."""
        paths = []
        kind = self.mode  # the kernels' kind: "update" or "gradient"
        dtypes = [local(members[0]).dtype for members in self._members]  # as now: a model may be cast after
        for members in self._members:
            if self.pipeline is not None:
                paths.append("eager (pipeline stage)")
                continue
            band = layout(self.operator.band(len(members), self._step_count), minus_identity=kind == "update")
            shards = [local(p) for p in members]
            first = shards[0]
            kernel, reason = select(kind, first.dtype, first.device, first.numel(),
                                    all(t.is_contiguous() for t in shards), self._fused)
            paths.append(path(kernel, reason, band, kind, first.dtype, first.device))
        return self._plan.with_paths(paths).with_dtypes(dtypes)

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
        pending = self._before_base_step()
        for b in self._bases:
            base_step(b)
        self._after_base_step(pending)
        return loss

    @torch.compiler.disable
    def _before_base_step(self) -> list[Planned]:
        """Check, and plan every group's step (selecting and compiling kernels, allocating
        snapshots and scratch); then change things: the gradient mixing (gradient mode) or the
        snapshots (update mode). Returns what update mode runs after the base step."""
        if self.check_finite:
            raise_if_not_finite([p for b in self._bases for g in b.param_groups for p in g["params"]
                                 if p.grad is not None], self._name, self._step_count)
        if self.pipeline is not None:
            return self._before_stage_step()
        work = self._plan_step()
        if self.mode == "gradient":
            for w in work:
                run(w)
            return []
        # theta before the base step, whatever wrote it since the last step
        Snapshots.take([row for w in work for row in w.members.arrays[1]], [t for w in work for t in w.members.arrays[0]])
        return work

    def _plan_step(self) -> list[Planned]:
        """Each active group's step, planned (``dispatch.plan``); nothing is changed."""
        update = self.mode == "update"
        decays = decay_factors(self._bases, self.decoupled_decay) if update else {}
        work = []
        for gi, members in self._active_groups():
            band = self.operator.band(len(members), self._step_count)
            if band.is_identity:
                continue
            shards = [local(p) for p in members]
            raise_if_not_alike(members, {"parameter": shards}, self._name)
            if update:
                rows = list(self._snapshots.buffer(gi, shards, len(self._members[gi])).unbind(0))  # (numel,) each
                coefficients = to_device([decays.get(id(p), 1.0) for p in members], compute_dtype(shards[0].dtype),
                                         shards[0].device)
                work.append(plan(Members("update", [shards, rows]), layout(band, minus_identity=True), coefficients,
                                 self._fused))
            else:
                refuse_sparse(members, self._name)
                work.append(plan(Members("gradient", [[local(p.grad) for p in members]]), layout(band), None,
                                 self._fused))
        return work

    def _before_stage_step(self) -> list[list[Tensor]]:
        """A pipeline stage mixes every block at every step, with the global band, after
        exchanging its boundary members with the neighbouring stages (pipeline.py); update
        mode returns the snapshot rows it took."""
        if self._stage_band().is_identity:
            return []
        check_stage(self._members, self._name)
        for members in self._members:
            raise_if_not_alike(members, {"parameter": [local(p) for p in members]}, self._name)
        if self.mode == "gradient":
            stage_gradients(self.pipeline, self._stage_band(), self._members)
            return []
        rows = [list(self._snapshots.buffer(gi, [local(p) for p in m], len(m)).unbind(0))
                for gi, m in enumerate(self._members)]
        Snapshots.take([r for rs in rows for r in rs], [local(p) for m in self._members for p in m])
        return rows

    def _stage_band(self) -> Band:
        return self.operator.band(self.pipeline.num_blocks, self._step_count)

    @torch.compiler.disable
    def _after_base_step(self, pending: list) -> None:
        if pending and self.pipeline is not None:
            stage_updates(self.pipeline, self._stage_band(), self._members, pending,
                          decay_factors(self._bases, self.decoupled_decay))
        for w in pending if self.pipeline is None else ():
            run(w)
        self._step_count += 1

    # -- state dict --------------------------------------------------------------------------

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The bases' state dict in the standard shape (their groups in order, ids numbered
        across them), each group carrying ``"gradsmooth": {"step": ..., settings}``."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state_dict = checkpoint.pack(self._bases, {"step": self._step_count, **self.settings.summary()})
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
        saved = checkpoint.checked_groups(state_dict, self.param_groups)
        step, settings = checkpoint.checked_own_state(saved)
        parts = checkpoint.split(saved, state_dict["state"], self._bases)
        checkpoint.check_shapes(parts, self._bases, self._name)
        checkpoint.load_all_or_none(self._bases, parts)
        if settings is not None:
            checkpoint.warn_other_settings(settings, self.settings.summary())
        self._step_count = step
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        bases = ", ".join(type(b).__name__ for b in self._bases)
        fused = "" if self.fused is None else f", fused={self.fused}"
        return (f"GradientSmoothing([{bases}], {self.operator!r}, mode={self.mode!r}{fused}, "
                f"{len(self._plan.groups)} groups)")
