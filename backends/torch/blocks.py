"""Blocks of a torch model, read from its module structure.

A stack is an ``nn.ModuleList`` or ``nn.Sequential`` of two or more children of one
class; the outermost such list is depth (a list inside a block, such as MoE experts,
is part of the block). Wrapper prefixes are dropped from names: ``_orig_mod.``
(torch.compile), ``module.`` (DDP) and ``_checkpoint_wrapped_module.`` (activation
checkpointing), so a wrapped model plans like the plain one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import Tensor, nn

__all__ = ["canonical_name", "module_sites", "named_parameters"]

_WRAPPER_PREFIXES = ("_orig_mod", "module", "_fsdp_wrapped_module")
_WRAPPER_COMPONENTS = ("_checkpoint_wrapped_module",)


def canonical_name(name: str) -> str:
    """``name`` without the components that wrappers add."""
    parts = name.split(".")
    while len(parts) > 1 and parts[0] in _WRAPPER_PREFIXES:
        parts = parts[1:]
    return ".".join(p for p in parts if p not in _WRAPPER_COMPONENTS)


def _unwrap(module: nn.Module) -> nn.Module:
    """The module a wrapper holds (torch.compile, DDP, checkpoint wrapper), else ``module``."""
    for attr in ("_orig_mod", "module", "_checkpoint_wrapped_module"):
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module) and len(list(module.children())) == 1:
            return _unwrap(inner)
    return module


def _is_stack(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    kinds = [type(_unwrap(child)) for child in module.children()]
    return len(kinds) >= 2 and all(k is kinds[0] for k in kinds)


def named_parameters(model: nn.Module | Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
    """``(canonical name, parameter)`` pairs, each parameter once (tied ones under their first name)."""
    pairs = model.named_parameters() if isinstance(model, nn.Module) else model
    seen: set[int] = set()
    for name, p in pairs:
        if not isinstance(name, str) or not isinstance(p, Tensor):
            raise TypeError(f"model should be an nn.Module or an iterable of (name, parameter) pairs but holds: {(name, p)!r}")
        if id(p) not in seen:
            seen.add(id(p))
            yield canonical_name(name), p


def module_sites(model: nn.Module) -> dict[str, tuple[str, int, str]]:
    """Each block parameter's ``(stack, depth, role)`` from the model's structure, canonical names."""
    sites: dict[str, tuple[str, int, str]] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if _is_stack(module):
            stack = canonical_name(prefix) if prefix else ""
            for depth, (child_name, block) in enumerate(module.named_children()):
                for role, _ in block.named_parameters():
                    name = canonical_name(f"{prefix}.{child_name}.{role}" if prefix else f"{child_name}.{role}")
                    sites.setdefault(name, (stack, depth, canonical_name(role)))
            return
        for child_name, child in module.named_children():
            visit(child, f"{prefix}.{child_name}" if prefix else child_name)

    visit(model, "")
    return sites
