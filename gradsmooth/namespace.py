"""The one entry point to an array's Array API namespace.

Backends are found lazily from the arrays themselves (array-api-compat): no framework
is imported until an array of it shows up.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = ["array_namespace", "is_floating"]


def array_namespace(*arrays: Any) -> Any:
    """The Array API namespace shared by ``arrays`` (numpy, torch, array-api-strict, ...)."""
    return array_api_compat.array_namespace(*arrays)


def is_floating(x: Any) -> bool:
    """Whether ``x`` holds real or complex floating-point numbers."""
    xp = array_namespace(x)
    return bool(xp.isdtype(x.dtype, ("real floating", "complex floating")))
