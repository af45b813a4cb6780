"""Blocks of a torch model, read from its module structure, and its parameters' names.

A stack is an ``nn.ModuleList`` or ``nn.Sequential`` of two or more children of one
class; the outermost such list is depth (a list inside a block, such as MoE experts,
is part of the block). The components that wrappers add are dropped from names
(`WRAPPERS`), so a wrapped model plans like the plain one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor, nn
from torch.optim import Optimizer

from gradsmooth.describe import describe

__all__ = ["WRAPPERS", "ModelParameters", "canonical_name", "module_sites", "named_parameters"]

#: Attribute names under which wrappers hold the module they wrap, and where they appear in
#: parameter names: ``"prefix"`` (only as the leading components) or ``"anywhere"``.
WRAPPERS: dict[str, str] = {
    "_orig_mod": "prefix",  # torch.compile
    "module": "prefix",  # DistributedDataParallel, DataParallel
    "_fsdp_wrapped_module": "prefix",  # FSDP (1)
    "_checkpoint_wrapped_module": "anywhere",  # activation checkpointing, around single blocks
}


def canonical_name(name: str) -> str:
    """``name`` without the components that wrappers add."""
    parts = name.split(".")
    while len(parts) > 1 and WRAPPERS.get(parts[0]) == "prefix":
        parts = parts[1:]
    return ".".join(p for p in parts if WRAPPERS.get(p) != "anywhere")


def _unwrap(module: nn.Module) -> nn.Module:
    """The module a wrapper holds (any of `WRAPPERS`), else ``module``."""
    for attr in WRAPPERS:
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module) and len(list(module.children())) == 1:
            return _unwrap(inner)
    return module


def _stacks_in(module: nn.Module) -> list[range]:
    """The stacks an ``nn.ModuleList`` or ``nn.Sequential`` holds, as ranges of its children:
    each run of two or more consecutive children of one type (wrappers unwrapped). The whole
    container where all its children are of one type; the blocks between a stem and a head in
    ``nn.Sequential(stem, *blocks, head)``."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return []
    kinds = [type(_unwrap(child)) for child in module.children()]
    runs, start = [], 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] is not kinds[start]:
            if i - start >= 2:
                runs.append(range(start, i))
            start = i
    return runs


def named_parameters(model: nn.Module | Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """``(canonical name, parameter)`` pairs, each parameter once (tied ones under their first name)."""
    pairs = model.named_parameters() if isinstance(model, nn.Module) else model
    seen: set[int] = set()
    for pair in pairs:
        if isinstance(pair, Tensor):  # model.parameters() where the model was meant
            raise TypeError("model should be an nn.Module or an iterable of (name, parameter) pairs but holds a "
                            f"tensor of shape {tuple(pair.shape)}: pass the model itself (or model.named_parameters()), "
                            "not model.parameters(): the names tell the blocks apart")
        name, p = pair if isinstance(pair, tuple) and len(pair) == 2 else (None, pair)
        if not isinstance(name, str) or not isinstance(p, Tensor):
            hint = (": param groups (dicts) are the optimizer's params, not the model; to build the optimizer from "
                    "param groups, as Hugging Face's Trainer does, use the class's factory(model)"
                    if isinstance(pair, Mapping) else "")
            raise TypeError("model should be an nn.Module or an iterable of (name, parameter) pairs but holds: "
                            f"{describe(pair)}{hint}")
        if id(p) not in seen:
            seen.add(id(p))
            yield canonical_name(name), p


def module_sites(model: nn.Module) -> dict[str, tuple[str, int, str]]:
    """Each block parameter's ``(stack, depth, role)`` from the model's structure, canonical names."""
    sites: dict[str, tuple[str, int, str]] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        runs = _stacks_in(module)
        children = list(module.named_children())
        whole = len(runs) == 1 and len(runs[0]) == len(children)
        in_run = {}
        for run in runs:  # a part of a container is named by its children's range: "[1:7]"
            stack = canonical_name(prefix) if prefix else ""
            stack = stack if whole else f"{stack}[{run.start}:{run.stop}]"
            in_run |= {i: stack for i in run}
        for depth, (child_name, child) in enumerate(children):
            if depth in in_run:
                for role, _ in child.named_parameters():
                    name = canonical_name(f"{prefix}.{child_name}.{role}" if prefix else f"{child_name}.{role}")
                    sites.setdefault(name, (in_run[depth], depth, canonical_name(role)))
            else:
                visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return sites


@dataclass
class ModelParameters:
    """A model's parameters by canonical name, and, for an ``nn.Module`` planned from its
    structure, each block parameter's site (``sites``; None when planned from the names)."""

    model: nn.Module | None
    named: dict[str, Tensor]
    sites: dict[str, tuple[str, int, str]] | None

    def __post_init__(self) -> None:
        self._names = {id(p): name for name, p in self.named.items()}

    @classmethod
    def of(cls, model: nn.Module | Iterable[tuple[str, Tensor]], from_structure: bool) -> ModelParameters:
        """``model``'s parameters; ``from_structure``: find stacks in its module tree."""
        module = model if isinstance(model, nn.Module) else None
        sites = module_sites(module) if module is not None and from_structure else None
        return cls(module, dict(named_parameters(model)), sites)

    def refreshed(self) -> ModelParameters:
        """Read again from the module (it may have gained parameters); pairs stay as they were."""
        if self.model is None:
            return self
        return ModelParameters.of(self.model, self.sites is not None)

    def name(self, p: Tensor, bases: list[Optimizer]) -> str:
        """``p``'s model name, else where the bases hold it, else its shape."""
        name = self._names.get(id(p))
        if name is not None:
            return name
        for i, b in enumerate(bases):
            for gi, g in enumerate(b.param_groups):
                for pi, q in enumerate(g["params"]):
                    if q is p:
                        return f"optimizers[{i}].param_groups[{gi}]['params'][{pi}]"
        return f"parameter of shape {tuple(p.shape)}"
