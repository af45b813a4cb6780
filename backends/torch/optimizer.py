"""GradientSmoothing: wraps any torch optimizer and couples its block-wise updates along depth.

The class is thin, as torch.optim's are: it collects the groups (``groups.py``), orchestrates a
step around the base optimizer's (the arithmetic is in ``execution.py``, its kernels in
``mixing.py`` and ``fused.py``, a pipeline stage's in ``pipeline.py``) and reads the base's
``param_groups``, ``state`` and checkpoints through (``checkpoint.py``). docs/method.md has the
method; docs/architecture.md shows how one step flows through these files.

``mode="update"`` (default, the paper's): ``theta_l <- decay_l * theta_l + sum_j A[l, j] delta_j``
where ``delta`` is the base's step without decoupled weight decay, so decoupled decay stays
per layer and is never mixed; coupled L2 decay is part of the gradient, hence of delta.
``mode="gradient"`` (cheaper, no snapshot): ``g_l <- sum_j A[l, j] g_j`` before the base step.
"""

from __future__ import annotations

import inspect
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from gradsmooth import MODES, BlockPlan, DepthOperator, check_mode, make_operator
from gradsmooth.blocks import Exclude, Stacks
from gradsmooth.decay import DecoupledDecay, check_decoupled_decay, decay_warning
from gradsmooth.describe import describe
from gradsmooth.operators import WindowOptions

from . import checkpoint
from .factory import factory_class, made_by_factory
from .blocks import ModelParameters
from .execution import (GroupStep, Snapshots, base_step, check_fused, group_path, plan_group_step, raise_if_not_finite,
                        refuse_sparse, run_group_step)
from .groups import check_muon, decay_factors, local, make_groups, owners, unclassified, warn_if_nothing_smoothed
from .mixing import Workspace, workspace
from .pipeline import PipelineStages, check_stage, stage_gradients, stage_snapshots, stage_updates

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


def _checked_settings(mode: object, operator: DepthOperator | None, check_finite: object, fused: object,
                      pipeline: object, decoupled_decay: object,
                      window: Mapping[str, Any]) -> tuple[DepthOperator, DecoupledDecay]:
    """The operator and the decoupled-decay declaration, after checking every smoothing setting."""
    check_mode(mode)
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite should be True or False but is: {describe(check_finite)}")
    check_fused(fused)
    if pipeline is not None and not isinstance(pipeline, PipelineStages):
        raise TypeError(f"pipeline should be a PipelineStages but is: {describe(pipeline)}")
    if fused and pipeline is not None:
        raise ValueError("fused=True is not available with pipeline stages: pass fused=False")
    return make_operator(operator, **window), check_decoupled_decay(decoupled_decay)


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
    bound = inspect.signature(GradientSmoothing.__init__).bind(None, None, None, **smoothing)
    bound.apply_defaults()
    s = bound.arguments
    operator, _ = _checked_settings(s["mode"], s["operator"], s["check_finite"], s["fused"], s["pipeline"],
                                    s["decoupled_decay"], s["window"])
    params = ModelParameters.of(model, from_structure=s["stacks"] is None)
    trainable = {id(p): 0 for p in params.named.values() if p.requires_grad}
    make_groups(params, trainable, operator, s["stacks"], s["exclude"], whole_stages=s["pipeline"] is not None)


class GradientSmoothing(Optimizer):
    """Gradient Smoothing around any torch optimizer (or a list of them).

    Args:
        optimizer: a ``torch.optim.Optimizer``, or a list of them (e.g. Muon for the
            blocks' matrices and AdamW for the rest).
        model: an ``nn.Module`` (blocks found from its structure) or an iterable of
            ``(name, parameter)`` pairs (blocks found from the names).
        mode: ``"update"`` (smooth the base's step) or ``"gradient"`` (smooth the gradients).
        operator: any [`gradsmooth.DepthOperator`][gradsmooth.DepthOperator], in place of the window arguments.
        stacks: as [`gradsmooth.find_blocks`][gradsmooth.find_blocks] (given, blocks are found from the names).
        exclude: as [`gradsmooth.find_blocks`][gradsmooth.find_blocks]: parameters never smoothed.
        check_finite: raise ``FloatingPointError`` on a non-finite gradient, before anything
            changes. Off by default, as in torch.optim: it reads every gradient once more and
            synchronises with the device once per step (under ``GradScaler`` the scaler
            already skips steps with non-finite gradients).
        fused: ``None`` (default): mix each group of large members (65,536 elements or more)
            with one compiled kernel (``torch.compile``: inductor's C++ on a CPU, Triton on
            CUDA) where a compiler is there, else with the eager chunked kernels; ``True``:
            compile even where no compiler was found (it warns if that fails); ``False``: the
            eager kernels always. Results agree to rounding (the order of the sums differs).
            Kernels compile before anything changes (the first step with a new band pattern:
            seconds, cached on disk by inductor) and never inside a step: one that cannot
            compile or run warns once and the eager kernels run instead. ``print(opt.plan)``
            says which path each group takes.
        pipeline: a [`PipelineStages`][gradsmooth.backends.torch.PipelineStages] when this process holds one stage of a
            pipeline: boundary members are exchanged with the neighbouring stages so the result equals
            smoothing the whole stack.
        decoupled_decay: whether the bases' ``weight_decay`` is decoupled (kept per layer,
            never mixed) or coupled L2 (smoothed with the gradient): ``None`` (default)
            classifies each optimizer (torch.optim's flags, timm, bitsandbytes, torchao, apex,
            DeepSpeed by class name: see [`gradsmooth.decay`][gradsmooth.decay]) and warns once, naming the
            class, where it cannot tell; ``True``/``False`` declares it for every group; a
            function ``param_group -> bool`` declares it group by group.
        **window: the Window Smoothing options (`gradsmooth.operators.WindowOptions`:
            ``window``, ``kernel``, ``boundary``, ``alpha``, ``sigma``, ``normalize``), with
            [`gradsmooth.WindowSmoothing`][gradsmooth.WindowSmoothing]'s defaults (window 3, uniform, renormalize,
            alpha 1); ``alpha`` may be a function of the step.

    Under FSDP2 (``fully_shard``) the members of a group are DTensors of one shape and one
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
        mode: str = "update",
        operator: DepthOperator | None = None,
        stacks: Stacks = None,
        exclude: Exclude = None,
        check_finite: bool = False,
        fused: bool | None = None,
        pipeline: PipelineStages | None = None,
        decoupled_decay: DecoupledDecay = None,
        **window: Unpack[WindowOptions],
    ) -> None:
        bases = _as_bases(optimizer)
        self.operator, self.decoupled_decay = _checked_settings(mode, operator, check_finite, fused, pipeline,
                                                                decoupled_decay, window)
        self.mode, self.check_finite, self.fused, self.pipeline = mode, check_finite, fused, pipeline
        self._bases = bases
        self._params = ModelParameters.of(model, from_structure=stacks is None)
        self._stacks, self._exclude = stacks, exclude
        self._step_count = 0
        self._snapshots = Snapshots()
        self._warned: set[type] = set()
        self._replan()
        warn_if_nothing_smoothed(self._plan, stacklevel=2)  # the caller of __init__
        self.settings = {"mode": mode, "operator": repr(self.operator), "check_finite": check_finite, "fused": fused}
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
        ``path``: "fused" (one compiled kernel), "fused (compiles at the first step)", or
        "eager (why)": ``fused=False``, small or non-contiguous members, no compiler, a pipeline
        stage, or a kernel that did not compile."""
        paths = []
        for members in self._members:
            if self.pipeline is not None:
                paths.append("eager (pipeline stage)")
                continue
            band = self.operator.band(len(members), self._step_count)
            paths.append(group_path(band, [local(p) for p in members], self.mode, self._fused))
        return self._plan.with_paths(paths)

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
            base_step(b)
        self._after_base_step(pending, ws)
        return loss

    @torch.compiler.disable
    def _before_base_step(self) -> tuple[list[GroupStep], Workspace | None]:
        """Check, and plan every group's work (compiling fused kernels, allocating the workspace
        and snapshots); then change things: the gradient mixing (gradient mode) or the
        snapshots (update mode). Returns what the update mode does after the base step."""
        if self.check_finite:
            raise_if_not_finite([p for b in self._bases for g in b.param_groups for p in g["params"]
                                 if p.grad is not None], self._name, self._step_count)
        if self.pipeline is not None:
            return self._before_stage_step(), None
        work = self._plan_step()
        ws = workspace([w.targets for w in work])
        if self.mode == "gradient":
            for w in work:
                run_group_step(w, self.mode, ws)
            return [], None
        Snapshots.take(work)  # theta before the base step, whatever wrote it since the last step
        return work, ws

    def _plan_step(self) -> list[GroupStep]:
        """Each active group's work at this step; nothing is changed, everything is allocated."""
        decays = decay_factors(self._bases, self.decoupled_decay) if self.mode == "update" else {}
        work = []
        for gi, members in self._active_groups():
            band = self.operator.band(len(members), self._step_count)
            if band.is_identity:
                continue
            if self.mode == "gradient":
                refuse_sparse(members, self._name)
            work.append(plan_group_step(gi, members, band, self.mode, fused=self._fused, snapshots=self._snapshots,
                                        capacity=len(self._members[gi]), decays=decays))
        return work

    def _before_stage_step(self) -> list[GroupStep]:
        """A pipeline stage mixes every block at every step, with the global band, after
        exchanging its boundary members with the neighbouring stages (pipeline.py)."""
        if self._stage_band().is_identity:
            return []
        check_stage(self._members, self._name)
        if self.mode == "gradient":
            stage_gradients(self.pipeline, self._stage_band(), self._members)
            return []
        return stage_snapshots(self._members, self._snapshots)

    def _stage_band(self):
        return self.operator.band(self.pipeline.num_blocks, self._step_count)

    @torch.compiler.disable
    def _after_base_step(self, pending: list[GroupStep], ws: Workspace | None) -> None:
        if pending and self.pipeline is not None:
            stage_updates(self.pipeline, self._stage_band(), pending, decay_factors(self._bases, self.decoupled_decay))
        for w in pending if self.pipeline is None else ():
            run_group_step(w, self.mode, ws)
        self._step_count += 1

    # -- state dict --------------------------------------------------------------------------

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """The bases' state dict in the standard shape (their groups in order, ids numbered
        across them), each group carrying ``"gradsmooth": {"step": ..., settings}``."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state_dict = checkpoint.pack(self._bases, {"step": self._step_count, **self.settings})
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
            checkpoint.warn_other_settings(settings, self.settings)
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
