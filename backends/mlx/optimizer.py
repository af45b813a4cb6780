"""GradientSmoothing for mlx.optimizers: couples a base optimizer's block-wise updates along depth.

``mode="update"`` (default): the base computes its new parameters ``decay * theta + delta``;
``delta = new - decay * theta`` is mixed along depth and ``decay * theta`` added back, so
decoupled weight decay (``decay = 1 - lr * weight_decay``) stays per layer. Which optimizers
decay decoupled is decided by [`gradsmooth.decay.classify_decay`][gradsmooth.decay.classify_decay] (MLX's AdamW and
Lion; SGD, Muon, Adam, ... apply *coupled* L2 decay, which is part of delta and smoothed with it),
or declared with ``decoupled_decay``. ``mode="gradient"``: the gradients are mixed before the
base step.

Everything is array arithmetic on the trees, so a step compiles with ``mx.compile``; the
wrapper's state is ``{"step": array, "base": base.state}``, arrays only.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from gradsmooth import MODES, Band, BlockPlan, find_blocks
from gradsmooth.decay import classify_decay, decay_warning
from gradsmooth.describe import describe
from gradsmooth.operators import checked_alpha
from gradsmooth.settings import Settings, SmoothingOptions
from gradsmooth.smoothing import weighted_sum

from .blocks import tree_sites

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ALPHA_PROBES", "GradientSmoothing", "MODES", "mix_group"]

#: ``decoupled_decay`` for MLX: None (classify), a bool, or ``fn(optimizer) -> bool | factor``: MLX
#: optimizers have no param groups, so the function receives each optimizer that steps parameters.
MLXDecoupledDecay = Union[None, bool, Callable[[optim.Optimizer], Union[bool, float, mx.array]]]

#: Steps at which a schedule ``alpha`` is evaluated and checked at construction: under
#: ``mx.compile`` the value at the traced step cannot be read (class docstring).
ALPHA_PROBES: tuple[int, ...] = (0, 1, 2, 10, 100, 1_000, 10_000, 100_000, 1_000_000)

_LOW_PRECISION = (mx.bfloat16, mx.float16)

#: The smoothing options the MLX adapter takes (gradsmooth.settings), besides the window options.
OPTIONS = ("mode", "operator", "stacks", "exclude", "check_finite", "decoupled_decay")


# -- weight decay -------------------------------------------------------------------------------


def _stepping(base: optim.Optimizer) -> Iterator[optim.Optimizer]:
    """The optimizers that step parameters: the base, or the members of a MultiOptimizer (nested too)."""
    if isinstance(base, optim.MultiOptimizer):
        for member in base.optimizers:
            yield from _stepping(member)
    else:
        yield base


def _owner(base: optim.Optimizer, name: str, grad: mx.array) -> optim.Optimizer:
    """The optimizer that steps ``name``: the base, or the MultiOptimizer member whose filter takes it."""
    while isinstance(base, optim.MultiOptimizer):
        base = next(o for o, f in zip(base.optimizers, base.filters) if f(name, grad))
    return base


def _class_name(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _declared(opt: optim.Optimizer, decoupled_decay: MLXDecoupledDecay) -> bool | float | mx.array | None:
    """The user's ``decoupled_decay`` for ``opt``; a function is called with the optimizer itself
    and returns a bool, or the decay factor (a number or a one-element mx.array)."""
    if not callable(decoupled_decay):
        return decoupled_decay
    answer = decoupled_decay(opt)
    if isinstance(answer, bool) or _is_number(answer):
        return answer
    raise TypeError(f"decoupled_decay(optimizer) should return True, False or the decay factor (a number) but "
                    f"returned: {describe(answer)} for {_class_name(opt)}")


def _is_number(x: object) -> bool:
    return (isinstance(x, numbers.Real) and not isinstance(x, bool)) or (isinstance(x, mx.array) and x.size == 1)


def _nonzero(x: object) -> bool:
    if isinstance(x, mx.array):
        return bool(mx.any(x != 0).item())
    return bool(x)


def _learning_rate(opt: optim.Optimizer) -> object:
    try:
        return opt.learning_rate
    except (AttributeError, KeyError):  # mlx's property reads state["learning_rate"]
        return None


def _check_decoupled_hyperparameters(opt: optim.Optimizer) -> None:
    """Refuse a decoupled optimizer without the ``learning_rate`` and ``weight_decay`` its decay is computed from."""
    lr, wd = _learning_rate(opt), getattr(opt, "weight_decay", None)
    if not (_is_number(lr) and _is_number(wd)):
        raise ValueError(
            f"{_class_name(opt)} decays decoupled (decoupled_decay or its class), but gradsmooth computes that decay "
            f"as (1 - learning_rate * weight_decay) * param and it has learning_rate={lr!r}, weight_decay={wd!r}: "
            "declare it coupled (decoupled_decay=False or a function of the optimizer) or give it both as numbers"
        )


def _classify(opt: optim.Optimizer, decoupled_decay: MLXDecoupledDecay) -> bool | Callable[[optim.Optimizer], Any]:
    """Whether ``opt`` decays decoupled (or the user's function that gives its factor); one that
    cannot be told with a nonzero ``weight_decay`` is warned about (once: this runs at
    construction) and treated as coupled."""
    declared = _declared(opt, decoupled_decay)
    if declared is not None and not isinstance(declared, bool):
        return decoupled_decay  # a factor: asked again at every step (the learning rate moves)
    kind = classify_decay(opt, {}, declared)
    if kind is None:
        if _nonzero(getattr(opt, "weight_decay", 0.0)):
            warnings.warn(decay_warning(opt), UserWarning, stacklevel=3)  # the caller of GradientSmoothing()
        return False
    if kind:
        _check_decoupled_hyperparameters(opt)
    return kind


def _decayed(owner: optim.Optimizer, param: mx.array, grad: mx.array) -> mx.array | None:
    """``param * (1 - lr * weight_decay)`` as MLX's AdamW and Lion compute it (lr in the gradient's
    dtype), for a decoupled ``owner``; None when its weight decay is zero."""
    wd = owner.weight_decay
    if not isinstance(wd, mx.array) and not wd:
        return None
    lr = owner.learning_rate
    lr = (lr if isinstance(lr, mx.array) else mx.array(lr)).astype(grad.dtype)
    return param * (1 - lr * wd)


# -- alpha and the step ----------------------------------------------------------------------------


def _item(x: mx.array) -> float | int | None:
    """The value of a one-element array, or None while mx.compile traces it (it has no value yet)."""
    try:
        return x.item()
    except ValueError:  # "[eval] Attempting to eval an array during function transformations"
        return None


def _checked_alpha_array(value: mx.array, step: int | None) -> mx.array:
    """A schedule's ``mx.array`` value as a scalar, refused unless one real number in [0, 1].

    Shape and dtype are checked even while mx.compile traces; the value only where it can be read.
    """
    at = f"alpha({step})" if step is not None else "alpha(step) (the step traced by mx.compile)"
    if value.dtype == mx.bool_ or mx.issubdtype(value.dtype, mx.complexfloating):
        raise TypeError(f"alpha(step) should return a real number but {at} returned an mx.array of dtype {value.dtype}")
    if value.size != 1:
        raise ValueError(f"alpha(step) should return one number but {at} returned an mx.array of shape {value.shape}")
    number = _item(value)
    if number is not None and not 0.0 <= number <= 1.0:  # NaN fails both
        raise ValueError(
            f"alpha(step) should return a number in [0, 1] but {at} returned: {number!r} "
            f"(an mx.array of dtype {value.dtype})"
        )
    return value.reshape(())


def _checked_step(step: object) -> int:
    """``state["step"]`` as a Python int, refused unless a non-negative integer (a one-element array or an int)."""
    value: object = None
    if isinstance(step, mx.array) and step.size == 1 and step.dtype != mx.bool_:
        value = _item(step)
    elif isinstance(step, numbers.Integral) and not isinstance(step, bool):
        value = int(step)
    if not isinstance(value, (int, float)) or not float(value).is_integer() or value < 0:
        raise ValueError(f"state['step'] should be a non-negative integer (the steps taken) but is: {step!r}")
    return int(value)


class GradientSmoothing(optim.Optimizer):
    """Gradient Smoothing around any ``mlx.optimizers.Optimizer`` (``MultiOptimizer`` included).

    Args:
        optimizer: the base optimizer.
        **options: the smoothing options ([`Settings`][gradsmooth.settings.Settings], where each
            is described): ``mode``, ``operator``, ``stacks`` (by default the lists of blocks in
            the parameter tree), ``exclude``, ``check_finite`` (it evaluates the gradients, so it
            works eagerly, not under ``mx.compile``), ``decoupled_decay`` and the window options
            (``alpha`` may be a function of the step, an ``mx.array``, like MLX schedules).

    ``decoupled_decay`` is asked of each optimizer that steps parameters (the base, or each
    member of a ``MultiOptimizer``): ``None`` classifies it
    ([`gradsmooth.decay.classify_decay`][gradsmooth.decay.classify_decay]: MLX's AdamW and Lion
    are decoupled, its other optimizers coupled) and warns once, here, about one it cannot
    classify with a nonzero ``weight_decay`` (treated as coupled); a function is called **with
    the optimizer instance** (MLX optimizers have no param groups) and returns a bool (called
    once, here), or the decay factor itself, a number or an ``mx.array`` (called at every step:
    the decay is then ``param * factor``, for any rule). A decoupled optimizer's decay is
    otherwise ``param * (1 - learning_rate * weight_decay)``, so it needs both attributes
    (ValueError here otherwise).

    What is checked, and when (a refused step changes nothing):

    - Eagerly (no ``mx.compile``, or a compiled function whose inputs do not hold
      ``opt.state``): every step checks ``alpha(step)`` before anything changes: a value
      outside [0, 1] or NaN raises ValueError naming the step and the value. The core checks
      a function's Python numbers ([`DepthOperator.alpha_at`][gradsmooth.DepthOperator.alpha_at]), this class its
      ``mx.array`` values.
    - Under ``mx.compile`` the step is traced, so ``alpha(step)`` has no value while tracing
      and the compiled step never returns to Python: only its shape and dtype (one real
      number) are checked, once, when tracing. Its value is not: a schedule that leaves
      [0, 1] at some step is applied as given there (``alpha = 2`` applies ``2A - I``). To
      catch most such schedules, ``alpha`` is evaluated and checked here at the steps
      `ALPHA_PROBES` (0, 1, 2, 10, ..., 10**6), and at the restored step whenever
      ``opt.state`` is set. ``check_finite=True`` raises ValueError while tracing. An error
      raised while tracing leaves the compiled function's inputs (model and optimizer state)
      holding MLX's placeholders (MLX does not restore them): reload them before going on.
    - Parameters and the base's state keep their dtype: with an ``mx.array`` alpha, bfloat16
      and float16 members are mixed in float32 and rounded once to their dtype.
    """

    def __init__(self, optimizer: optim.Optimizer, **options: Unpack[SmoothingOptions]) -> None:
        if not isinstance(optimizer, optim.Optimizer) or isinstance(optimizer, GradientSmoothing):
            raise TypeError(f"optimizer should be an mlx.optimizers.Optimizer but is: {describe(optimizer)}")
        settings = Settings.of(options, OPTIONS, "GradientSmoothing (MLX)", instead={
            "fused": "MLX fuses the step itself: compile it with mx.compile"})
        super().__init__()
        self.settings = settings
        self.base, self.operator, self.mode, self.check_finite = (optimizer, settings.operator, settings.mode,
                                                                  settings.check_finite)
        self._probe_alpha(ALPHA_PROBES)
        self._decoupled: dict[int, bool | Callable[[optim.Optimizer], Any]] = {}
        for member in _stepping(optimizer):  # a loop, not a comprehension: the warning's stacklevel
            self._decoupled[id(member)] = _classify(member, settings.decoupled_decay)
        self._stacks, self._exclude = settings.stacks, settings.exclude
        self._plan: BlockPlan | None = None
        self._plan_key: tuple | None = None
        self._state = {"step": mx.array(0, mx.uint64), "base": optimizer.state}

    # -- state and hyperparameters, the base's -----------------------------------------------

    @property
    def state(self) -> dict:
        """``{"step": steps taken, "base": the base optimizer's state}``: arrays only."""
        return self._state

    @state.setter
    def state(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"step", "base"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state should be a dict with keys 'step' and 'base' (from opt.state) but has: {keys}")
        step = _checked_step(state["step"])
        if not isinstance(state["base"], dict):
            raise ValueError(f"state['base'] should be a dict (the base optimizer's state) but is: {describe(state['base'])}")
        self._probe_alpha((step,))
        self.base.state = state["base"]  # MLX's MultiOptimizer checks its states before it sets any
        self._state["step"] = mx.array(step, mx.uint64)  # in place: mx.compile holds this dict
        self._state["base"] = self.base.state

    @property
    def learning_rate(self) -> mx.array:
        return self.base.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: float | mx.array) -> None:
        self.base.learning_rate = learning_rate

    @property
    def plan(self) -> BlockPlan | None:
        """What is smoothed; planned from the gradient tree on first use (``init`` or a step)."""
        return self._plan

    # -- planning ----------------------------------------------------------------------------

    def _planned(self, tree: dict, flat: list[tuple[str, mx.array]]) -> BlockPlan:
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in flat)
        if key != self._plan_key:
            shapes = dict(flat)
            if self._stacks is None:
                plan = find_blocks(shapes, exclude=self._exclude, sites=tree_sites(tree))
            else:
                plan = find_blocks(shapes, stacks=self._stacks, exclude=self._exclude)
            first = self._plan_key is None
            self._plan = plan.with_operator(self.operator)
            self._plan_key = key
            message = plan.nothing_smoothed()
            if first and message is not None:  # once, at the first plan: MLX optimizers see the model only then
                warnings.warn(message, UserWarning, stacklevel=3)  # the caller of init or apply_gradients
        return self._plan

    def init(self, parameters: dict) -> None:
        self._planned(parameters, tree_flatten(parameters))  # may raise: before the base's state changes
        self.base.init(parameters)
        self._state["base"] = self.base.state
        self._initialized = True

    # -- alpha -------------------------------------------------------------------------------

    def _alpha(self, step: mx.array) -> float | mx.array:
        """``alpha`` at ``step`` (steps taken before this one), checked where it can be (class docstring)."""
        op = self.operator
        if not callable(op.alpha):
            return op.alpha  # a number: checked by the core at construction
        t = _item(step)
        value = op.alpha(step)
        if isinstance(value, mx.array):
            return _checked_alpha_array(value, None if t is None else int(t))
        if t is not None:
            return checked_alpha(value, int(t))  # the core checks a Python number
        try:  # traced step: the core needs the step's value; the number is checked as an array
            as_array = mx.array(value)
        except (TypeError, ValueError):
            raise TypeError(f"alpha(step) should return a number or an mx.array but returned: {describe(value)}") from None
        _checked_alpha_array(as_array, None)
        return value

    def _probe_alpha(self, steps: Iterable[int]) -> None:
        """Check a schedule ``alpha`` now, at ``steps``: under mx.compile its value at the
        traced step cannot be read, so a bad schedule is caught here where it can be."""
        for t in steps:
            try:
                self._alpha(mx.array(t, mx.uint64))
            except (TypeError, ValueError) as error:
                raise type(error)(f"{error} (checked in advance, when the optimizer was built or its state set: "
                                  "under mx.compile alpha's value cannot be read at each step)") from None

    # -- the step ----------------------------------------------------------------------------

    def _check(self, grads: list[tuple[str, mx.array]], params: dict[str, Any]) -> None:
        for name, g in grads:
            if not isinstance(g, mx.array):
                raise TypeError(f"gradient of {name!r} should be an mx.array but is: {type(g).__name__}")
            p = params.get(name)
            if p is None:
                raise ValueError(f"gradients hold {name!r}, which parameters do not: the trees do not match")
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(f"gradient of {name!r} has shape {tuple(g.shape)} but the parameter has {tuple(p.shape)}")
        if self.check_finite:
            self._check_finite(grads)

    def _check_finite(self, grads: list[tuple[str, mx.array]]) -> None:
        try:  # per element: a sum could overflow to inf on finite values
            finite = [bool(mx.all(mx.isfinite(g)).item()) for _, g in grads]
        except ValueError as err:
            raise ValueError(f"check_finite evaluates the gradients; it cannot run under mx.compile ({err})") from None
        for (name, _), ok in zip(grads, finite):
            if not ok:
                raise FloatingPointError(
                    f"gradient of {name!r} is not finite at step {int(self._state['step'].item())}; nothing was changed"
                )

    def _mix(self, flat: dict[str, mx.array], plan: BlockPlan, alpha: float | mx.array) -> dict[str, mx.array]:
        """Each group's members replaced by ``sum_j [(1 - alpha) I + alpha A][l, j] U_j``: the
        core's band at this strength ([`DepthOperator.band_at`][gradsmooth.DepthOperator.band_at]), executed by
        `mix_group`."""
        out = dict(flat)
        for group in plan.groups:
            members = [flat[name] for name in group.names]
            strength = alpha.astype(_compute_dtype(members[0].dtype)) if isinstance(alpha, mx.array) else alpha
            band = self.operator.band_at(len(members), strength)  # array weights in the dtype they mix in
            if not band.is_identity:
                out.update(mix_group(group.names, members, band))
        return out

    def apply_gradients(self, gradients: dict, parameters: dict) -> dict:
        """Smooth and step; returns the new parameters with the gradients' tree structure."""
        flat_g = tree_flatten(gradients)
        flat_p = dict(tree_flatten(parameters))
        self._check(flat_g, flat_p)
        plan = self._planned(gradients, flat_g)
        step = self._state["step"]
        alpha = self._alpha(step)  # may raise: before anything changes
        if self.mode == "gradient":
            mixed = self._mix(dict(flat_g), plan, alpha)
            new = self.base.apply_gradients(tree_unflatten(list(mixed.items())), parameters)
        else:
            new = self.base.apply_gradients(gradients, parameters)
            if plan.groups:
                new = self._smooth_updates(new, dict(flat_g), flat_p, plan, alpha)
        self._state["base"] = self.base.state
        self._state["step"] = step + 1
        return new

    def _smooth_updates(self, new: dict, grads: dict, params: dict, plan: BlockPlan, alpha: float | mx.array) -> dict:
        flat_new = dict(tree_flatten(new))
        decayed = {}
        deltas = {}
        for name in plan.names:
            owner = _owner(self.base, name, grads[name])
            rule = self._decoupled[id(owner)]
            d = (params[name] * rule(owner) if callable(rule) else _decayed(owner, params[name], grads[name]) if rule
                 else None)
            decayed[name] = params[name] if d is None else d
            deltas[name] = flat_new[name] - decayed[name]
        mixed = self._mix(deltas, plan, alpha)
        for name in plan.names:
            if mixed[name] is not deltas[name]:
                flat_new[name] = _as(decayed[name] + mixed[name], flat_new[name].dtype)
        return tree_unflatten(list(flat_new.items()))


def _as(x: mx.array, dtype: mx.Dtype) -> mx.array:
    return x if x.dtype == dtype else x.astype(dtype)


def mix_group(names: Sequence[str], members: list[mx.array], band: Band) -> dict[str, mx.array]:
    """The MLX executor: ``U~_l = sum_j band[l, j] U_j`` for one group (the core's
    `weighted_sum` on MLX arrays, which ``mx.compile`` fuses).
    bfloat16 and float16 members are mixed in float32 and rounded once to their dtype, so a
    parameter never changes dtype (an array-valued alpha is float32)."""
    dtype = members[0].dtype
    work = [_as(m, _compute_dtype(dtype)) for m in members]
    return {name: _as(weighted_sum(work, row), dtype) for name, row in zip(names, band.rows)}


def _compute_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """The dtype members of ``dtype`` are mixed in: float32 for bfloat16 and float16, else their own."""
    return mx.float32 if dtype in _LOW_PRECISION else dtype
