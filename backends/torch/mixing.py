"""Execution on torch tensors: a depth operator's band applied to a group, chunk by chunk.

A group's n members are separate tensors. Work goes over the elements in column chunks:
each chunk of the members is gathered into one small ``(n, c)`` block that stays in
cache, the band is applied as ``2r + 1`` shifted multiply-adds over that block, and the
rows are written back. Memory traffic is then one read of each input and one write of
each output per step, whatever the window, and no dense n x n product is formed.

Low-precision members (bf16, fp16) are mixed in float32 and rounded once on write-back.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from gradsmooth import Band

__all__ = ["BandProgram", "band_program", "chunk_columns", "compute_dtype", "device_weights", "mix_gradients",
           "mix_updates"]

# elements of one gathered (n, c) block: about 2 MiB of float32 on a CPU, more on a GPU
_BLOCK_ELEMENTS = {"cpu": 1 << 19}
_BLOCK_ELEMENTS_DEFAULT = 1 << 24


@dataclass(frozen=True)
class BandProgram:
    """A band as shifted row-weight vectors: ``T = sum_o w_o * shift_o(X)`` over rows.

    ``terms`` holds ``(offset, lo, hi, weights)``: rows ``lo:hi`` of ``T`` gain
    ``weights[:, None] * X[lo + offset : hi + offset]``.
    """

    n: int
    terms: tuple[tuple[int, int, int, tuple[float, ...]], ...]


@lru_cache(maxsize=512)
def band_program(band: Band, minus_identity: bool = False) -> BandProgram:
    """The band of ``A`` (or of ``A - I``) as per-offset weight vectors, zero runs trimmed."""
    n = band.n
    dense = band.dense()
    if minus_identity:
        for l in range(n):
            dense[l][l] -= 1.0
    offsets = {j - l for l, row in enumerate(band.rows) for j, _ in row} | ({0} if minus_identity else set())
    offsets = sorted(offsets, key=lambda o: (abs(o), o))  # the diagonal first: it covers every row
    terms = []
    for o in offsets:
        rows = [l for l in range(max(0, -o), min(n, n - o)) if dense[l][l + o] != 0.0]
        if not rows:
            continue
        lo, hi = rows[0], rows[-1] + 1
        terms.append((o, lo, hi, tuple(dense[l][l + o] for l in range(lo, hi))))
    return BandProgram(n, tuple(terms))


_WEIGHTS: dict[tuple, torch.Tensor] = {}


def device_weights(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a cached (rows, 1) tensor on ``device`` (a band's weights change only with alpha)."""
    key = (values, dtype, device)
    w = _WEIGHTS.get(key)
    if w is None:
        if len(_WEIGHTS) > 4096:
            _WEIGHTS.clear()
        w = _WEIGHTS[key] = torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)  # (rows, 1)
    return w


def _apply(program: BandProgram, X: torch.Tensor, out: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """``out = base + sum_o w_o * shift_o(X)`` for ``X`` of shape (n, c) (``base`` None: zero)."""
    (o, lo, hi, values), *rest = program.terms
    w = device_weights(values, X.dtype, X.device)
    if lo == 0 and hi == program.n:
        if base is None:
            torch.mul(X[lo + o : hi + o], w, out=out)
        else:
            torch.addcmul(base, X[lo + o : hi + o], w, out=out)
    else:
        out.copy_(base) if base is not None else out.zero_()
        rest = program.terms
    for o, lo, hi, values in rest:
        out[lo:hi].addcmul_(X[lo + o : hi + o], device_weights(values, X.dtype, X.device))
    return out


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype members of ``dtype`` are mixed in: float32 for bf16 and fp16, else their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def chunk_columns(n: int, numel: int, device: torch.device) -> list[tuple[int, int]]:
    """Column ranges so that one gathered (n, c) block stays near the cache-sized budget."""
    budget = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS_DEFAULT)
    c = max(1, min(numel, budget // max(n, 1)))
    return [(lo, min(lo + c, numel)) for lo in range(0, numel, c)]


def _write(targets: list[torch.Tensor], flats: list[torch.Tensor] | None, rows: torch.Tensor, lo: int, hi: int) -> None:
    """Copy ``rows[l]`` into ``targets[l]`` at columns ``lo:hi`` (rounding once to their dtype);
    ``flats`` is None for non-contiguous members, which come as one chunk."""
    rows = rows.to(targets[0].dtype)
    if flats is not None:
        torch._foreach_copy_([f[lo:hi] for f in flats], list(rows.unbind(0)))
    else:  # non-contiguous members come as one chunk: whole tensors
        for t, row in zip(targets, rows.unbind(0)):
            t.copy_(row.view(t.shape))


def _gather(flats: list[torch.Tensor], lo: int, hi: int, out: torch.Tensor) -> torch.Tensor:
    """Columns ``lo:hi`` of every member as rows of ``out`` (n, hi - lo), in ``out``'s dtype."""
    views = [f[lo:hi] for f in flats]
    if views[0].dtype == out.dtype:
        return torch.stack(views, out=out)
    return out.copy_(torch.stack(views))


def _workspace(n: int, c: int, like: torch.Tensor, count: int) -> list[torch.Tensor]:
    cdtype = compute_dtype(like.dtype)
    return [torch.empty((n, c), dtype=cdtype, device=like.device) for _ in range(count)]


def mix_gradients(program: BandProgram, grads: list[torch.Tensor]) -> None:
    """In place: ``g_l <- sum_j A[l, j] g_j`` for the group's gradients."""
    flats, chunks, views = _layout(grads)
    G, T = _workspace(len(grads), chunks[0][1] - chunks[0][0], grads[0], 2)
    for lo, hi in chunks:
        k = hi - lo
        X = _gather(flats, lo, hi, G[:, :k])  # (n, c)
        _write(grads, views, _apply(program, X, T[:, :k]), lo, hi)


def mix_updates(program: BandProgram, params: list[torch.Tensor], before: torch.Tensor, decay: torch.Tensor | None) -> None:
    """In place: ``p_l <- p_l + sum_j (A - I)[l, j] delta_j`` with ``delta_j = p_j - decay_j * before_j``.

    ``params`` hold the base optimizer's result ``decay * theta + delta``; ``before`` is the
    (n, numel) snapshot of theta taken before the base step; ``program`` is the band of
    ``A - I``; ``decay`` is an (n, 1) tensor of ``compute_dtype`` on the members' device, or None where every factor is 1. The result
    is ``decay * theta + sum_j A[l, j] delta_j``: decoupled decay per layer, the rest of the
    step mixed along depth.
    """
    flats, chunks, views = _layout(params)
    P, X, T = _workspace(len(params), chunks[0][1] - chunks[0][0], params[0], 3)
    for lo, hi in chunks:
        k = hi - lo
        Pk = _gather(flats, lo, hi, P[:, :k])  # (n, c)
        S = before[:, lo:hi]  # (n, c)
        if S.dtype != Pk.dtype:
            S = S.to(Pk.dtype)
        if decay is None:
            Xk = torch.sub(Pk, S, out=X[:, :k])  # delta
        else:
            Xk = torch.addcmul(Pk, S, decay, value=-1.0, out=X[:, :k])  # delta
        _write(params, views, _apply(program, Xk, T[:, :k], base=Pk), lo, hi)


def _layout(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]], list[torch.Tensor] | None]:
    """Flat views (copies where a member is not contiguous), the column chunks, and the flat
    views to write through (None when not every member is contiguous: one whole chunk then)."""
    contiguous = all(t.is_contiguous() for t in tensors)
    flats = [t.view(-1) if contiguous else t.reshape(-1) for t in tensors]
    numel = flats[0].numel()
    chunks = chunk_columns(len(tensors), numel, tensors[0].device) if contiguous else [(0, numel)]
    return flats, chunks, flats if contiguous else None
