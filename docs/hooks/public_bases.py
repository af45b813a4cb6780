"""griffe extension: the API reference names no private base class.

A public class that inherits from a private one (``SmoothedAdamW(_NativeSmoothing)``) is
documented as if the private class's public members were its own, and with the private
class's bases as its bases: ``Bases: Optimizer``, not ``Bases: _NativeSmoothing``, and
``SmoothedAdamW.step`` documented under ``SmoothedAdamW``. Nothing changes in the code.
"""

from __future__ import annotations

from typing import Any

import griffe


def is_private(path: str) -> bool:
    """Whether a dotted path names something private: any part starting with ``_`` (dunders
    such as ``__init__`` are not private)."""
    return any(part.startswith("_") and not part.endswith("__") for part in path.split("."))


def _classes(obj: griffe.Object) -> list[griffe.Class]:
    found = []
    for member in obj.members.values():
        if member.is_alias:
            continue
        if member.is_class:
            found.append(member)
        if member.is_class or member.is_module:
            found += _classes(member)
    return found


def _resolve(cls: griffe.Class, base: griffe.Expr | str) -> griffe.Class | None:
    path = base if isinstance(base, str) else base.canonical_path
    try:
        found = cls.modules_collection.get_member(path)
        found = found.final_target if found.is_alias else found
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return found if found.is_class else None


def adopt_private_bases(cls: griffe.Class, done: set[str] | None = None) -> None:
    """Replace each private base of ``cls`` by that base's own bases, and add the private
    base's public members that ``cls`` does not define as aliases under ``cls``."""
    done = set() if done is None else done
    if cls.path in done:
        return
    done.add(cls.path)
    bases: list[griffe.Expr | str] = []
    for base in cls.bases:
        path = base if isinstance(base, str) else base.canonical_path
        private = _resolve(cls, base) if is_private(path) else None
        if private is None:
            bases.append(base)
            continue
        adopt_private_bases(private, done)
        bases += private.bases
        for name, member in private.members.items():
            if name not in cls.members and not is_private(name):
                cls.set_member(name, griffe.Alias(name, target=member, parent=cls))
    cls.bases = bases


class PublicBases(griffe.Extension):
    """Applies `adopt_private_bases` to every class of each package griffe loads."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        done: set[str] = set()
        for cls in _classes(pkg):
            adopt_private_bases(cls, done)
