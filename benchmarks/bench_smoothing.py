"""The smoothing operator alone, on each backend, against the memory-bandwidth floor."""

from __future__ import annotations

import numpy as np

from gradsmooth import WindowSmoothing, find_blocks, smooth

from .common import BACKENDS, require, side_by_side, synchronizer, torch_device

MAX_ELEMENTS = 2 * 10**8  # n * elements above this would not fit the 24 GiB machines twice over


class Smoothing:
    """``smooth`` of a stack of n members of ``elements`` float32 each."""

    params = (BACKENDS, [6, 12, 24, 48], [10**5, 10**6, 10**7], [3, 5, 9], ["renormalize", "mirror"])
    param_names = ["backend", "n", "elements", "window", "boundary"]
    timeout = 600

    def setup(self, backend, n, elements, window, boundary):
        require(backend)
        if n * elements > MAX_ELEMENTS:
            raise NotImplementedError("too large for this machine")
        if backend == "numpy-reference" and n * elements > 2 * 10**7:
            raise NotImplementedError("the reference is the readable oracle, not timed at this size")
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
    if backend == "torch":
        from gradsmooth.backends.torch.mixing import band_program, mix_gradients

        members, sync = _torch_members(stack)
        program = band_program(op.band(n))
        return lambda: (mix_gradients(program, members), sync())
    if backend == "torch-fused":
        from gradsmooth.backends.torch.fused import band_pattern, fused_kernel
        from gradsmooth.backends.torch.mixing import device_weights

        members, sync = _torch_members(stack)
        pattern, values = band_pattern(op.band(n))
        kernel = fused_kernel(pattern, "gradient")
        kernel.prepare(members[0].dtype, members[0].device)
        weights = device_weights(values, members[0].dtype, members[0].device).view(-1)
        return lambda: (kernel(members, weights), sync())
    import mlx.core as mx

    members = [mx.array(row) for row in stack]
    mx.eval(members)

    def run():
        mx.eval(_mlx_smooth(members, op))

    return run


def _torch_members(stack):
    """The stack's rows as separate torch tensors on the benchmark device, and its synchronizer."""
    import torch

    device = torch_device()
    return [torch.from_numpy(row.copy()).to(device) for row in stack], synchronizer(device)


def _mlx_smooth(members, op):
    from gradsmooth.smoothing import weighted_sum

    return [weighted_sum(members, row) for row in op.band(len(members)).rows]


def _axpy(backend, stack):
    """``y <- y + a x`` over every member: one read of two arrays and one write."""
    if backend.startswith("torch"):
        import torch

        (ys, sync), (xs, _) = _torch_members(stack), _torch_members(stack)
        return lambda: (torch._foreach_add_(ys, xs, alpha=1e-3), sync())
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
