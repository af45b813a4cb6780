"""The arithmetic of the native smoothed steps (``SmoothedAdamW``, ``SmoothedSGD``): per-member
coefficients, and the eager kernels that compute every member's update and mix it along depth
in one pass over column chunks (the compiled kernels' source is ``fused.py``).

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
mixed where it is computed. The coefficients are per member (members may sit in param groups
with different learning rates), as (n, 1) columns.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .execution import to_device
from .mixing import BandProgram, _apply, _gather, _layout, _write, compute_dtype, scratch

__all__ = ["adamw_coefficients", "adamw_mix", "coefficient_table", "native_blocks", "sgd_coefficients", "sgd_mix"]


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


def _chunks(lists: list[list[Tensor]]) -> tuple[list[list[Tensor] | None], list[tuple[int, int]]]:
    """The flat views of each list's members and the column chunks the eager kernels walk: the
    cache-sized chunks where every list is contiguous, else one chunk of the whole members
    (gathered and written tensor by tensor, flats None)."""
    layouts = [_layout(ts) for ts in lists]
    if all(f is not None for f, _ in layouts):
        return [f for f, _ in layouts], layouts[0][1]
    return [None] * len(lists), [(0, lists[0][0].numel())]


def native_blocks(kind: str, groups: list[list[list[Tensor]]]) -> list[Tensor]:
    """The scratch blocks of each group's eager step (``groups``: each group's params, grads and
    state lists, a state list of Nones where it is not made yet), (5, n, c) for AdamW, (4, n, c)
    for SGD in the members' compute dtype, ``c`` the widest chunk the kernels will walk: views of
    one buffer per dtype and device (the groups run one after another; kept across steps on a
    CPU: `scratch`), allocated before anything changes."""
    count = 5 if kind == "adamw" else 4
    shapes = []
    for lists in groups:
        _, chunks = _chunks([ts for ts in lists if ts[0] is not None])
        shapes.append((count, len(lists[0]), max(hi - lo for lo, hi in chunks)))
    keys = [(compute_dtype(g[0][0].dtype), g[0][0].device) for g in groups]
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for key, (a, b, c) in zip(keys, shapes):
        sizes[key] = max(sizes.get(key, 0), a * b * c)
    flats = {key: scratch("native", size, *key) for key, size in sizes.items()}
    return [flats[key][: a * b * c].view(a, b, c) for key, (a, b, c) in zip(keys, shapes)]


def coefficient_table(rows: list[list[float]], like: Tensor) -> Tensor:
    """The per-member coefficients (``rows``: one list per member) as a (k, n) tensor, one row
    per coefficient, in ``like``'s compute dtype on its device (made before anything changes,
    copied without a host synchronisation). Flattened it is the compiled kernels' ``c``
    (``c[k * n + j]``); the eager kernels take its rows as (n, 1) columns."""
    return to_device([v for column in zip(*rows) for v in column], compute_dtype(like.dtype), like.device).view(
        len(rows[0]), len(rows))


def _columns(table: Tensor) -> list[Tensor]:
    """Each coefficient of a (k, n) coefficient table as an (n, 1) column (views)."""
    return [row.unsqueeze(1) for row in table.unbind(0)]


def adamw_mix(program: BandProgram, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_sqs: list[Tensor], table: Tensor, blocks: Tensor) -> None:
    """In place, one group: AdamW's moments and update for every member, mixed along depth by
    ``program`` (the band of ``A``), chunk by chunk in ``blocks`` (`native_blocks`);
    ``table``: `adamw_coefficients` as a `coefficient_table`."""
    c1, c2, c3, c4, c5, c6, sign, c7 = _columns(table)
    flats, chunks = _chunks([params, grads, exp_avgs, exp_avg_sqs])
    for lo, hi in chunks:
        k = hi - lo
        G, M, V, P, T = (b[:, :k] for b in blocks)
        _gather(grads, flats[1], lo, hi, G).mul_(sign)  # -g under maximize (exact)
        _gather(exp_avgs, flats[2], lo, hi, M)
        _gather(exp_avg_sqs, flats[3], lo, hi, V)
        torch.sub(G, M, out=T)
        M.addcmul_(T, c1)  # m + (1 - beta1)(g - m): torch's lerp
        V.mul_(c2)
        torch.mul(G, c3, out=T)
        V.addcmul_(T, G)  # beta2 v + (1 - beta2) g g
        _write(exp_avgs, flats[2], M, lo, hi)
        _write(exp_avg_sqs, flats[3], V, lo, hi)
        torch.sqrt(V, out=T)
        T.div_(c4).add_(c5)  # the denominator
        torch.div(M, T, out=T)
        T.mul_(c6)  # u
        _gather(params, flats[0], lo, hi, P)
        P.mul_(c7)  # decoupled decay, per layer
        _write(params, flats[0], _apply(program, T, G, base=P), lo, hi)


def sgd_mix(program: BandProgram, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None,
            table: Tensor, blocks: Tensor) -> None:
    """In place, one group: SGD's (momentum) update for every member, mixed along depth by
    ``program`` (the band of ``A``), chunk by chunk in ``blocks`` (`native_blocks`).
    ``buffers``: the members' momentum buffers, or None where no member has momentum."""
    c1, c2, c3, c4, c5, c6, sign = _columns(table)
    (pf, gf, bf), chunks = _chunks([params, grads, buffers if buffers is not None else params])
    for lo, hi in chunks:
        k = hi - lo
        P, G, B, T = (b[:, :k] for b in blocks)
        _gather(params, pf, lo, hi, P)
        _gather(grads, gf, lo, hi, G).mul_(sign)  # -g under maximize (exact)
        G.addcmul_(P, c1)  # e = g + wd p
        if buffers is not None:
            _gather(buffers, bf, lo, hi, B)
        else:
            B.zero_()
        B.mul_(c2).addcmul_(G, c3)  # b = momentum b + (1 - dampening) e (= e at the first step)
        if buffers is not None:
            _write(buffers, bf, B, lo, hi)
        torch.mul(G, c4, out=T)
        T.addcmul_(B, c5)  # the direction: a e + b b
        T.mul_(c6)  # u
        _write(params, pf, _apply(program, T, G, base=P), lo, hi)
