"""Diagnostics of structure across depth, for any model: L x L similarity matrices.

- `block_update_similarity`: cosine similarity of the blocks' updates (each block's
  update is the concatenation of its parameters' updates, roles in a fixed order).
- `representation_similarity`: linear CKA between the blocks' output representations,
  the paper's "representation evolution across depth".
- `adjacent_similarity`: such a matrix as one number, the mean over neighbouring blocks.

Inputs are arrays of any library that NumPy can read (``np.asarray``); outputs are NumPy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .blocks import BlockPlan, find_blocks

__all__ = ["cosine_similarity_matrix", "block_update_similarity", "representation_similarity", "linear_cka",
           "adjacent_similarity"]


def cosine_similarity_matrix(vectors: Sequence[Any]) -> np.ndarray:
    """``S[i, j] = <v_i, v_j> / (|v_i| |v_j|)`` over flattened vectors (0 where a vector is 0)."""
    V = np.stack([np.asarray(v, dtype=np.float64).reshape(-1) for v in vectors])  # (L, n)
    norms = np.linalg.norm(V, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    S = (V @ V.T) / np.outer(safe, safe)
    S[norms == 0, :] = 0.0
    S[:, norms == 0] = 0.0
    return S


def block_update_similarity(updates: Mapping[str, Any], plan: BlockPlan | None = None, stack: str | None = None) -> np.ndarray:
    """L x L cosine similarity of the blocks' updates in one stack.

    ``updates`` maps parameter names to their update (new - old, or gradients). Only roles
    that every block of the stack holds count, so each block's vector has the same layout.
    """
    if plan is None:
        plan = find_blocks({k: np.shape(v) for k, v in updates.items()})
    if not plan.groups:
        raise ValueError("updates hold no blocks: find_blocks found no stack in their names")
    stack = plan.groups[0].stack if stack is None else stack
    groups = [g for g in plan.groups if g.stack == stack]
    depths = sorted({d for g in groups for d in g.depths})
    full = [g for g in groups if list(g.depths) == depths]
    if not full:
        raise ValueError(f"no role is held by every block of stack {stack!r}")
    per_block = [np.concatenate([np.asarray(updates[g.names[i]], dtype=np.float64).reshape(-1) for g in full])
                 for i in range(len(depths))]
    return cosine_similarity_matrix(per_block)


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA of two representations (N, d1), (N, d2) of the same N inputs:
    ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` after centring each feature."""
    X = np.asarray(x, dtype=np.float64)
    Y = np.asarray(y, dtype=np.float64)
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    den = np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)
    return float(np.linalg.norm(Y.T @ X) ** 2 / den) if den > 0 else 0.0


def representation_similarity(outputs: Sequence[Any]) -> np.ndarray:
    """L x L linear CKA between the blocks' outputs, each (N, d) for the same N inputs."""
    L = len(outputs)
    S = np.eye(L)
    for i in range(L):
        for j in range(i + 1, L):
            S[i, j] = S[j, i] = linear_cka(outputs[i], outputs[j])
    return S


def adjacent_similarity(similarity: Any) -> float:
    """The mean similarity of neighbouring blocks in an L x L matrix: ``mean_l S[l, l + 1]``
    over ``l = 0 .. L - 2`` (NaN for a single block)."""
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"similarity should be a square L x L matrix but has shape {S.shape}")
    return float(np.mean(np.diagonal(S, offset=1))) if len(S) > 1 else float("nan")
