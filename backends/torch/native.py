"""``SmoothedAdamW`` and ``SmoothedSGD``: torch optimizers that compute each block's update and
smooth it along depth in the same pass.

A wrapper (``GradientSmoothing``) must see its base's update before it can smooth it, which
costs a snapshot of the blocks (update mode) or an extra pass. An optimizer that computes the
update itself does not: for a group of n members it reads every member's parameter, gradient
and state at a position, computes each member's update, mixes them with the band and writes
the parameters and the state — the passes of AdamW (or SGD) alone. The result equals
``GradientSmoothing(torch.optim.AdamW(...), model, mode="update")`` (``coefficients.py`` has
the formulas). Parameters outside every group (and groups with fewer than two gradients at a
step) take ``torch.optim``'s own AdamW or SGD step (its fused kernel where it has one).

They are ordinary ``torch.optim.Optimizer`` s: their own ``param_groups`` (LR schedulers,
gradient clipping, ``GradScaler``), torch's ``state`` layout (``step``, ``exp_avg``,
``exp_avg_sq``; ``momentum_buffer``) and ``state_dict``, hooks. Under FSDP2 each rank mixes its
own shards, as the wrapper does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.adamw import adamw as _adamw
from torch.optim.sgd import sgd as _sgd

from gradsmooth import BlockPlan
from gradsmooth.describe import describe
from gradsmooth.settings import Settings, SmoothingOptions

from .bands import layout
from .checks import raise_if_not_alike
from .blocks import ModelParameters
from .checkpoint import warn_other_settings
from .coefficients import adamw_coefficients, coefficient_table, sgd_coefficients
from .contract import Members
from .dispatch import Planned, path, plan, run, select
from .factory import factory_class, made_by_factory
from .groups import local, make_groups, warn_if_nothing_smoothed

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SmoothedAdamW", "SmoothedSGD"]


def _fusable(params: list[Tensor]) -> bool:
    """Whether torch's own fused kernel can step ``params`` (floating, one supported device type):
    no temporaries the size of a parameter, as a fused AdamW base has none."""
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    try:
        supported = _get_fused_kernels_supported_devices()
    except Exception:  # pragma: no cover - a private helper moved: torch's default kernels
        return False
    return all(p.is_floating_point() and not p.is_complex() and p.device.type in supported
               and type(p) in (Tensor, nn.Parameter) for p in params)


#: The smoothing options SmoothedAdamW and SmoothedSGD take (gradsmooth.settings), besides the
#: window options; ``fused`` is torch's param-group flag, and their arithmetic is fixed.
OPTIONS = ("operator", "stacks", "exclude")


def _implementation(group: dict[str, Any], params: list[Tensor], kind: str) -> dict[str, bool | None]:
    """torch's ``foreach`` and ``fused`` for the parameters of ``group`` outside every smoothing
    group: the group's flags, with torch's fused kernel where it can step them and the group
    does not say ``fused=False`` or ``foreach=True`` (no temporaries the size of a parameter,
    as a fused AdamW base has none). Never torch's fused SGD for float16 or bfloat16 on a CPU:
    in torch 2.13 it skips the vectorised part of the update (pytorch/pytorch#191763)."""
    fused = group.get("fused") is not False and not group.get("foreach") and _fusable(params)
    if kind == "sgd" and any(p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16) for p in params):
        fused = False
    return {"foreach": group.get("foreach"), "fused": fused or None}


def _number(name: str, value: Any, low: float = 0.0, below: float | None = None) -> None:
    """torch.optim's checks: ``name`` should be a number >= ``low`` (and < ``below``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} should be a number but is: {describe(value)}")
    v = float(value.item()) if isinstance(value, Tensor) and value.numel() == 1 else value
    if isinstance(v, Tensor) or not v >= low or (below is not None and not v < below):
        bound = f">= {low}" + (f" and < {below}" if below is not None else "")
        raise ValueError(f"{name} should be {bound} but is: {describe(value)}")


class Flag(NamedTuple):
    """A param-group key of torch's own optimizer: the values implemented (None: any of None,
    True, False, which only choose an implementation), and what to do about another value."""

    implemented: tuple[bool, ...] | None
    instead: str = ""


#: torch.optim's boolean param-group flags, each implemented exactly or refused by name.
_IMPLEMENTATION = Flag(None)  # foreach, fused: which kernels run, not what they compute
ADAMW_FLAGS = {
    "maximize": Flag((False, True)),
    "foreach": _IMPLEMENTATION,
    "fused": _IMPLEMENTATION,
    "amsgrad": Flag((False,), "use GradientSmoothing(torch.optim.AdamW(..., amsgrad=True), model)"),
    "capturable": Flag((False,), "its step is not CUDA-graph capturable; use GradientSmoothing(torch.optim.AdamW("
                                 "..., capturable=True), model)"),
    "differentiable": Flag((False,), "its step is not differentiable; use GradientSmoothing(torch.optim.AdamW(..., "
                                     "differentiable=True), model)"),
    "decoupled_weight_decay": Flag((True,), "its weight decay is decoupled, as AdamW's; for Adam's coupled L2 decay "
                                            "use GradientSmoothing(torch.optim.Adam(...), model)"),
}
SGD_FLAGS = {
    "maximize": Flag((False, True)),
    "foreach": _IMPLEMENTATION,
    "fused": _IMPLEMENTATION,
    "nesterov": Flag((False, True)),
    "differentiable": Flag((False,), "its step is not differentiable; use GradientSmoothing(torch.optim.SGD(..., "
                                     "differentiable=True), model)"),
}


def _fused_of(groups: list[dict[str, Any]]) -> bool | None:
    """The ``fused`` flag of a smoothing group whose members sit in ``groups``: False where any
    says False, True where any says True, else None (the default)."""
    flags = {g.get("fused") for g in groups}
    return False if False in flags else True if True in flags else None


class _NativeSmoothing(Optimizer):
    """What SmoothedAdamW and SmoothedSGD share: names and groups, the plan, and a step that
    plans (checks, allocates, compiles) every group before it changes anything."""

    kind = ""  # "adamw" or "sgd": the kernels' kind
    _state_keys: tuple[str, ...] = ()  # the state each member's kernel arrays hold, in their order
    flags: dict[str, Flag] = {}  # torch's param-group flags: implemented, or refused by name

    def __init__(self, model: nn.Module | Iterable[tuple[str, Tensor]], params: Any, defaults: dict[str, Any],
                 options: Mapping[str, Any]) -> None:
        self._check_flags(defaults)
        base = type(self).__name__.removeprefix("Smoothed")
        advice = {"mode": f"it smooths {base}'s update; for mode='gradient' use GradientSmoothing(torch.optim.{base}"
                          "(...), model, mode='gradient')",
                  "check_finite": f"use GradientSmoothing(torch.optim.{base}(...), model, check_finite=True)",
                  "decoupled_decay": f"its weight decay is {base}'s own"}
        self.settings = settings = Settings.of(options, OPTIONS, type(self).__name__, instead=advice)
        self.operator = settings.operator
        self._params = ModelParameters.of(model, from_structure=settings.stacks is None)
        self._stacks, self._exclude = settings.stacks, settings.exclude
        if params is None:
            params = [p for p in self._params.named.values() if p.requires_grad]
        super().__init__(params, defaults)
        self._replan()
        warn_if_nothing_smoothed(self._plan, stacklevel=3)  # the caller of SmoothedAdamW() or SmoothedSGD()

    @classmethod
    def factory(cls, model: nn.Module | Iterable[tuple[str, Tensor]], **smoothing: Any) -> type[_NativeSmoothing]:
        """An optimizer class whose ``__init__`` is ``(params, **kwargs)``, for frameworks that
        build the optimizer from a class and its keyword arguments (Hugging Face's
        ``Trainer(optimizer_cls_and_kwargs=(cls, kwargs))`` calls ``cls(param_groups, **kwargs)``):

        ```python
        Smoothed = SmoothedAdamW.factory(model, window=3)
        opt = Smoothed(model.parameters(), lr=3e-4)  # SmoothedAdamW(model, lr=3e-4, params=..., window=3)
        ```

        ``smoothing`` (window options, ``stacks``, ``exclude``, ``operator``, hyperparameter
        defaults) is checked now, by building the optimizer once over ``model``'s trainable
        parameters, so a mistake raises here; an ``nn.Module`` is read again at each
        instantiation (after a framework moved or wrapped it), ``(name, parameter)`` pairs
        once, now. ``kwargs`` may not repeat a key of ``smoothing``.
        """
        model = model if isinstance(model, nn.Module) else list(model)
        if "params" in smoothing:
            raise TypeError("params is not a factory argument: the class is given its params when it is built")
        native = made_by_factory(cls)
        native(model, **smoothing)  # every argument checked now

        def init(self: _NativeSmoothing, params: Any, **kwargs: Any) -> None:
            twice = sorted(set(kwargs) & set(smoothing))
            if twice:
                raise TypeError(f"{twice[0]} is given both to {native.__name__}.factory and when building the "
                                f"optimizer ({describe(kwargs[twice[0]])} and {describe(smoothing[twice[0]])}): give it once")
            native.__init__(self, model, params=params, **smoothing, **kwargs)

        return factory_class(native, "factory", init, f"{native.__name__}.factory(model, **{smoothing!r})")

    def _replan(self) -> None:
        owned = {id(p): 0 for g in self.param_groups for p in g["params"]}
        if not any(id(p) in owned for p in self._params.named.values()):
            raise ValueError("params holds no parameter of model: pass the model whose parameters it holds "
                             "(or leave params out: every trainable parameter of model)")
        groups = make_groups(self._params, owned, self.operator, self._stacks, self._exclude)
        self._plan, self._members = groups.plan, groups.members

    def _check_flags(self, group: Mapping[str, Any], where: str = "") -> None:
        """Refuse, by name, a torch flag in ``group`` that this optimizer does not implement
        (``where``: which group, for the message; empty for the constructor's arguments)."""
        name, at = type(self).__name__, f" in {where}" if where else ""
        for key, flag in self.flags.items():
            if key not in group:
                continue
            value = group[key]
            if not (isinstance(value, bool) or (flag.implemented is None and value is None)):
                allowed = "None, True or False" if flag.implemented is None else "True or False"
                raise TypeError(f"{key} should be {allowed} but is: {describe(value)}{at}")
            if flag.implemented is not None and value not in flag.implemented:
                raise ValueError(f"{name} does not implement {key}={value!r}{at}: {flag.instead}; nothing was changed")
        if group.get("foreach") and group.get("fused"):
            raise ValueError(f"foreach=True and fused=True cannot be set together{at}, as in torch.optim")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, then plan again (on any error the group is taken out again).
        A torch flag this optimizer does not implement is refused first, by name."""
        if isinstance(param_group, Mapping):
            self._check_flags({**self.defaults, **param_group}, f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)
        if "_members" not in self.__dict__:  # torch's __init__ adds the first groups: planned after
            return
        try:
            self._params = self._params.refreshed()
            self._replan()
        except Exception:
            self.param_groups.pop()
            self._replan()
            raise

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict, each param group carrying ``"gradsmooth": {"operator": ...}``: a
        checkpoint loaded with other smoothing settings warns, naming both."""
        state_dict = super().state_dict()
        for group in state_dict["param_groups"]:
            group["gradsmooth"] = {"operator": repr(self.operator)}
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's ``load_state_dict`` (a plain ``torch.optim.AdamW``/``SGD`` checkpoint loads too);
        one warning naming both when the checkpoint's smoothing settings are not these. A
        checkpoint whose groups lack a hyperparameter, or set a torch flag this optimizer does
        not implement (``amsgrad=True``, ...), is refused before anything is loaded."""
        groups = state_dict.get("param_groups", []) if isinstance(state_dict, Mapping) else []
        for i, group in enumerate(groups):
            if isinstance(group, Mapping):
                where = f"the checkpoint's param group {i}"
                missing = [k for k in self.defaults if k not in group and k not in self.flags]
                if missing:
                    raise ValueError(f"{where} has no {missing[0]!r}: it is not a checkpoint of "
                                     f"{type(self).__name__} or of torch.optim's {self.kind.upper()}; nothing was loaded")
                self._check_flags(group, where)
        saved = [g.get("gradsmooth") for g in groups if isinstance(g, dict)]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.pop("gradsmooth", None)
        settings = next((s for s in saved if isinstance(s, dict)), None)
        if settings is not None:
            warn_other_settings(settings, {"operator": repr(self.operator), "mode": "update"})

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's, then every flag a group lacks (an older checkpoint) at its default, as
        torch.optim's optimizers do."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key in self.flags:
                if key in self.defaults:
                    group.setdefault(key, self.defaults[key])

    @property
    def plan(self) -> BlockPlan:
        """What is smoothed, in depth-ordered groups; printed, each group's ``path`` (the
        compiled kernel's name, or "eager (why)", as ``GradientSmoothing``'s)."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        paths, dtypes = [], []
        for members in self._members:
            band = layout(self.operator.band(len(members), int(max(self._steps(members), default=0))))
            groups = [group_of[id(p)] for p in members if id(p) in group_of]
            first, kind = local(members[0]), self._kernel_kind(groups)
            kernel, reason = select(kind, first.dtype, first.device, first.numel(),
                                    all(local(p).is_contiguous() for p in members), _fused_of(groups))
            paths.append(path(kernel, reason, band, kind, first.dtype, first.device))
            dtypes.append(first.dtype)  # as now: a model may be cast after
        return self._plan.with_paths(paths).with_dtypes(dtypes)

    def _steps(self, members: list[Tensor]) -> list[float]:
        """The steps each member has taken (torch keeps the count per parameter; 0 before the first)."""
        return [float(s["step"]) if "step" in s else 0.0 for s in (self.state.get(p, {}) for p in members)]

    # -- the step ----------------------------------------------------------------------------

    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step: every group's update computed and smoothed in one pass, the other
        parameters stepped by torch.optim's own arithmetic; ``closure`` (optional) re-evaluates
        the model and returns the loss. Checks, state, scratch and compiled kernels are all
        made before the first write.

        The step runs kernels compiled already (a compiled one per group, torch's fused step
        for the rest), so ``torch.compile`` does not trace it: ``torch.compile(opt.step)`` runs
        this step as it is, with no recompilation."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i, g in enumerate(self.param_groups):  # a flag set on a group since: refused before anything changes
            self._check_flags(g, f"param group {i}")
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        stepped = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        for p in stepped:
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients ({self._name(p)!r}); "
                                   "nothing was changed")
        with self._state_made_undone_on_error(stepped):  # the plan: checks, state, scratch, kernels
            work, smoothed = self._plan_groups(group_of)
            ids = {id(p) for p in smoothed}
            plain = {id(g): [p for p in g["params"] if p.grad is not None and id(p) not in ids]
                     for g in self.param_groups}
            for g in self.param_groups:
                for p in plain[id(g)]:
                    self._init_state(p, g)
        for g in self.param_groups:
            if plain[id(g)]:
                self._plain_step(g, plain[id(g)])
        if smoothed:
            self._count_step(smoothed)
        for w in work:
            run(w)
        return loss

    @contextmanager
    def _state_made_undone_on_error(self, params: list[Tensor]) -> Iterator[None]:
        """On any error inside, the state entries made for ``params`` (a first step's moments, a
        new momentum buffer) are taken out again: the state is as it was before the step."""
        had = {p: tuple(self.state[p]) if p in self.state else None for p in params}
        try:
            yield
        except BaseException:
            for p, keys in had.items():
                if keys is None:
                    self.state.pop(p, None)
                else:
                    for key in [k for k in self.state[p] if k not in keys]:
                        del self.state[p][key]
            raise

    def _name(self, p: Tensor) -> str:
        return self._params.name(p, [self])

    def _plan_groups(self, group_of: dict[int, dict[str, Any]]) -> tuple[list[Planned], list[Tensor]]:
        """Each group's step, planned (``dispatch.plan``: kernel, compiling, state, scratch),
        and the parameters they step. Changes nothing but the new state entries (taken out
        again on an error)."""
        work, smoothed = [], []
        for members in self._members:
            present = [p for p in members if p.grad is not None]
            if len(present) < 2:
                continue
            steps = self._steps(present)
            band = self.operator.band(len(present), int(max(steps)))
            if band.is_identity:
                continue
            if any(p.is_complex() for p in present):
                raise ValueError(f"{self._name(present[0])!r} is complex: smoothed groups hold real parameters; "
                                 "exclude it (exclude=...)")
            groups = [group_of[id(p)] for p in present]
            shards = [local(p) for p in present]
            table = coefficient_table(self._coefficients(present, groups, steps), shards[0])  # before the state is made
            for p, g in zip(present, groups):
                self._init_state(p, g)
            arrays = [shards, [local(p.grad) for p in present], *self._state_lists(present, groups)]
            raise_if_not_alike(present, dict(zip(("parameter", "gradient", *self._state_keys), arrays)), self._name)
            work.append(plan(Members(self._kernel_kind(groups), arrays), layout(band), table.view(-1), _fused_of(groups)))
            smoothed.extend(present)
        return work, smoothed

    # -- what each optimizer defines -----------------------------------------------------------

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _kernel_kind(self, groups: list[dict[str, Any]]) -> str:
        """The compiled kernel's kind for a group whose members sit in ``groups``."""
        return self.kind

    def _state_lists(self, members: list[Tensor], groups: list[dict[str, Any]]) -> list[list[Tensor | None]]:
        raise NotImplementedError

    def _coefficients(self, members: list[Tensor], groups: list[dict[str, Any]], steps: list[float]) -> list[list[float]]:
        """Each member's coefficients at this step (``steps``: each member's count before it)."""
        raise NotImplementedError

    def _count_step(self, members: list[Tensor]) -> None:
        """Each member's step count + 1 (torch's per-parameter ``step`` tensors), in one call."""
        torch._foreach_add_([self.state[p]["step"] for p in members], 1)

    def _plain_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        raise NotImplementedError


class SmoothedAdamW(_NativeSmoothing):
    """AdamW whose updates are smoothed along depth as they are computed.

    For each group of blocks (one role of one stack, in depth order) and each member ``l``:

    ```
    u_l = -lr / (1 - beta1^t) * m_l / (sqrt(v_l) / sqrt(1 - beta2^t) + eps)   (AdamW's update)
    theta_l <- (1 - lr * weight_decay) * theta_l + sum_j A[l, j] u_j
    ```

    with ``A`` the depth operator (window 3, uniform, ``renormalize``, ``alpha`` 1 by default):
    ``GradientSmoothing(torch.optim.AdamW(...), model)`` in update mode without its snapshot,
    equal to it to rounding. Decoupled weight decay stays per layer. Parameters outside every
    group take torch.optim's AdamW step.

    Args:
        model: an ``nn.Module`` (blocks found from its structure) or an iterable of ``(name,
            parameter)`` pairs (blocks found from the names).
        lr: the learning rate, as ``torch.optim.AdamW``'s (default 1e-3).
        betas: the moments' decay rates (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled, per layer, never mixed (default 1e-2).
        amsgrad: refused when True (``GradientSmoothing(torch.optim.AdamW(..., amsgrad=True), model)``
            smooths it); there for torch.optim.AdamW's signature and checkpoints.
        maximize: ascend the objective (``-grad``), as ``torch.optim.AdamW``'s (default False).
        foreach: torch's ``foreach`` for the parameters outside every group (which take
            torch.optim's AdamW step); it chooses kernels, not results.
        capturable: refused when True (the step is not CUDA-graph capturable).
        differentiable: refused when True (the step is not differentiable).
        fused: ``None`` (default): one compiled kernel per group of large members where a
            compiler is there (as ``GradientSmoothing``), else the eager chunked kernels;
            ``True``: compile anyway; ``False``: eager. For the parameters outside every
            group, torch's fused AdamW (``None``, ``True``: where torch has one) or not (``False``).
        params: the parameters or param groups (dicts, as for any torch optimizer); default:
            every parameter of ``model`` that requires a gradient, one group.
        **options: the smoothing options ([`Settings`][gradsmooth.settings.Settings]): ``operator``,
            ``stacks``, ``exclude`` and the window options ``window``, ``kernel``, ``boundary``,
            ``alpha`` (a number or a function of the step), ``sigma``, ``normalize``.

    Every flag ``torch.optim.AdamW`` keeps in a param group is implemented (``maximize``,
    ``foreach``, ``fused``) or refused by name, at construction, in ``add_param_group``, in
    ``load_state_dict`` and at a step, before anything changes (``amsgrad``, ``capturable``,
    ``differentiable``, ``decoupled_weight_decay=False``). Its state dict is torch's AdamW's.
    """

    kind = "adamw"
    _state_keys = ("exp_avg", "exp_avg_sq")
    flags = ADAMW_FLAGS

    def __init__(self, model: nn.Module | Iterable[tuple[str, Tensor]], lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 params: Any = None, **options: Unpack[SmoothingOptions]) -> None:
        _number("lr", lr)
        _number("eps", eps)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas should be a pair of numbers but is: {describe(betas)}")
        _number("betas[0]", betas[0], 0.0, 1.0)
        _number("betas[1]", betas[1], 0.0, 1.0)
        _number("weight_decay", weight_decay)
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad,
                    "maximize": maximize, "foreach": foreach, "capturable": capturable,
                    "differentiable": differentiable, "fused": fused, "decoupled_weight_decay": True}
        super().__init__(model, params, defaults, options)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _state_lists(self, members: list[Tensor], groups: list[dict[str, Any]]) -> list[list[Tensor | None]]:
        return [[local(self.state[p]["exp_avg"]) for p in members], [local(self.state[p]["exp_avg_sq"]) for p in members]]

    def _coefficients(self, members: list[Tensor], groups: list[dict[str, Any]], steps: list[float]) -> list[list[float]]:
        return adamw_coefficients(groups, [s + 1 for s in steps])

    def _plain_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        _adamw(
            params, [p.grad for p in params], [self.state[p]["exp_avg"] for p in params],
            [self.state[p]["exp_avg_sq"] for p in params], [], [self.state[p]["step"] for p in params],
            amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=group["maximize"], has_complex=any(p.is_complex() for p in params),
            **_implementation(group, params, self.kind))


class SmoothedSGD(_NativeSmoothing):
    """SGD (with momentum, dampening, Nesterov, coupled weight decay: ``torch.optim.SGD``'s
    arithmetic) whose updates are smoothed along depth as they are computed.

    For each group of blocks and each member ``l``:

    ```
    e_l = g_l + weight_decay * theta_l
    b_l <- momentum * b_l + (1 - dampening) * e_l          (b_l = e_l at the first step)
    u_l = -lr * (e_l + momentum * b_l if nesterov else b_l)
    theta_l <- theta_l + sum_j A[l, j] u_j
    ```

    ``GradientSmoothing(torch.optim.SGD(...), model)`` in update mode without its snapshot,
    equal to it to rounding. Parameters outside every group take torch.optim's SGD step.

    Args:
        model: an ``nn.Module`` or an iterable of ``(name, parameter)`` pairs.
        lr: the learning rate, as ``torch.optim.SGD``'s (default 1e-3).
        momentum: the momentum factor (default 0: no buffer).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 decay, coupled (in the gradient, hence smoothed), as torch's SGD (default 0).
        nesterov: Nesterov momentum (default False).
        maximize: ascend the objective (``-grad``), as ``torch.optim.SGD``'s (default False).
        foreach: as [SmoothedAdamW][gradsmooth.backends.torch.SmoothedAdamW].
        differentiable: refused when True (the step is not differentiable).
        fused: as [SmoothedAdamW][gradsmooth.backends.torch.SmoothedAdamW].
        params: the parameters or param groups; default: every trainable parameter of ``model``.
        **options: as [SmoothedAdamW][gradsmooth.backends.torch.SmoothedAdamW].

    Every flag ``torch.optim.SGD`` keeps in a param group is implemented (``nesterov``,
    ``maximize``, ``foreach``, ``fused``) or refused by name before anything changes
    (``differentiable``). Its state dict is torch's SGD's, with a ``step`` per parameter.
    """

    kind = "sgd"
    _state_keys = ("momentum_buffer",)
    flags = SGD_FLAGS

    def __init__(self, model: nn.Module | Iterable[tuple[str, Tensor]], lr: float | Tensor = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, params: Any = None, **options: Unpack[SmoothingOptions]) -> None:
        _number("lr", lr)
        _number("momentum", momentum)
        _number("dampening", dampening)
        _number("weight_decay", weight_decay)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov should be True or False but is: {describe(nesterov)}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"nesterov momentum needs momentum > 0 and dampening 0 but momentum is: {momentum!r} "
                             f"and dampening: {dampening!r}")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize, "foreach": foreach, "differentiable": differentiable,
                    "fused": fused}
        super().__init__(model, params, defaults, options)

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> None:
        # torch's SGD keeps a momentum buffer only; the step count (for an alpha schedule) is ours
        self.state[p].setdefault("step", torch.tensor(0.0, dtype=torch.float32))

    def _state_lists(self, members: list[Tensor], groups: list[dict[str, Any]]) -> list[list[Tensor | None]]:
        if self._kernel_kind(groups) == "sgd-plain":
            return []  # no member has momentum: no buffer
        buffers = []
        for p, g in zip(members, groups):
            buf = self.state[p].get("momentum_buffer") if float(g["momentum"]) != 0 else None
            if buf is None:  # made before anything changes; a member without momentum gets scratch
                buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                if float(g["momentum"]) != 0:
                    self.state[p]["momentum_buffer"] = buf
            buffers.append(local(buf))
        return [buffers]

    def _kernel_kind(self, groups: list[dict[str, Any]]) -> str:
        """"sgd", or "sgd-plain" where no member has momentum (no buffer to read or write)."""
        return "sgd" if any(float(g["momentum"]) != 0 for g in groups) else "sgd-plain"

    def _coefficients(self, members: list[Tensor], groups: list[dict[str, Any]], steps: list[float]) -> list[list[float]]:
        first = [self.state[p].get("momentum_buffer") is None for p in members]  # as torch's SGD tells it
        return sgd_coefficients(groups, first)

    def _plain_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        buffers = [self.state[p].get("momentum_buffer") for p in params]
        _sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
             momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
             nesterov=group["nesterov"], maximize=group["maximize"], **_implementation(group, params, self.kind))
        if group["momentum"] != 0:
            for p, buf in zip(params, buffers):
                self.state[p]["momentum_buffer"] = buf
        self._count_step(params)
