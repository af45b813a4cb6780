"""How an error message quotes a value: short values as ``repr`` gives them, anything large by
its type and size, so that a message never prints a tensor, a model or a long list.

    >>> describe(3e-4)
    '0.0003'
    >>> import numpy as np
    >>> describe(np.zeros((2, 3)))
    'ndarray of shape (2, 3), dtype float64'
    >>> describe(np.full((1,), 1.5))
    'ndarray of shape (1,), dtype float64, value 1.5'
    >>> describe([{"params": np.zeros(4)}, {"params": np.zeros(2)}])
    'list of 2 items (the first: dict with keys params)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["describe"]

LIMIT = 80  # characters of repr quoted as they are


def _is_array(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type)


def _is_model(value: Any) -> bool:
    return not isinstance(value, type) and (callable(getattr(value, "named_parameters", None))
                                            or callable(getattr(value, "trainable_parameters", None)))


def describe(value: Any, limit: int = LIMIT) -> str:
    """``value`` for an error message: its ``repr`` where that is at most ``limit`` characters
    and holds no array or model, else its type and size (an array's shape and dtype, a
    container's length and its first item, described the same way)."""
    name = type(value).__name__
    if _is_array(value):
        dtype = str(value.dtype).rsplit(".", 1)[-1]  # torch.float32 -> float32
        return f"{name} of shape {tuple(value.shape)}, dtype {dtype}" + _single(value)
    if _is_model(value):
        return f"a {name} model"
    if isinstance(value, Mapping):
        if len(value) <= 8 and not any(_is_array(v) or _is_model(v) or _is_container(v) for v in value.values()):
            return _short(value, limit)
        keys = ", ".join(map(str, list(value)[:6])) + (", ..." if len(value) > 6 else "")
        return f"{name} with keys {keys}"
    if _is_container(value):
        try:
            items = list(value) if len(value) <= 8 else None
        except TypeError:  # a generator or other iterator: not consumed here
            return f"a {name}"
        if items is not None and not any(_is_array(v) or _is_model(v) or isinstance(v, Mapping) or _is_container(v)
                                          for v in items):
            return _short(value, limit)
        first = describe(next(iter(value)), limit) if len(value) else ""
        return f"{name} of {len(value)} items" + (f" (the first: {first})" if first else "")
    return _short(value, limit)


def _single(value: Any) -> str:
    """A single-element array's value (", value 1.5"), else nothing."""
    try:
        if math.prod(value.shape) != 1:
            return ""
        return f", value {value.item() if hasattr(value, 'item') else value!r}"
    except Exception:  # an array whose value cannot be read here
        return ""


def _is_container(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) and not hasattr(value, "__len__"))


def _short(value: Any, limit: int) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{type(value).__name__} {text[: limit - 4]}..."
