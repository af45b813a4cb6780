"""Execution on torch tensors: a depth operator's band applied to a group, chunk by chunk.

A group's n members are separate tensors. Work goes over the elements in column chunks:
each chunk of the members is gathered into one small ``(n, c)`` block that stays in
cache, the band is applied as ``2r + 1`` shifted multiply-adds over that block, and the
rows are written back. Memory traffic is then one read of each input and one write of
each output per step, whatever the window, and no dense n x n product is formed.

Low-precision members (bf16, fp16) are mixed in float32 and rounded once on write-back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

import torch

from gradsmooth import Band

__all__ = ["BandProgram", "Workspace", "band_program", "chunk_columns", "compute_dtype", "device_weights",
           "mix_gradients", "mix_updates", "scratch", "warm_weights", "workspace"]

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


def warm_weights(program: BandProgram, dtype: torch.dtype, device: torch.device) -> None:
    """Put ``program``'s weights on ``device`` now (before anything changes), not inside a step."""
    for *_, values in program.terms:
        device_weights(values, dtype, device)


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


_SCRATCH: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}


def scratch(name: str, size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``size`` values of scratch on ``device``. On a CPU one buffer per ``name``, dtype and
    Python thread, kept and reused by every group and step (a step runs its groups one after
    another), grown to the largest size asked: allocated anew at each step, a buffer of
    megabytes is memory the allocator hands back to the system and faults in again, page by
    page. Elsewhere a new buffer (CUDA's caching allocator already reuses its memory, and then
    holds none for us between steps)."""
    if device.type != "cpu":
        return torch.empty(size, dtype=dtype, device=device)
    key = (name, dtype, threading.get_ident())
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = _SCRATCH[key] = torch.empty(size, dtype=dtype)
    return buffer[:size]


class Workspace:
    """The scratch blocks the eager kernels mix in, allocated before anything changes (kept
    across steps on a CPU: `scratch`).

    A step allocates one workspace for all its groups (they run one after another) with
    `workspace`, before the base optimizer steps, so an allocation failure leaves every
    parameter, gradient and optimizer state as it was. The kernels then allocate nothing.
    """

    def __init__(self, buffers: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]]) -> None:
        # per (compute dtype, device): three flat buffers, allocated apart (not cut from one
        # buffer, which would put the blocks a multiple of their size apart: a precaution
        # against their rows sharing cache sets)
        self._buffers = buffers

    def blocks(self, n: int, c: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three (n, c) blocks in ``like``'s compute dtype on its device."""
        flats = self._buffers[(compute_dtype(like.dtype), like.device)]
        return tuple(flat[: n * c].view(n, c) for flat in flats)  # type: ignore[return-value]


def _block_size(tensors: list[torch.Tensor]) -> int:
    """Elements of one (n, c) block for this group (its widest chunk)."""
    contiguous = all(t.is_contiguous() for t in tensors)
    numel = tensors[0].numel()
    c = chunk_columns(len(tensors), numel, tensors[0].device)[0][1] if contiguous else numel
    return len(tensors) * c


def workspace(groups: list[list[torch.Tensor]]) -> Workspace:
    """One `Workspace` large enough for every group in ``groups`` (their members)."""
    sizes: dict[tuple[torch.dtype, torch.device], int] = {}
    for tensors in groups:
        key = (compute_dtype(tensors[0].dtype), tensors[0].device)
        sizes[key] = max(sizes.get(key, 0), _block_size(tensors))
    return Workspace({key: tuple(scratch(f"workspace {i}", size, *key) for i in range(3)) for key, size in sizes.items()})


def _write(targets: list[torch.Tensor], flats: list[torch.Tensor] | None, rows: torch.Tensor, lo: int, hi: int) -> None:
    """Copy ``rows[l]`` into ``targets[l]`` at columns ``lo:hi`` (rounding once to their dtype);
    ``flats`` is None for non-contiguous members, which come as one chunk."""
    if flats is not None:
        torch._foreach_copy_([f[lo:hi] for f in flats], list(rows.unbind(0)))
    else:  # non-contiguous members come as one chunk: whole tensors
        for t, row in zip(targets, rows.unbind(0)):
            t.copy_(row.view(t.shape))


def _gather(targets: list[torch.Tensor], flats: list[torch.Tensor] | None, lo: int, hi: int,
            out: torch.Tensor) -> torch.Tensor:
    """Columns ``lo:hi`` of every member as rows of ``out`` (n, hi - lo), in ``out``'s dtype."""
    if flats is None:  # non-contiguous members come as one chunk: whole tensors
        for t, row in zip(targets, out.unbind(0)):
            row.view(t.shape).copy_(t)
        return out
    views = [f[lo:hi] for f in flats]
    if views[0].dtype == out.dtype:
        return torch.stack(views, out=out)
    torch._foreach_copy_(list(out.unbind(0)), views)
    return out


def mix_gradients(program: BandProgram, grads: list[torch.Tensor], ws: Workspace | None = None) -> None:
    """In place: ``g_l <- sum_j A[l, j] g_j`` for the group's gradients (``ws``: from
    `workspace`, allocated here when None)."""
    flats, chunks = _layout(grads)
    ws = ws if ws is not None else workspace([grads])
    G, T, _ = ws.blocks(len(grads), chunks[0][1] - chunks[0][0], grads[0])
    for lo, hi in chunks:
        k = hi - lo
        X = _gather(grads, flats, lo, hi, G[:, :k])  # (n, c)
        _write(grads, flats, _apply(program, X, T[:, :k]), lo, hi)


def mix_updates(program: BandProgram, params: list[torch.Tensor], before: torch.Tensor, decay: torch.Tensor | None,
                ws: Workspace | None = None) -> None:
    """In place: ``p_l <- p_l + sum_j (A - I)[l, j] delta_j`` with ``delta_j = p_j - decay_j * before_j``.

    ``params`` hold the base optimizer's result ``decay * theta + delta``; ``before`` is the
    (n, numel) snapshot of theta taken before the base step; ``program`` is the band of
    ``A - I``; ``decay`` is an (n, 1) tensor of ``compute_dtype`` on the members' device, or
    None where every factor is 1; ``ws`` comes from `workspace` (allocated here when
    None). The result is ``decay * theta + sum_j A[l, j] delta_j``: decoupled decay per
    layer, the rest of the step mixed along depth.
    """
    flats, chunks = _layout(params)
    ws = ws if ws is not None else workspace([params])
    P, X, T = ws.blocks(len(params), chunks[0][1] - chunks[0][0], params[0])
    for lo, hi in chunks:
        k = hi - lo
        Pk = _gather(params, flats, lo, hi, P[:, :k])  # (n, c)
        S = before[:, lo:hi]  # (n, c)
        Xk = X[:, :k]
        if S.dtype != Pk.dtype:
            S = Xk.copy_(S)  # widened in place: no temporary
        if decay is None:
            torch.sub(Pk, S, out=Xk)  # delta
        else:
            torch.addcmul(Pk, S, decay, value=-1.0, out=Xk)  # delta
        _write(params, flats, _apply(program, Xk, T[:, :k], base=Pk), lo, hi)


def _layout(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor] | None, list[tuple[int, int]]]:
    """Flat views of the members and their column chunks; None and one whole chunk when not
    every member is contiguous (those are gathered and written whole)."""
    numel = tensors[0].numel()
    if not all(t.is_contiguous() for t in tensors):
        return None, [(0, numel)]
    return [t.view(-1) for t in tensors], chunk_columns(len(tensors), numel, tensors[0].device)
