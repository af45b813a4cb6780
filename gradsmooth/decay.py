"""Which kind of weight decay an optimizer applies: decoupled (kept per layer) or coupled L2.

Gradient Smoothing mixes a base optimizer's step along depth, but **decoupled** weight decay
(AdamW, Lion, Muon, ...: ``theta <- (1 - lr * wd) * theta + delta``) shrinks each layer toward
its own zero and is never mixed; **coupled** L2 decay (SGD, Adam: ``g <- g + wd * theta``) is
part of the gradient, hence of ``delta``, and is smoothed with it (docs/method.md).

Which kind an optimizer uses is a property of the optimizer, and optimizers outside
torch.optim rarely say so in their param groups. [`classify_decay`][gradsmooth.decay.classify_decay] decides, in order:

1. the user's declaration (``decoupled_decay=True/False``, or a function of the param group
   that returns a bool, or the decay factor itself as a number);
2. a flag in the param group: ``decoupled_weight_decay`` (torch.optim), ``decoupled_decay``
   (timm's AdaBelief, ...), ``decoupled`` (timm's Adopt, ...);
3. a flag on the optimizer: ``adam_w_mode`` (apex and DeepSpeed ``FusedAdam``),
   ``adamw_mode`` (DeepSpeed ``DeepSpeedCPUAdam``);
4. the optimizer's class, by module and class name (nothing is imported): `DECOUPLED`
   and `COUPLED`, searched along the class's MRO so subclasses inherit the answer;
5. otherwise unknown (``None``): the adapters treat the decay as coupled and warn once,
   naming the class and the ``decoupled_decay`` option.

[`decay_factor`][gradsmooth.decay.decay_factor] then gives the factor ``f`` of ``theta <- f * theta + delta`` that a
decoupled optimizer applies at a step, from the param group as it is then: ``1 - lr *
weight_decay`` (AdamW's rule), or a known variant read from the group (`RULES`): timm's
``corrected_weight_decay`` (``1 - lr**2 / max_lr * weight_decay``, ``max_lr`` the peak rate the
optimizer was built with) and timm's Adan without ``no_prox`` (``theta <- (theta + delta) / (1 +
lr * weight_decay)``, a factor ``1 / (1 + lr * weight_decay)``). A rule that is none of these is
declared with a function returning the factor.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, Union

from .describe import describe

__all__ = ["COUPLED", "DECOUPLED", "RULES", "DecoupledDecay", "check_decoupled_decay", "classify_decay",
           "decay_factor", "decay_warning"]

#: ``decoupled_decay`` as the adapters take it: None (classify), a bool, or a function of the param
#: group (torch) or of the optimizer (MLX, whose optimizers have no groups) returning a bool (the
#: kind) or a number (the decoupled decay factor itself at this step).
DecoupledDecay = Union[None, bool, Callable[[Any], Union[bool, float]]]

#: (module prefix, class name) of optimizers whose weight decay is decoupled.
DECOUPLED: frozenset[tuple[str, str]] = frozenset({
    ("torch.optim", "AdamW"),
    ("torch.optim", "Muon"),
    ("timm.optim", "AdamW"), ("timm.optim", "AdamWLegacy"), ("timm.optim", "NAdamW"), ("timm.optim", "NAdamWLegacy"),
    ("timm.optim", "Lion"), ("timm.optim", "Muon"), ("timm.optim", "AdaMuon"), ("timm.optim", "LaProp"),
    ("timm.optim", "Mars"), ("timm.optim", "Adan"), ("timm.optim", "SGDW"),
    ("bitsandbytes.optim", "AdamW"), ("bitsandbytes.optim", "AdamW8bit"), ("bitsandbytes.optim", "AdamW32bit"),
    ("bitsandbytes.optim", "PagedAdamW"), ("bitsandbytes.optim", "PagedAdamW8bit"),
    ("bitsandbytes.optim", "PagedAdamW32bit"), ("bitsandbytes.optim", "Lion"), ("bitsandbytes.optim", "Lion8bit"),
    ("bitsandbytes.optim", "Lion32bit"), ("bitsandbytes.optim", "PagedLion"), ("bitsandbytes.optim", "PagedLion8bit"),
    ("bitsandbytes.optim", "PagedLion32bit"),
    ("torchao", "AdamW"), ("torchao", "_AdamW"), ("torchao", "AdamW8bit"), ("torchao", "AdamW4bit"),
    ("torchao", "AdamWFp8"),
    ("lion_pytorch", "Lion"),
    ("mlx.optimizers", "AdamW"), ("mlx.optimizers", "Lion"),
})

#: (module prefix, class name) of optimizers whose weight decay is coupled L2 (added to the gradient).
COUPLED: frozenset[tuple[str, str]] = frozenset({
    ("torch.optim", "SGD"), ("torch.optim", "Adam"), ("torch.optim", "Adagrad"), ("torch.optim", "Adadelta"),
    ("torch.optim", "Adamax"), ("torch.optim", "ASGD"), ("torch.optim", "NAdam"), ("torch.optim", "RAdam"),
    ("torch.optim", "RMSprop"), ("torch.optim", "Rprop"), ("torch.optim", "SparseAdam"), ("torch.optim", "LBFGS"),
    ("mlx.optimizers", "SGD"), ("mlx.optimizers", "Muon"), ("mlx.optimizers", "RMSprop"),
    ("mlx.optimizers", "Adagrad"), ("mlx.optimizers", "AdaDelta"), ("mlx.optimizers", "Adam"),
    ("mlx.optimizers", "Adamax"), ("mlx.optimizers", "Adafactor"),
})

_GROUP_FLAGS = ("decoupled_weight_decay", "decoupled_decay", "decoupled")
_OPTIMIZER_FLAGS = ("adam_w_mode", "adamw_mode")


def check_decoupled_decay(decoupled_decay: object) -> DecoupledDecay:
    """``decoupled_decay`` after checking it is None, a bool or a function of the param group."""
    if decoupled_decay is None or isinstance(decoupled_decay, bool) or callable(decoupled_decay):
        return decoupled_decay  # type: ignore[return-value]
    raise TypeError(
        "decoupled_decay should be None, True, False or a function of the param group (torch) or of the optimizer "
        f"(MLX) but is: {describe(decoupled_decay)}"
    )


def _known(cls: type) -> bool | None:
    for klass in cls.__mro__:
        module, name = klass.__module__ or "", klass.__name__
        for prefix in _prefixes(module):
            if (prefix, name) in DECOUPLED:
                return True
            if (prefix, name) in COUPLED:
                return False
    return None


def _prefixes(module: str) -> list[str]:
    """``"a.b.c"`` -> ``["a.b.c", "a.b", "a"]``: a table entry names a package and covers its modules."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _declared(declared: DecoupledDecay, group: Mapping[str, Any]) -> bool | float:
    """The user's declaration for ``group``: a bool (the kind) or a float (the factor)."""
    answer = declared(group) if callable(declared) else declared
    if isinstance(answer, bool):
        return answer
    if callable(declared) and isinstance(answer, numbers.Real) and math.isfinite(answer):
        return float(answer)
    raise TypeError("decoupled_decay(param_group) should return True, False or the decay factor (a finite number) "
                    f"but returned: {describe(answer)}")


def classify_decay(optimizer: object, group: Mapping[str, Any], declared: DecoupledDecay = None) -> bool | None:
    """Whether ``optimizer`` decays the parameters of ``group`` decoupled (True), coupled (False),
    or cannot be told (None); ``declared`` is the user's ``decoupled_decay`` (module docstring):
    a declared factor is decoupled."""
    if declared is not None:
        answer = _declared(declared, group)
        return answer if isinstance(answer, bool) else True
    for key in _GROUP_FLAGS:
        if isinstance(group.get(key), bool):
            return group[key]
    for attr in _OPTIMIZER_FLAGS:
        if isinstance(getattr(optimizer, attr, None), bool):
            return getattr(optimizer, attr)
    return _known(type(optimizer))


def _corrected(optimizer: object, group: Mapping[str, Any]) -> float | None:
    """timm's ``corrected_weight_decay``: the rate ``lr**2 / max_lr`` scales the decay, with
    ``max_lr`` the group's ``max_lr_snapshot`` (timm 1.0.20 and later) or the optimizer's
    default ``lr`` (earlier releases)."""
    if group.get("corrected_weight_decay") is not True:
        return None
    max_lr = group.get("max_lr_snapshot", getattr(optimizer, "defaults", {}).get("lr"))
    lr = float(group["lr"])
    return lr * lr / float(max_lr)


def _proximal(optimizer: object, group: Mapping[str, Any]) -> bool:
    """timm's Adan without ``no_prox``: ``theta <- (theta + delta) / (1 + lr * weight_decay)``."""
    return group.get("no_prox") is False and any(
        (k.__module__ or "").startswith("timm.optim") and k.__name__ == "Adan" for k in type(optimizer).__mro__)


#: The known decoupled decay rules besides AdamW's, each read from the param group.
RULES = ("timm corrected_weight_decay: 1 - lr**2 / max_lr * weight_decay",
         "timm Adan (no_prox=False): 1 / (1 + lr * weight_decay)")


def decay_factor(optimizer: object, group: Mapping[str, Any], declared: DecoupledDecay = None) -> float | None:
    """The factor ``f`` of ``theta <- f * theta + delta`` that ``optimizer`` applies to the
    parameters of ``group`` at this step (module docstring): the declared factor, 1 for coupled
    or no decay, the decoupled rule read from the group, or None where the kind cannot be told
    (the adapters treat it as coupled, 1, and warn)."""
    if callable(declared):
        answer = _declared(declared, group)
        if not isinstance(answer, bool):
            return answer
    wd = group.get("weight_decay", 0.0)
    if not wd:
        return 1.0
    kind = classify_decay(optimizer, group, declared)
    if not kind:
        return None if kind is None else 1.0
    wd, lr = float(wd), float(group["lr"])
    corrected = _corrected(optimizer, group)
    if corrected is not None:
        return 1.0 - corrected * wd
    if _proximal(optimizer, group):
        return 1.0 / (1.0 + lr * wd)
    return 1.0 - lr * wd


def decay_warning(optimizer: object) -> str:
    """The one warning for an optimizer whose decay cannot be classified."""
    cls = type(optimizer)
    return (
        f"gradsmooth cannot tell whether {cls.__module__}.{cls.__qualname__} applies its weight_decay decoupled "
        "(per layer, like AdamW) or coupled (L2 added to the gradient, like SGD): it is treated as coupled and "
        "smoothed with the update. Pass decoupled_decay=True (or False, or a function of the param group in torch, of "
        "the optimizer in MLX) to say which."
    )
