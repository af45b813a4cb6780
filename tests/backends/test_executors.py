"""Every executor applies the core's plan exactly as the core's own ``smooth()`` does.

The core plans (groups, and the band of ``(1 - alpha) I + alpha A`` at a step, from
``DepthOperator.band_at``); the adapters only execute it with their framework's kernels: every
torch kernel registered in ``dispatch.KERNELS`` that serves the wrapper's kinds, called through
the kernel contract (``contract.py``), and the MLX executor (``mix_group``). Each is run on the
same members as ``smooth()`` and must agree with it.
"""

import numpy as np
import pytest

from gradsmooth import MatrixOperator, WindowSmoothing, find_blocks, smooth

N, SHAPE = 7, (5, 3)


def _matrix(n):
    m = np.eye(n) * 0.5 + np.eye(n, k=1) * 0.3 + np.eye(n, k=-2) * 0.2
    m[0] = 0.0  # a member that becomes zero
    return m


OPERATORS = {
    "window3": WindowSmoothing(3),
    "triangular5-mirror-alpha": WindowSmoothing(5, "triangular", "mirror", alpha=0.7),
    "augmenting": WindowSmoothing(3, kernel=[0.25, 1.0, 0.25], normalize=False, boundary="zero"),
    "matrix": MatrixOperator(_matrix),
    "schedule": WindowSmoothing(3, alpha=lambda t: min(1.0, 0.25 * t)),
}
STEP = 2  # the schedule's alpha is 0.5 here


def members_and_expected(op, seed=0):
    rng = np.random.default_rng(seed)
    updates = {f"layers.{i}.w": rng.standard_normal(SHAPE) for i in range(N)}
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    expected = smooth(updates, plan, op, step=STEP)
    names = plan.groups[0].names
    return [updates[n] for n in names], [expected[n] for n in names], op.band(N, STEP)


def torch_kernels() -> list[tuple[str, str]]:
    """(kernel name, kind) for every registered torch kernel and the wrapper's kinds it serves."""
    try:
        from gradsmooth.backends.torch import dispatch
    except ImportError:
        return [("eager", "gradient"), ("eager", "update")]  # skipped below: the ids only
    return [(k.name, kind) for k, kinds in dispatch.KERNELS for kind in ("gradient", "update") if kind in kinds]


@pytest.mark.parametrize("kernel_name, kind", torch_kernels())
@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_torch_kernels_execute_the_core_plan(name, kernel_name, kind):
    torch = pytest.importorskip("torch")
    from gradsmooth.backends.torch import dispatch
    from gradsmooth.backends.torch.bands import layout
    from gradsmooth.backends.torch.contract import Members

    kernel = next(k for k, _ in dispatch.KERNELS if k.name == kernel_name)
    members, expected, band = members_and_expected(OPERATORS[name])
    tensors = [torch.tensor(m) for m in members]
    if kind == "gradient":
        group, coefficients = Members("gradient", [tensors]), None
    else:  # from a zero snapshot and no decay: p + (A - I)(p - 0) = A p
        zeros = list(torch.zeros(N, SHAPE[0] * SHAPE[1], dtype=torch.float64).unbind(0))
        group, coefficients = Members("update", [tensors, zeros]), torch.ones(N, dtype=torch.float64)
    bands = layout(band, minus_identity=kind == "update")
    kernel.prepare(kind, bands, torch.float64, torch.device("cpu"))
    kernel.bind(group, bands, coefficients, kernel.scratch(group, bands))()
    np.testing.assert_allclose(np.stack([t.numpy() for t in tensors]), np.stack(expected), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_mlx_executor_executes_the_core_plan(name):
    mx = pytest.importorskip("mlx.core")
    from gradsmooth.backends.mlx.optimizer import mix_group

    members, expected, band = members_and_expected(OPERATORS[name])
    names = [str(i) for i in range(N)]
    got = mix_group(names, [mx.array(m, dtype=mx.float64) for m in members], band)
    np.testing.assert_allclose(np.stack([np.array(got[n]) for n in names]), np.stack(expected), rtol=1e-13,
                               atol=1e-14)


def test_an_array_valued_alpha_gives_the_same_band_as_the_number():
    # an MLX schedule's value is an array (traced under mx.compile): band_at turns it into array
    # weights by the same formula as the number's band
    mx = pytest.importorskip("mlx.core")
    from gradsmooth.backends.mlx.optimizer import mix_group

    op = WindowSmoothing(3, alpha=lambda t: mx.array(0.5, dtype=mx.float64))
    members, expected, _ = members_and_expected(WindowSmoothing(3, alpha=0.5))
    band = op.band_at(N, mx.array(0.5, dtype=mx.float64))
    names = [str(i) for i in range(N)]
    got = mix_group(names, [mx.array(m, dtype=mx.float64) for m in members], band)
    np.testing.assert_allclose(np.stack([np.array(got[n]) for n in names]), np.stack(expected), rtol=1e-13,
                               atol=1e-14)
