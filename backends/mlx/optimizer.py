"""GradientSmoothing for mlx.optimizers: couples a base optimizer's block-wise updates along depth.

``mode="update"`` (default): the base computes its new parameters ``decay * theta + delta``;
``delta = new - decay * theta`` is mixed along depth and ``decay * theta`` added back, so
decoupled weight decay (AdamW, Lion: ``decay = 1 - lr * weight_decay``) stays per layer.
MLX's SGD and Muon apply *coupled* L2 decay (added to the gradient): it is part of delta and
is smoothed with it. ``mode="gradient"``: the gradients are mixed before the base step.

Everything is array arithmetic on the trees, so a step compiles with ``mx.compile``; the
wrapper's state is ``{"step": array, "base": base.state}``, arrays only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from gradsmooth import MODES, BlockPlan, DepthOperator, check_mode, find_blocks, make_operator
from gradsmooth.blocks import Exclude, Stacks
from gradsmooth.operators import Alpha
from gradsmooth.smoothing import weighted_sum

from .blocks import tree_sites

__all__ = ["GradientSmoothing", "MODES"]



def _owner(base: optim.Optimizer, name: str, grad: mx.array) -> optim.Optimizer:
    """The optimizer that steps ``name``: the base, or the MultiOptimizer member whose filter takes it."""
    while isinstance(base, optim.MultiOptimizer):
        base = next(o for o, f in zip(base.optimizers, base.filters) if f(name, grad))
    return base


def _decayed(owner: optim.Optimizer, param: mx.array) -> mx.array | None:
    """``(1 - lr * weight_decay) * param`` exactly as ``owner`` computes it, or None (no decoupled decay)."""
    wd = getattr(owner, "weight_decay", 0.0)
    if not wd or not isinstance(owner, (optim.AdamW, optim.Lion)):
        return None
    lr = owner.learning_rate.astype(param.dtype)
    return param * (1 - lr * wd)


class GradientSmoothing(optim.Optimizer):
    """Gradient Smoothing around any ``mlx.optimizers.Optimizer`` (``MultiOptimizer`` included).

    Args:
        optimizer: the base optimizer.
        window, kernel, boundary, alpha, sigma, normalize: the Window Smoothing operator;
            ``alpha`` may be a function of the step (an ``mx.array``), like MLX schedules.
        mode: ``"update"`` or ``"gradient"``.
        operator: any :class:`gradsmooth.DepthOperator`, in place of the window arguments.
        stacks, exclude: as :func:`gradsmooth.find_blocks`; by default stacks are the lists
            of blocks in the parameter tree.
        check_finite: raise ``FloatingPointError`` on a non-finite gradient before anything
            changes. It evaluates the gradients, so it works eagerly, not under ``mx.compile``.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
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
    ) -> None:
        if not isinstance(optimizer, optim.Optimizer) or isinstance(optimizer, GradientSmoothing):
            raise TypeError(f"optimizer should be an mlx.optimizers.Optimizer but is: {optimizer!r}")
        check_mode(mode)
        operator = make_operator(operator, window=window, kernel=kernel, boundary=boundary, alpha=alpha, sigma=sigma,
                                 normalize=normalize)
        super().__init__()
        self.base, self.operator, self.mode, self.check_finite = optimizer, operator, mode, check_finite
        self._stacks, self._exclude = stacks, exclude
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
        self.base.state = state["base"]
        self._state["step"] = state["step"]  # in place: mx.compile holds this dict
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
                self._plan = find_blocks(shapes, exclude=self._exclude, sites=tree_sites(tree))
            else:
                self._plan = find_blocks(shapes, stacks=self._stacks, exclude=self._exclude)
            self._plan_key = key
        return self._plan

    def init(self, parameters: dict) -> None:
        self.base.init(parameters)
        self._state["base"] = self.base.state
        self._planned(parameters, tree_flatten(parameters))
        self._initialized = True

    # -- the step ----------------------------------------------------------------------------

    def _check(self, grads: list[tuple[str, mx.array]], params: dict[str, Any]) -> None:
        for name, g in grads:
            p = params.get(name)
            if p is None:
                raise ValueError(f"gradients hold {name!r}, which parameters do not: the trees do not match")
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(f"gradient of {name!r} has shape {tuple(g.shape)} but the parameter has {tuple(p.shape)}")
        if self.check_finite:
            try:
                finite = [bool(mx.all(mx.isfinite(g)).item()) for _, g in grads]
            except ValueError as err:
                raise ValueError(f"check_finite evaluates the gradients; it cannot run under mx.compile ({err})") from None
            for (name, _), ok in zip(grads, finite):
                if not ok:
                    raise FloatingPointError(
                        f"gradient of {name!r} is not finite at step {int(self._state['step'].item())}; nothing was changed"
                    )

    def _mix(self, flat: dict[str, mx.array], plan: BlockPlan, step: mx.array) -> dict[str, mx.array]:
        """Each group's members replaced by ``sum_j [(1 - alpha) I + alpha A][l, j] U_j``."""
        op, out = self.operator, dict(flat)
        for group in plan.groups:
            members = [flat[name] for name in group.names]
            if callable(op.alpha):  # a schedule: alpha is an array of the step
                alpha = op.alpha(step)
                band = op.depth_band(len(members))
                for name, u, row in zip(group.names, members, band.rows):
                    out[name] = u + alpha * (weighted_sum(members, row) - u)
                continue
            band = op.band(len(members))
            if not band.is_identity:
                for name, row in zip(group.names, band.rows):
                    out[name] = weighted_sum(members, row)
        return out

    def apply_gradients(self, gradients: dict, parameters: dict) -> dict:
        """Smooth and step; returns the new parameters with the gradients' tree structure."""
        flat_g = tree_flatten(gradients)
        flat_p = dict(tree_flatten(parameters))
        self._check(flat_g, flat_p)
        plan = self._planned(gradients, flat_g)
        step = self._state["step"]
        if self.mode == "gradient":
            new = self.base.apply_gradients(tree_unflatten(list(self._mix(dict(flat_g), plan, step).items())), parameters)
        else:
            new = self.base.apply_gradients(gradients, parameters)
            if plan.groups:
                new = self._smooth_updates(new, dict(flat_g), flat_p, plan, step)
        self._state["base"] = self.base.state
        self._state["step"] = step + 1
        return new

    def _smooth_updates(self, new: dict, grads: dict, params: dict, plan: BlockPlan, step: mx.array) -> dict:
        flat_new = dict(tree_flatten(new))
        decayed = {}
        deltas = {}
        for name in plan.names:
            d = _decayed(_owner(self.base, name, grads[name]), params[name])
            decayed[name] = params[name] if d is None else d
            deltas[name] = flat_new[name] - decayed[name]
        mixed = self._mix(deltas, plan, step)
        for name in plan.names:
            if mixed[name] is not deltas[name]:
                flat_new[name] = decayed[name] + mixed[name]
        return tree_unflatten(list(flat_new.items()))
