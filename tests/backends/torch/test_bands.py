"""The one band encoding the torch kernels read (backends/torch/bands.py)."""

import numpy as np
import pytest

from gradsmooth import MatrixOperator, WindowSmoothing
from gradsmooth.backends.torch.bands import layout


def _dense(bands):
    out, k = np.zeros((bands.n, bands.n)), 0
    for l, js in enumerate(bands.pattern):
        for j in js:
            out[l, j] = bands.values[k]
            k += 1
    return out


@pytest.mark.parametrize("op", [WindowSmoothing(3), WindowSmoothing(5, "triangular", "mirror", alpha=0.5),
                                MatrixOperator(np.eye(5)[::-1] * 0.5 + np.eye(5) * 0.5)])
@pytest.mark.parametrize("minus_identity", [False, True])
def test_the_layout_and_its_diagonals_are_the_band(op, minus_identity):
    band = op.band(5)
    bands = layout(band, minus_identity)
    expected = np.array(band.dense()) - (np.eye(5) if minus_identity else 0)
    np.testing.assert_array_equal(_dense(bands), expected)
    from_diagonals = np.zeros((5, 5))
    for o, lo, hi, weights in bands.diagonals:
        for r, w in zip(range(lo, hi), weights):
            from_diagonals[r, r + o] = w
    np.testing.assert_array_equal(from_diagonals, expected)
    assert bands.diagonals[0][0] == 0 or 0 not in [d[0] for d in bands.diagonals]  # the main diagonal first


def test_minus_identity_keeps_each_rows_own_member_and_layouts_are_cached():
    band = WindowSmoothing(3, alpha=0.0).band(4)  # the identity: A - I is zero, the pattern keeps the diagonal
    bands = layout(band, minus_identity=True)
    assert bands.pattern == ((0,), (1,), (2,), (3,)) and bands.values == (0.0,) * 4 and bands.diagonals == ()
    assert layout(band, minus_identity=True) is bands
