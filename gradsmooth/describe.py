"""How an error message quotes a value: short values as ``repr`` gives them, anything large by
its type and size, so that a message never prints a tensor, a model or a long list.

    >>> describe(3e-4)
    '0.0003'
    >>> import numpy as np
    >>> describe(np.zeros((2, 3)))
    'ndarray of shape (2, 3), dtype float64'
    >>> describe(np.full((2,), 1.5))
    'array([1.5, 1.5])'
    >>> describe([{"params": np.zeros(4)}, {"params": np.zeros(2)}])
    'list of 2 items (the first: dict with keys params)'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["describe"]

LIMIT = 80  # characters of repr quoted as they are
SMALL_ARRAY = 4  # arrays of at most this many elements are quoted as repr gives them


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
        if _size(value) <= SMALL_ARRAY:  # a scalar or a few values: as repr shows them, on one line
            text = repr(value)
            if len(text) <= limit and "\n" not in text:
                return text
        return f"{name} of shape {tuple(value.shape)}, dtype {dtype}"
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


def _size(value: Any) -> int:
    """An array's number of elements (from its shape: nothing is read)."""
    try:
        return math.prod(int(d) for d in value.shape)
    except (TypeError, ValueError):  # an unknown dimension
        return SMALL_ARRAY + 1


def _is_container(value: Any) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) or (
        hasattr(value, "__iter__") and not isinstance(value, (str, bytes)) and not hasattr(value, "__len__"))


def _short(value: Any, limit: int) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{type(value).__name__} {text[: limit - 4]}..."
