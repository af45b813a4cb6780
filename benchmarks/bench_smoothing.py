"""The core's ``smooth`` alone (NumPy, the NumPy reference, MLX), against the memory-bandwidth
floor, on GPT-2-small's stack of 12 blocks (torch's kernels: ``bench_kernels``)."""

from __future__ import annotations

import numpy as np

from gradsmooth import WindowSmoothing, find_blocks, smooth

from .common import BACKENDS, require, side_by_side


class Smoothing:
    """``smooth`` of a stack of n members of ``elements`` float32 each (12 x 768 x 768: a
    GPT-2-small attention projection per block)."""

    params = (BACKENDS, [12], [768 * 768], [3, 5], ["renormalize"])
    param_names = ["backend", "n", "elements", "window", "boundary"]
    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self, backend, n, elements, window, boundary):
        require(backend)
        rng = np.random.default_rng(0)
        stack = rng.standard_normal((n, elements), dtype=np.float32)
        self.op = WindowSmoothing(window, boundary=boundary)
        self.run = _runner(backend, stack, self.op, window, boundary)
        self.floor = _axpy(backend, stack)
        self.run()  # first-call costs (namespace look-ups, caches) are not the operator's

    def time_smooth(self, *args):
        self.run()

    def track_ratio_to_axpy_floor(self, *args):
        """smoothing time / the time of one in-place axpy over the same members."""
        t_smooth, t_floor = side_by_side(self.run, self.floor, repeats=3, warmup=1)
        return t_smooth / t_floor

    track_ratio_to_axpy_floor.unit = "ratio"


def _runner(backend, stack, op, window, boundary):
    n = stack.shape[0]
    names = [f"h.{i}.w" for i in range(n)]
    plan = find_blocks({name: stack.shape[1:] for name in names})
    if backend == "numpy-reference":
        from gradsmooth.reference import window_smooth

        return lambda: window_smooth(stack, window, boundary=boundary)
    if backend == "numpy-core":
        updates = dict(zip(names, list(stack)))
        return lambda: smooth(updates, plan, op)
    import mlx.core as mx

    members = [mx.array(row) for row in stack]
    mx.eval(members)

    def run():
        mx.eval(_mlx_smooth(members, op))

    return run


def _mlx_smooth(members, op):
    from gradsmooth.smoothing import weighted_sum

    return [weighted_sum(members, row) for row in op.band(len(members)).rows]


def _axpy(backend, stack):
    """``y <- y + a x`` over every member: one read of two arrays and one write."""
    if backend == "mlx":
        import mlx.core as mx

        ys = [mx.array(row) for row in stack]
        xs = [mx.array(row) for row in stack]
        mx.eval(ys, xs)
        return lambda: mx.eval([y + 1e-3 * x for y, x in zip(ys, xs)])
    ys = [row.copy() for row in stack]
    xs = [row.copy() for row in stack]

    def numpy_axpy():  # the same bytes as an axpy, without NumPy's temporary for a * x
        for y, x in zip(ys, xs):
            np.add(y, x, out=y)

    return numpy_axpy
