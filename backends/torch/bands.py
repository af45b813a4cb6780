"""A band as every kernel reads it: the one encoding of the core's [`Band`][gradsmooth.Band] on the
torch side.

Row ``l`` reads the members ``pattern[l]`` (in increasing order) with the weights ``values``, flat
row by row. The compiled kernels take ``pattern`` as constants of their source and ``values``
as a tensor; the eager kernels walk the same entries as diagonals (`BandLayout.diagonals`).
In the wrapper's update mode the band is that of ``A - I`` (`layout` with
``minus_identity``): the diagonal stays in the pattern, so each row also reads its own member.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

from gradsmooth import Band

from .arithmetic import Pattern

__all__ = ["BandLayout", "layout"]


@dataclass(frozen=True)
class BandLayout:
    """``pattern``: the members each row reads; ``values``: their weights, flat row by row."""

    pattern: Pattern
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """Rows (= members)."""
        return len(self.pattern)

    @cached_property
    def diagonals(self) -> tuple[tuple[int, int, int, tuple[float, ...]], ...]:
        """The band as ``(offset, lo, hi, weights)`` diagonals, the main one first, zero runs
        trimmed: rows ``lo:hi`` gain ``weights[r] * X[r + offset]`` (the eager kernels' form)."""
        dense = [[0.0] * self.n for _ in range(self.n)]
        k = 0
        for l, js in enumerate(self.pattern):
            for j in js:
                dense[l][j] = self.values[k]
                k += 1
        offsets = sorted({j - l for l, js in enumerate(self.pattern) for j in js}, key=lambda o: (abs(o), o))
        out = []
        for o in offsets:
            rows = [l for l in range(max(0, -o), min(self.n, self.n - o)) if dense[l][l + o] != 0.0]
            if rows:
                lo, hi = rows[0], rows[-1] + 1
                out.append((o, lo, hi, tuple(dense[l][l + o] for l in range(lo, hi))))
        return tuple(out)


@lru_cache(maxsize=512)
def layout(band: Band, minus_identity: bool = False) -> BandLayout:
    """``band`` (of A), or the band of ``A - I`` with the diagonal kept, as a `BandLayout`."""
    pattern, values = [], []
    for l, row in enumerate(band.rows):
        entries = dict(row)
        if minus_identity:
            entries[l] = entries.get(l, 0.0) - 1.0
        js = tuple(sorted(entries))
        pattern.append(js)
        values.extend(entries[j] for j in js)
    return BandLayout(tuple(pattern), tuple(values))
