"""Block grouping: which parameters are the same role in repeated blocks, ordered by depth.

Pure Python over names and shapes, so it serves any framework. A *stack* is a list of
repeated blocks (``model.layers``); the *depth index* is the position in it; a *role*
is a parameter's path inside its block (``mlp.up_proj.weight``). A *group* is one stack,
one role, one shape and one dtype, its members ordered by depth. Groups of one member,
and every parameter outside a stack, are left out of smoothing (``BlockPlan.ungrouped``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Union

from .operators import DepthOperator, check_operator
from .describe import describe

__all__ = ["BlockGroup", "BlockPlan", "find_blocks", "Stacks", "Exclude"]

Stacks = Union[None, str, "re.Pattern[str]", Iterable[str]]
Exclude = Union[None, str, "re.Pattern[str]", Callable[[str], bool], Iterable[Union[str, "re.Pattern[str]"]]]

# A word ending in its index, as torchvision names blocks: ``encoder_layer_4``.
_WORD_INDEX = re.compile(r"^([A-Za-z]\w*?_)(\d+)$")


class BlockGroup(NamedTuple):
    """One role of one stack, one shape and dtype: the members a depth operator mixes."""

    stack: str  # the name up to the depth index, e.g. "model.layers"
    role: str  # the path inside the block, e.g. "mlp.up_proj.weight"
    names: tuple[str, ...]  # full parameter names, ordered by depth
    depths: tuple[int, ...]  # each member's depth index in the stack
    shape: tuple[int, ...]
    dtype: Any = None  # the members' dtype, when the plan was built from arrays

    @property
    def size(self) -> int:
        """Elements per member."""
        out = 1
        for s in self.shape:
            out *= s
        return out


@dataclass(frozen=True)
class BlockPlan:
    """What will be smoothed: ``groups`` (each of two or more members) and ``ungrouped`` names.

    ``operator`` (set by [`with_operator`][gradsmooth.BlockPlan.with_operator], not part of equality) lets the printed
    plan mark the groups the operator moves in lockstep; ``paths`` (set by
    [`with_paths`][gradsmooth.BlockPlan.with_paths], not part of equality either) say which kernels an adapter runs for
    each group.
    """

    groups: tuple[BlockGroup, ...]
    ungrouped: tuple[str, ...]
    operator: DepthOperator | None = field(default=None, compare=False, repr=False)
    paths: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def with_operator(self, operator: DepthOperator) -> BlockPlan:
        """The same plan, knowing the operator that will smooth it.

        Its printout marks each group whose members all get the same update: the rows of
        ``(1 - alpha) I + alpha A`` for the group's n members (of ``A`` for an alpha schedule)
        are all equal, so ``U~_l = sum_j A[0, j] U_j`` for every l (n <= r + 1 with a uniform window and
        ``renormalize``: two LoRA layers with ``window=3`` move in lockstep).
        """
        return replace(self, operator=check_operator(operator))

    def with_paths(self, paths: Collection[str]) -> BlockPlan:
        """The same plan, printed with a ``path`` column: one entry per group, in order (an
        adapter's word for the kernels that mix it, e.g. "fused" or "eager (why)")."""
        paths = tuple(paths)
        if len(paths) != len(self.groups) or not all(isinstance(p, str) for p in paths):
            raise ValueError(f"paths should hold one string per group ({len(self.groups)}) but is: {paths!r}")
        return replace(self, paths=paths)

    def with_dtypes(self, dtypes: Collection[Any]) -> BlockPlan:
        """The same plan with each group's dtype as its members hold it now: one entry per group,
        in order (an adapter's plan is built once, and a model may be cast after)."""
        dtypes = tuple(dtypes)
        if len(dtypes) != len(self.groups):
            raise ValueError(f"dtypes should hold one dtype per group ({len(self.groups)}) but holds {len(dtypes)}")
        return replace(self, groups=tuple(g._replace(dtype=d) for g, d in zip(self.groups, dtypes)))

    def _lockstep(self, group: BlockGroup) -> bool:
        """Whether the plan's operator gives every member of ``group`` the same update (all rows
        of ``(1 - alpha) I + alpha A`` equal; for an alpha schedule, of ``A``); False without an
        operator, or if the operator cannot serve the group (the error is raised when it smooths)."""
        if self.operator is None or len(group.names) < 2:
            return False
        try:
            n = len(group.names)
            scheduled = callable(getattr(self.operator, "alpha", None))  # a schedule reaches alpha = 1 (say)
            rows = (self.operator.depth_band(n) if scheduled else self.operator.band(n, 0)).dense()
        except (TypeError, ValueError):
            return False
        first = rows[0]
        return all(
            all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15) for a, b in zip(row, first)) for row in rows[1:]
        )

    def nothing_smoothed(self) -> str | None:
        """The warning for a plan that smooths nothing (no stack found, or every group of one
        member: training would equal the base optimizer while smoothing seems on), naming the
        way out; None when the plan holds a group."""
        if self.groups:
            return None
        return (
            f"gradsmooth smooths nothing: no stack of two or more repeated blocks was found among the "
            f"{len(self.ungrouped)} parameters, so training equals the base optimizer. Name the stacks: stacks='layers' "
            "(the name before the depth index) or stacks=re.compile(r'layer(\\d+)'); see print(opt.plan)."
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Every grouped name."""
        return tuple(name for g in self.groups for name in g.names)

    @property
    def stacks(self) -> tuple[str, ...]:
        return tuple(sorted({g.stack for g in self.groups}))

    def restrict(self, present: Collection[str]) -> BlockPlan:
        """The plan over the names in ``present`` only: absent members leave their group,
        and a group left with one member is ungrouped."""
        present = set(present)
        groups, ungrouped = [], [n for n in self.ungrouped if n in present]
        for g in self.groups:
            keep = [i for i, name in enumerate(g.names) if name in present]
            if len(keep) == len(g.names):
                groups.append(g)
            elif len(keep) >= 2:
                groups.append(g._replace(names=tuple(g.names[i] for i in keep), depths=tuple(g.depths[i] for i in keep)))
            else:
                ungrouped.extend(g.names[i] for i in keep)
        return BlockPlan(tuple(groups), tuple(sorted(ungrouped)), self.operator)

    def __str__(self) -> str:
        n_members = sum(len(g.names) for g in self.groups)
        elements = sum(len(g.names) * g.size for g in self.groups)
        head = (
            f"BlockPlan: {_count(len(self.groups), 'group')} in {_count(len(self.stacks), 'stack')}, "
            f"{_count(n_members, 'parameter')} smoothed ({_human(elements)} elements), {len(self.ungrouped)} not smoothed"
        )
        rows = [("stack", "role", "members", "depths", "shape", "dtype") + (("path",) if self.paths else ())]
        for i, g in enumerate(self.groups):
            dtype = "" if g.dtype is None else str(g.dtype).rsplit(".", 1)[-1]  # torch.float32 -> float32
            rows.append((g.stack or "(top)", g.role or "(self)", str(len(g.names)), _ranges(g.depths), str(g.shape), dtype)
                        + ((self.paths[i],) if self.paths else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        for i, g in enumerate(self.groups, start=2):
            if self._lockstep(g):
                lines[i] += f"  (every member gets the same update: {self._reach(len(g.names))})"
        if self.ungrouped:
            shown = ", ".join(self.ungrouped[:12]) + (", ..." if len(self.ungrouped) > 12 else "")
            lines.append(f"  not smoothed: {shown}")
        return "\n".join(lines)

    def _reach(self, n: int) -> str:
        radius = getattr(self.operator, "radius", None)
        if isinstance(radius, int) and n <= radius + 1:
            return f"window reaches all {n} members"
        return f"every row of the operator is the same for {n} members"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _human(n: int) -> str:
    for unit, div in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _ranges(depths: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5, 6)`` -> ``"0-2,5-6"``."""
    parts, start = [], None
    for i, d in enumerate(depths):
        if start is None:
            start = d
        if i + 1 == len(depths) or depths[i + 1] != d + 1:
            parts.append(str(start) if start == d else f"{start}-{d}")
            start = None
    return ",".join(parts)


class _Site(NamedTuple):
    """Where a name's depth index may sit: the stack key before it, the depth, the role after it."""

    stack: str
    depth: int
    role: str


def _index_sites(name: str) -> list[_Site]:
    """Every component of ``name`` that can be a depth index, outermost first."""
    parts = name.split(".")
    sites = []
    for i, part in enumerate(parts):
        role = ".".join(parts[i + 1 :])
        if part.isdigit():
            sites.append(_Site(".".join(parts[:i]), int(part), role))
        else:
            m = _WORD_INDEX.match(part)
            if m:
                sites.append(_Site(".".join(parts[:i] + [m.group(1)]), int(m.group(2)), role))
    return sites


def _detect(names: Iterable[str]) -> dict[str, _Site]:
    """Each name's depth site: the outermost index whose stack holds two or more depths.

    Outermost first means a list inside a block (MoE experts, T5's ``layer.M``
    sub-layers) is never taken for depth when the blocks' own list is above it.
    """
    sites = {name: _index_sites(name) for name in names}
    depths: dict[str, set[int]] = defaultdict(set)
    for found in sites.values():
        for site in found:
            depths[site.stack].add(site.depth)
    out = {}
    for name, found in sites.items():
        for site in found:
            if len(depths[site.stack]) >= 2:
                out[name] = site
                break
    return out


def _site_after_prefix(name: str, prefix: str) -> _Site | None:
    rest = name[len(prefix) + 1 :] if prefix else name
    if prefix and not name.startswith(prefix + "."):
        return None
    head, _, role = rest.partition(".")
    if head.isdigit():
        return _Site(prefix, int(head), role)
    m = _WORD_INDEX.match(head)
    if m:
        return _Site(f"{prefix}.{m.group(1)}" if prefix else m.group(1), int(m.group(2)), role)
    return None


# Characters that say a stacks string was meant as a regex, not a prefix ("." is a prefix's separator).
_REGEX_CHARS = frozenset("\\()[]{}*+?|^$")


def _examples(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:3])
    return f"; the names look like: {shown}" + (", ..." if len(names) > 3 else "") if names else "; there are no names"


def _raw(text: str) -> str:
    """``text`` as a raw string literal where it can be one (backslashes shown once), else its repr."""
    return f"r'{text}'" if "'" not in text and not text.endswith("\\") else repr(text)


def _given(names: Iterable[str], stacks: Stacks, excluded: Iterable[str] = ()) -> dict[str, _Site]:
    """Each name's depth site under user-given stacks (prefixes or one regex).

    An entry that gives no name a depth site is refused (a typo, or a regex passed as a
    plain string, would otherwise smooth nothing silently), unless it matches an
    ``excluded`` name only: then the user took that stack out on purpose.
    """
    names, excluded = list(names), list(excluded)
    out = {}
    if isinstance(stacks, re.Pattern):
        if stacks.groups < 1:
            raise ValueError(f"stacks regex should capture the depth index in a group but is: {stacks.pattern!r}")
        key = "depth" if "depth" in stacks.groupindex else 1
        if not any(stacks.match(name) for name in names + excluded):
            raise ValueError(
                f"stacks regex {stacks.pattern!r} matches no parameter name (it is matched at the start of "
                f"each name){_examples(names)}"
            )
        for name in names:
            m = stacks.match(name)
            if m is None or m.group(key) is None:
                continue
            if not m.group(key).isdigit():
                raise ValueError(
                    f"stacks regex {stacks.pattern!r} captured {m.group(key)!r} as the depth of {name!r}; "
                    "it should capture digits"
                )
            out[name] = _Site(name[: m.start(key)].rstrip("."), int(m.group(key)), name[m.end() :].lstrip("."))
        return out
    try:
        prefixes = [stacks] if isinstance(stacks, str) else list(stacks)
    except TypeError:
        prefixes = [stacks]
    for p in prefixes:
        if not isinstance(p, str):
            raise TypeError(f"stacks should be a prefix, a list of prefixes or a compiled regex but holds: {describe(p)}")
    if not prefixes:
        raise ValueError(f"stacks should hold at least one prefix but is: {describe(stacks)}")
    for p in prefixes:
        stripped = p.rstrip(".")
        if any(_site_after_prefix(name, stripped) is not None for name in names + excluded):
            continue
        if _REGEX_CHARS.intersection(p):
            raise ValueError(
                f"stacks entry {_raw(p)} matches no parameter name: a string is a prefix, not a regex; "
                f"to use a regex pass stacks=re.compile({_raw(p)}){_examples(names)}"
            )
        raise ValueError(
            f"stacks entry {p!r} matches no parameter name: a prefix should be followed by the depth index "
            f"(as 'model.layers' in 'model.layers.0.mlp.weight'){_examples(names)}"
        )
    prefixes = sorted({p.rstrip(".") for p in prefixes}, key=len, reverse=True)
    for name in names:
        for p in prefixes:
            site = _site_after_prefix(name, p)
            if site is not None:
                out[name] = site
                break
    return out


def _exclusion(exclude: Exclude) -> Callable[[str], bool]:
    """``exclude`` as a predicate: names or prefixes (a str matches itself and what lies
    below it), compiled regexes (searched), a predicate, or a list of these."""
    if exclude is None:
        return lambda name: False
    if isinstance(exclude, str):
        return lambda name: name == exclude or name.startswith(exclude.rstrip(".") + ".")
    if isinstance(exclude, re.Pattern):
        return lambda name: exclude.search(name) is not None
    if callable(exclude):
        return lambda name: bool(exclude(name))
    try:
        preds = [_exclusion(e) for e in exclude]
    except TypeError:
        raise TypeError(
            f"exclude should be names, prefixes, a regex, a predicate or a list of these but is: {describe(exclude)}"
        ) from None
    return lambda name: any(p(name) for p in preds)


def _shape_dtype(name: str, value: Any) -> tuple[tuple[int, ...], Any]:
    if hasattr(value, "shape"):
        shape, dtype = value.shape, getattr(value, "dtype", None)
    else:
        shape, dtype = value, None
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shapes[{name!r}] should be a shape (a tuple of ints) or an array but is: {describe(value)}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shapes[{name!r}] should have non-negative sizes but is: {shape}")
    return shape, dtype


def find_blocks(
    shapes: Mapping[str, Any],
    stacks: Stacks = None,
    exclude: Exclude = None,
    *,
    sites: Mapping[str, tuple[str, int, str]] | None = None,
) -> BlockPlan:
    """Group parameters by (stack, role, shape, dtype) from their dotted names.

    ``shapes`` maps each name to its shape, or to an array (its shape and dtype are used).
    The depth index is found in the names (``model.layers.3.…``, ``transformer.h.11.…``,
    ``encoder.block.2.layer.1.…``, ``encoder.layers.encoder_layer_4.…``): the outermost
    index whose stack holds two or more depths. ``stacks=`` (a prefix, a list of prefixes,
    or a compiled regex capturing the depth) replaces detection; ``exclude=`` (names,
    prefixes, a compiled regex, a predicate, or a list of these) keeps parameters out.
    ``sites=`` gives each name's ``(stack, depth, role)`` directly (an adapter that reads a
    model's structure passes them); names without a site are ungrouped.
    The plan does not depend on the order of ``shapes``.
    """
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes should be a mapping name -> shape but is: {type(shapes).__name__}")
    info = {}
    for name, value in shapes.items():
        if not isinstance(name, str):
            raise TypeError(f"shapes should be keyed by parameter names (str) but has key: {name!r}")
        info[name] = _shape_dtype(name, value)
    excluded = _exclusion(exclude)
    candidates = sorted(name for name in info if not excluded(name))
    if sites is not None:
        if stacks is not None:
            raise ValueError(f"pass stacks or sites, not both; stacks is: {describe(stacks)}")
        sites = {name: _Site(*sites[name]) for name in candidates if name in sites}
    else:
        if stacks is None:
            sites = _detect(candidates)
        else:
            sites = _given(candidates, stacks, excluded=sorted(name for name in info if excluded(name)))

    members: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for name, site in sites.items():
        shape, dtype = info[name]
        members[(site.stack, site.role, shape, dtype)].append((site.depth, name))

    groups, ungrouped = [], [name for name in info if name not in sites]
    for (stack, role, shape, dtype), found in members.items():
        found.sort()
        for (d0, n0), (d1, n1) in zip(found, found[1:]):
            if d0 == d1:
                raise ValueError(
                    f"parameters {n0!r} and {n1!r} both sit at depth {d0} of stack {stack!r} (role {role!r}): "
                    "a group holds one member per depth; rename one, or pass stacks= or exclude="
                )
        if len(found) < 2:
            ungrouped.extend(name for _, name in found)
            continue
        groups.append(BlockGroup(stack, role, tuple(n for _, n in found), tuple(d for d, _ in found), shape, dtype))
    groups.sort(key=lambda g: (g.stack, g.depths[0], g.role, g.shape, str(g.dtype)))
    return BlockPlan(tuple(groups), tuple(sorted(ungrouped)))
