"""Blocks of an MLX model, read from its parameter tree.

A stack is a list in the tree (``model.layers``, ``model.h``) of two or more blocks: dicts
of one structure. The outermost such list is depth; a list inside a block is part of it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tree_sites"]


def _leaves(tree: Any, prefix: str) -> list[str]:
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(tree, (list, tuple)):
        return [n for i, v in enumerate(tree) for n in _leaves(v, f"{prefix}.{i}" if prefix else str(i))]
    return [prefix]


def tree_sites(tree: Any) -> dict[str, tuple[str, int, str]]:
    """Each block parameter's ``(stack, depth, role)`` from lists of blocks in ``tree``.

    Blocks of one list may differ where some hold a parameter others do not, or hold nothing
    trainable (LoRA in some layers): a list of dicts is a stack when two or more of them are
    non-empty and those share at least one key.
    """
    sites: dict[str, tuple[str, int, str]] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, (list, tuple)):
            blocks = [b for b in node if isinstance(b, dict) and b]  # empty: a block with nothing trainable
            if all(isinstance(b, dict) for b in node) and len(blocks) >= 2 and set.intersection(*(set(b) for b in blocks)):
                for depth, block in enumerate(node):
                    base = f"{prefix}.{depth}" if prefix else str(depth)
                    for name in _leaves(block, base):
                        sites[name] = (prefix, depth, name[len(base) + 1 :])
                return
            for i, v in enumerate(node):
                visit(v, f"{prefix}.{i}" if prefix else str(i))
        elif isinstance(node, dict):
            for k, v in node.items():
                visit(v, f"{prefix}.{k}" if prefix else str(k))

    visit(tree, "")
    return sites
