"""Optimizer classes made for frameworks that build the optimizer themselves from a class and
its keyword arguments, ``cls(param_groups, **kwargs)`` (Hugging Face's
``Trainer(optimizer_cls_and_kwargs=(cls, kwargs))``): ``GradientSmoothing.factory``,
``SmoothedAdamW.factory`` and ``SmoothedSGD.factory`` return one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["factory_class", "made_by_factory"]


def made_by_factory(cls: type) -> type:
    """The class a factory class was made from (``cls`` itself when it was not made by one)."""
    return next(k for k in cls.__mro__ if "_factory_made" not in vars(k))


def factory_class(cls: type, label: str, init: Callable[..., None], call: str) -> type:
    """A subclass of ``cls`` whose ``__init__(self, params, **kwargs)`` is ``init``, named
    ``cls[label]``; ``call`` is what it stands for, for its docstring. Being a subclass of an
    ``Optimizer`` matters: transformers 5 takes anything else for a factory and calls it with
    no arguments."""
    name = f"{cls.__name__}[{label}]"

    def __init__(self: Any, params: Any, **kwargs: Any) -> None:
        init(self, params, **kwargs)

    return type(name, (cls,), {
        "__init__": __init__, "__module__": cls.__module__, "__qualname__": name, "_factory_made": True,
        "__doc__": f"``{call}``: ``(params, **kwargs)`` builds the optimizer over ``params``.",
    })
