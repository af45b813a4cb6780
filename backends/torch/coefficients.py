"""The per-member coefficients of the native smoothed steps (``SmoothedAdamW``, ``SmoothedSGD``), as
the kernels read them (``arithmetic.KINDS``: ``c[k * n + j]`` for member j, then a per-row one).

For a group of n members (one role of one stack), at one position of the flat parameters:

AdamW (``torch.optim.AdamW``'s arithmetic, then the band instead of the identity; ``g_j`` is
the gradient, negated where the member's param group has ``maximize``):

```
m_j <- m_j + (1 - beta1) (g_j - m_j)
v_j <- beta2 v_j + (1 - beta2) g_j^2
u_j  = -(lr_j / bc1_j) * m_j / (sqrt(v_j) / sqrt(bc2_j) + eps_j)
p_l <- (1 - lr_l wd_l) p_l + sum_j A[l, j] u_j
```

SGD (``torch.optim.SGD``'s, weight decay coupled, as there; ``g_j`` negated under ``maximize``):

```
e_j  = g_j + wd_j p_j
b_j <- momentum_j b_j + (1 - dampening_j) e_j         (b_j = e_j at the first step)
u_j  = -lr_j * (e_j + momentum_j b_j  if nesterov  else  b_j)
p_l <- p_l + sum_j A[l, j] u_j
```

This equals ``GradientSmoothing(AdamW or SGD, mode="update")`` with no snapshot: the update is
mixed where it is computed. The coefficients are per member: members may sit in param groups
with different learning rates.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .eager import compute_dtype

__all__ = ["adamw_coefficients", "coefficient_table", "sgd_coefficients", "to_device"]


def to_device(values: list[float], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a 1-D tensor on ``device``, copied without a host synchronisation."""
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


def _float(value: Any) -> float:
    """A group's hyperparameter (a number or a one-element tensor, as torch allows for lr) as a float."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def adamw_coefficients(groups: list[dict[str, Any]], steps: list[float]) -> list[list[float]]:
    """Per member (its param group and its step count after this step's increment): ``[1 - beta1,
    beta2, 1 - beta2, sqrt(bias correction 2), eps, -lr / bias correction 1, sign, 1 - lr *
    weight_decay]``, the sign -1 under ``maximize`` (the gradient ascended), else 1."""
    rows, made = [], {}  # members of one param group at one step share their row
    for group, step in zip(groups, steps):
        row = made.get((id(group), step))
        if row is None:
            beta1, beta2 = (_float(b) for b in group["betas"])
            lr = _float(group["lr"])
            row = made[(id(group), step)] = [1 - beta1, beta2, 1 - beta2, math.sqrt(1 - beta2**step),
                                              _float(group["eps"]), -lr / (1 - beta1**step), _sign(group),
                                              1 - lr * _float(group["weight_decay"])]
        rows.append(row)
    return rows


def sgd_coefficients(groups: list[dict[str, Any]], first: list[bool]) -> list[list[float]]:
    """Per member (its param group; ``first``: no momentum buffer yet): ``[weight_decay,
    momentum (0 at the first step), 1 - dampening (1 then), a, b, -lr, sign]`` with the step
    direction ``a e + b b'``: nesterov ``(1, momentum)``, momentum ``(0, 1)``, none ``(1, 0)``;
    the sign -1 under ``maximize``, else 1."""
    rows = []
    for group, new in zip(groups, first):
        momentum = _float(group["momentum"])
        if momentum == 0:
            keep, take, a, b = 0.0, 1.0, 1.0, 0.0
        else:
            keep, take = (0.0, 1.0) if new else (momentum, 1 - _float(group["dampening"]))
            a, b = (1.0, momentum) if group["nesterov"] else (0.0, 1.0)
        rows.append([_float(group["weight_decay"]), keep, take, a, b, -_float(group["lr"]), _sign(group)])
    return rows


def _sign(group: dict[str, Any]) -> float:
    """The gradient's sign in a member's update: -1 under ``maximize`` (torch's ``-grad``), else 1."""
    return -1.0 if group.get("maximize", False) else 1.0


def coefficient_table(rows: list[list[float]], like: Tensor) -> Tensor:
    """The per-member coefficients (``rows``: one list per member) as a (k, n) tensor, one row
    per coefficient, in ``like``'s compute dtype on its device (made before anything changes,
    copied without a host synchronisation): flattened, the kernels' ``c[k * n + j]``."""
    return to_device([v for column in zip(*rows) for v in column], compute_dtype(like.dtype), like.device).view(
        len(rows[0]), len(rows))


