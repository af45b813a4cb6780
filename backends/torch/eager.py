"""The eager kernels: every kind in torch operations, the readable reference the compiled
kernels are held to (``contract.py`` has what every kernel guarantees; ``arithmetic.py`` the
formulas the compiled ones are generated from).

A group's n members are separate tensors. Work goes over the elements in column chunks: each
chunk of the members' arrays is gathered into small ``(n, c)`` blocks that stay in cache, the
kind's arithmetic runs on the blocks, the band is applied as shifted multiply-adds over them
(its diagonals), and the rows are written back. Memory traffic is one read of each input and
one write of each output per step, whatever the window, and no dense n x n product is formed.
Low-precision members (bf16, fp16) are computed in float32 and rounded once on write-back.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from .bands import BandLayout
from .contract import Call, Members

__all__ = ["EAGER", "EagerKernel", "compute_dtype", "device_weights", "scratch"]

# elements of one gathered (n, c) block: cache-sized on a CPU, larger on a GPU
_BLOCK_ELEMENTS = {"cpu": 1 << 19}
_BLOCK_ELEMENTS_DEFAULT = 1 << 24

# (n, c) blocks each kind's arithmetic needs
_BLOCKS = {"update": 3, "gradient": 2, "adamw": 5, "sgd": 4, "sgd-plain": 4}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype members of ``dtype`` are computed in: float32 for bf16 and fp16, else their own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


_WEIGHTS: dict[tuple, Tensor] = {}


def device_weights(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """``values`` as a cached (rows, 1) tensor on ``device`` (a band's weights change only with alpha)."""
    key = (values, dtype, device)
    w = _WEIGHTS.get(key)
    if w is None:
        if len(_WEIGHTS) > 4096:
            _WEIGHTS.clear()
        w = _WEIGHTS[key] = torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)  # (rows, 1)
    return w


_SCRATCH: dict[tuple[str, torch.dtype, int], Tensor] = {}


def scratch(name: str, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``size`` values of scratch on ``device``. On a CPU one buffer per ``name``, dtype and
    Python thread, kept and reused by every group and step (a step runs its groups one after
    another), grown to the largest size asked: a buffer allocated anew at each step is memory
    the allocator hands back to the system and faults in again, page by page. Elsewhere a new
    buffer (CUDA's caching allocator already reuses its memory)."""
    if device.type != "cpu":
        return torch.empty(size, dtype=dtype, device=device)
    key = (name, dtype, threading.get_ident())
    buffer = _SCRATCH.get(key)
    if buffer is None or buffer.numel() < size:
        buffer = _SCRATCH[key] = torch.empty(size, dtype=dtype)
    return buffer[:size]


def _chunks(arrays: list[list[Tensor]]) -> tuple[list[list[Tensor] | None], list[tuple[int, int]]]:
    """The flat views of each array's members and the column chunks the kernels walk: cache-sized
    chunks where every array is contiguous, else one chunk of the whole members (gathered and
    written tensor by tensor, flats None)."""
    numel, n = arrays[0][0].numel(), len(arrays[0])
    if not all(t.is_contiguous() for ts in arrays for t in ts):
        return [None] * len(arrays), [(0, numel)]
    budget = _BLOCK_ELEMENTS.get(arrays[0][0].device.type, _BLOCK_ELEMENTS_DEFAULT)
    c = max(1, min(numel, budget // max(n, 1)))
    return [[t.view(-1) for t in ts] for ts in arrays], [(lo, min(lo + c, numel)) for lo in range(0, numel, c)]


def _gather(targets: list[Tensor], flats: list[Tensor] | None, lo: int, hi: int, out: Tensor) -> Tensor:
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


def _write(targets: list[Tensor], flats: list[Tensor] | None, rows: Tensor, lo: int, hi: int) -> None:
    """Copy ``rows[l]`` into ``targets[l]`` at columns ``lo:hi`` (rounding once to their dtype)."""
    if flats is not None:
        torch._foreach_copy_([f[lo:hi] for f in flats], list(rows.unbind(0)))
    else:  # non-contiguous members come as one chunk: whole tensors
        for t, row in zip(targets, rows.unbind(0)):
            t.copy_(row.view(t.shape))


def _apply(band: BandLayout, X: Tensor, out: Tensor, base: Tensor | None = None) -> Tensor:
    """``out = base + sum_o w_o * shift_o(X)`` over the band's diagonals, ``X`` (n, c) (``base``
    None: zero)."""
    (o, lo, hi, values), *rest = band.diagonals
    w = device_weights(values, X.dtype, X.device)
    if lo == 0 and hi == band.n:
        if base is None:
            torch.mul(X[lo + o : hi + o], w, out=out)
        else:
            torch.addcmul(base, X[lo + o : hi + o], w, out=out)
    else:
        out.copy_(base) if base is not None else out.zero_()
        rest = band.diagonals
    for o, lo, hi, values in rest:
        out[lo:hi].addcmul_(X[lo + o : hi + o], device_weights(values, X.dtype, X.device))
    return out


def _columns(coefficients: Tensor, n: int) -> list[Tensor]:
    """Each coefficient of a flat ``c[k * n + j]`` table as an (n, 1) column (views)."""
    return [row.unsqueeze(1) for row in coefficients.view(-1, n).unbind(0)]


# -- the kinds, each a loop over column chunks ---------------------------------------------------------


def mix_gradients(band: BandLayout, grads: list[Tensor], blocks: Tensor) -> None:
    """In place: ``g_l <- sum_j A[l, j] g_j``."""
    (flats,), chunks = _chunks([grads])
    for lo, hi in chunks:
        k = hi - lo
        G, T = (b[:, :k] for b in blocks)
        X = _gather(grads, flats, lo, hi, G)  # (n, c)
        _write(grads, flats, _apply(band, X, T), lo, hi)


def mix_updates(band: BandLayout, params: list[Tensor], snapshots: list[Tensor], decay: Tensor | None,
                blocks: Tensor) -> None:
    """In place: ``p_l <- p_l + sum_j (A - I)[l, j] delta_j`` with ``delta_j = p_j - decay_j * s_j``.

    ``params`` hold the base optimizer's result ``decay * theta + delta``; ``snapshots`` are
    theta's rows taken before the base step; ``band`` is the band of ``A - I``; ``decay`` is an
    (n, 1) column, or None where every factor is 1. The result is ``decay * theta + sum_j A[l, j]
    delta_j``: decoupled decay per layer, the rest of the step mixed along depth.
    """
    (pflats, sflats), chunks = _chunks([params, snapshots])
    for lo, hi in chunks:
        k = hi - lo
        P, X, T = (b[:, :k] for b in blocks)
        Pk = _gather(params, pflats, lo, hi, P)  # (n, c)
        S = _gather(snapshots, sflats, lo, hi, X)  # (n, c), widened to the compute dtype
        if decay is None:
            torch.sub(Pk, S, out=X)  # delta
        else:
            torch.addcmul(Pk, S, decay, value=-1.0, out=X)  # delta
        _write(params, pflats, _apply(band, X, T, base=Pk), lo, hi)


def adamw_mix(band: BandLayout, params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
              exp_avg_sqs: list[Tensor], coefficients: Tensor, blocks: Tensor) -> None:
    """In place: AdamW's moments and update for every member, mixed along depth by ``band`` (of
    A); ``coefficients``: ``coefficients.adamw_coefficients`` (``c[k * n + j]``)."""
    c1, c2, c3, c4, c5, c6, sign, c7 = _columns(coefficients, len(params))
    flats, chunks = _chunks([params, grads, exp_avgs, exp_avg_sqs])
    for lo, hi in chunks:
        k = hi - lo
        G, M, V, P, T = (b[:, :k] for b in blocks)
        _gather(grads, flats[1], lo, hi, G).mul_(sign)  # -g under maximize (exact)
        _gather(exp_avgs, flats[2], lo, hi, M)
        _gather(exp_avg_sqs, flats[3], lo, hi, V)
        torch.sub(G, M, out=T)
        M.addcmul_(T, c1)  # m + (1 - beta1)(g - m): torch's lerp
        V.mul_(c2)
        torch.mul(G, c3, out=T)
        V.addcmul_(T, G)  # beta2 v + (1 - beta2) g g
        _write(exp_avgs, flats[2], M, lo, hi)
        _write(exp_avg_sqs, flats[3], V, lo, hi)
        torch.sqrt(V, out=T)
        T.div_(c4).add_(c5)  # the denominator
        torch.div(M, T, out=T)
        T.mul_(c6)  # u
        _gather(params, flats[0], lo, hi, P)
        P.mul_(c7)  # decoupled decay, per layer
        _write(params, flats[0], _apply(band, T, G, base=P), lo, hi)


def sgd_mix(band: BandLayout, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None,
            coefficients: Tensor, blocks: Tensor) -> None:
    """In place: SGD's (momentum) update for every member, mixed along depth by ``band`` (of A);
    ``buffers``: the momentum buffers, or None where no member has momentum."""
    c1, c2, c3, c4, c5, c6, sign = _columns(coefficients, len(params))
    (pf, gf, bf), chunks = _chunks([params, grads, buffers if buffers is not None else params])
    for lo, hi in chunks:
        k = hi - lo
        P, G, B, T = (b[:, :k] for b in blocks)
        _gather(params, pf, lo, hi, P)
        _gather(grads, gf, lo, hi, G).mul_(sign)  # -g under maximize (exact)
        G.addcmul_(P, c1)  # e = g + wd p
        if buffers is not None:
            _gather(buffers, bf, lo, hi, B)
        else:
            B.zero_()
        B.mul_(c2).addcmul_(G, c3)  # b = momentum b + (1 - dampening) e (= e at the first step)
        if buffers is not None:
            _write(buffers, bf, B, lo, hi)
        torch.mul(G, c4, out=T)
        T.addcmul_(B, c5)  # the direction: a e + b b
        T.mul_(c6)  # u
        _write(params, pf, _apply(band, T, G, base=P), lo, hi)


def _run(members: Members, band: BandLayout, coefficients: Tensor | None, blocks: Tensor) -> None:
    a = members.arrays
    if members.kind == "update":
        mix_updates(band, a[0], a[1], None if coefficients is None else coefficients.view(-1, 1), blocks)
    elif members.kind == "gradient":
        mix_gradients(band, a[0], blocks)
    elif members.kind == "adamw":
        adamw_mix(band, *a, coefficients, blocks)
    else:
        sgd_mix(band, a[0], a[1], a[2] if members.kind == "sgd" else None, coefficients, blocks)


class EagerKernel:
    """The eager kernels as a ``GroupKernel``: every kind, dtype and device; never refuses."""

    name = "eager"
    refusing = False

    def refuses(self, kind: str, dtype: torch.dtype, device: torch.device, numel: int, contiguous: bool) -> str | None:
        return None

    def prepared(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> bool:
        return True

    def prepare(self, kind: str, band: BandLayout, dtype: torch.dtype, device: torch.device) -> None:
        """Put the band's weights on the device now, not inside a step."""
        for *_, values in band.diagonals:
            device_weights(values, compute_dtype(dtype), device)

    def scratch(self, members: Members, band: BandLayout) -> Tensor:
        """The (k, n, c) blocks of the kind's arithmetic, ``c`` the widest chunk it walks (a view
        of one buffer per dtype and device, kept across steps on a CPU)."""
        _, chunks = _chunks(members.arrays)
        shape = (_BLOCKS[members.kind], members.n, max(hi - lo for lo, hi in chunks))
        size = shape[0] * shape[1] * shape[2]
        return scratch("eager", size, compute_dtype(members.first.dtype), members.first.device).view(shape)

    def bind(self, members: Members, band: BandLayout, coefficients: Tensor | None, scratch: Tensor | None) -> Call:
        return lambda: _run(members, band, coefficients, scratch)


EAGER = EagerKernel()
