"""The arithmetic of every kernel kind, written once, and rendered into each compiled kernel's
source: inductor's straight-line Python (``inductor.py``) and the blocked C++ (``blocked.py``).
The eager kernels (``eager.py``) are the readable reference beside it, in torch operations.

A group of n members is mixed along depth by a band: row ``l`` reads members ``pattern[l]`` with
weights ``w`` (flattened row by row). Per element, a kind computes each member's term ``u_j``
from its arrays and coefficients (`KINDS`), then each row

    y_l = own_l + sum_{j in pattern[l]} w[l, j] * u_j

and writes ``y_l`` to the member's parameter (or gradient), and its state where it has one:

- ``update`` (the wrapper's update mode, the band of A - I): ``u_j = p_j - d_j s_j`` (the base's
  step without decoupled decay, ``s`` the snapshot), ``own_l = p_l``;
- ``gradient`` (the wrapper's gradient mode, the band of A): ``u_j = g_j``, no own term;
- ``adamw`` (``SmoothedAdamW``): AdamW's moments and update, ``own_l = d_l p_l`` (decay per layer);
- ``sgd``, ``sgd-plain`` (``SmoothedSGD``, with and without a momentum buffer): SGD's update,
  ``own_l = p_l``.

Low-precision members are read into the compute dtype (float32) and rounded once on the write.
Each expression keeps the order of operations of the eager reference.
"""

from __future__ import annotations

import ast
from typing import NamedTuple

__all__ = ["KINDS", "Kind", "Pattern", "cpp_expression", "python_expression"]

Pattern = tuple[tuple[int, ...], ...]


class Kind(NamedTuple):
    """One kernel kind's arithmetic. ``arrays``: the per-member arrays the kernel takes, in the
    call's order (``p`` first); ``state``: those it writes back besides ``p``; ``coefficients``:
    per-member scalars, laid out ``c[k * n + j]``; ``row``: a per-row scalar after them
    (``c[len(coefficients) * n + l]``), or None; ``body``: ``(name, expression)`` statements, in
    order, whose last defines ``u`` (names: the arrays, earlier statements, the coefficients,
    ``sqrt``); ``own``: row ``l``'s first term before the band's (``p`` and ``row`` are row l's),
    or None."""

    arrays: tuple[str, ...]
    state: tuple[str, ...]
    coefficients: tuple[str, ...]
    row: str | None
    body: tuple[tuple[str, str], ...]
    own: str | None


KINDS: dict[str, Kind] = {
    "update": Kind(("p", "s"), (), ("d",), None, (("u", "p - d * s"),), "p"),
    "gradient": Kind(("g",), (), (), None, (("u", "g"),), None),
    # coefficients (coefficients.adamw_coefficients): 1 - beta1, beta2, 1 - beta2,
    # sqrt(bias correction 2), eps, -lr / bias correction 1, the gradient's sign (-1 under
    # maximize); the row's decoupled decay 1 - lr * weight_decay
    "adamw": Kind(("p", "g", "m", "v"), ("m", "v"),
                  ("one_minus_beta1", "beta2", "one_minus_beta2", "sqrt_bc2", "eps", "step", "sign"), "decay",
                  (("g", "sign * g"),
                   ("m", "m + one_minus_beta1 * (g - m)"),
                   ("v", "v * beta2 + one_minus_beta2 * g * g"),
                   ("u", "step * (m / (sqrt(v) / sqrt_bc2 + eps))")),
                  "decay * p"),
    # coefficients (coefficients.sgd_coefficients): weight decay, momentum (0 at the first
    # step), 1 - dampening (1 then), the direction a * e + b * buffer, -lr, the gradient's sign
    "sgd": Kind(("p", "g", "b"), ("b",), ("weight_decay", "keep", "take", "along_e", "along_b", "step", "sign"), None,
                (("e", "sign * g + weight_decay * p"),
                 ("b", "b * keep + take * e"),
                 ("u", "step * (along_e * e + along_b * b)")),
                "p"),
    "sgd-plain": Kind(("p", "g"), (), ("weight_decay", "keep", "take", "along_e", "along_b", "step", "sign"), None,
                      (("e", "sign * g + weight_decay * p"),
                       ("u", "step * (along_e * e + along_b * e)")),
                      "p"),
}


class _Rename(ast.NodeTransformer):
    """Names replaced by expressions (``names``); ``sqrt`` is left as it is."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.names:
            return ast.parse(self.names[node.id], mode="eval").body
        return node


def _render(expression: str, names: dict[str, str], sqrt: str) -> str:
    """``expression`` with ``names`` replaced, its tree (hence its order of operations) kept."""
    assert "sqrt" not in names
    tree = _Rename(names).visit(ast.parse(expression, mode="eval"))
    return ast.unparse(ast.fix_missing_locations(tree)).replace("sqrt(", f"{sqrt}(")


def python_expression(expression: str, names: dict[str, str]) -> str:
    """``expression`` in Python over torch tensors, each name replaced by ``names[name]``."""
    return _render(expression, names, "torch.sqrt")


def cpp_expression(expression: str, names: dict[str, str]) -> str:
    """``expression`` in C++ over scalars, each name replaced by ``names[name]``."""
    return _render(expression, names, "std::sqrt")
