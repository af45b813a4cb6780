"""A wrapped optimizer step against the same base step, GPT-2-small block shapes plus an embedding."""

from __future__ import annotations

import numpy as np

from .common import (gpt2_shapes, require, side_by_side, skip_slow_on_cpu, synchronizer, torch_device,
                     torch_dtype)

OPTIMIZERS = ["adamw-fused", "muon+adamw"]
MODES = ["update", "gradient"]


class TorchStep:
    """The default kernels (``fused=None``: ``dispatch.select`` chooses, compiled in setup); the
    eager kernels (``"eager"``, ``fused=False``) are tracked per group in ``bench_kernels``."""

    params = (OPTIMIZERS, MODES, ["default"])
    param_names = ["optimizer", "mode", "kernels"]
    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self, optimizer, mode, kernels):
        require("torch")
        skip_slow_on_cpu(optimizer, torch_device() == "cpu")
        self.base, self.wrapped = torch_pair(optimizer, mode, fused=None if kernels == "default" else False)
        self.base.step()  # optimizer state, the wrapper's buffers and its kernels exist before timing
        self.wrapped.step()

    def time_wrapped_step(self, optimizer, mode, kernels):
        self.wrapped.step()

    def track_overhead_ratio(self, optimizer, mode, kernels):
        """wrapped step / base step, measured side by side."""
        t_base, t_wrapped = side_by_side(self.base.step, self.wrapped.step, repeats=3, warmup=1)
        return t_wrapped / t_base

    track_overhead_ratio.unit = "ratio"



class NativeStep:
    """``SmoothedAdamW`` against torch's fused AdamW on the same shapes."""

    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self):
        require("torch")
        self.base, self.native = native_pair()

    def time_native_step(self):
        self.native.step()

    def track_ratio_to_fused_adamw(self):
        """SmoothedAdamW step / fused AdamW step, side by side."""
        t_base, t_native = side_by_side(self.base.step, self.native.step, repeats=3, warmup=1)
        return t_native / t_base

    track_ratio_to_fused_adamw.unit = "ratio"


class MLXStep:
    params = (["adamw"], MODES)
    param_names = ["optimizer", "mode"]
    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self, optimizer, mode):
        require("mlx")
        import mlx.core as mx

        skip_slow_on_cpu(optimizer, mx.default_device() == mx.cpu)
        self.base, self.wrapped = mlx_pair(optimizer, mode)
        self.base()  # compiled and warm before timing
        self.wrapped()

    def time_wrapped_step(self, optimizer, mode):
        self.wrapped()

    def track_overhead_ratio(self, optimizer, mode):
        """compiled wrapped step / compiled base step, measured side by side."""
        t_base, t_wrapped = side_by_side(self.base, self.wrapped, repeats=3, warmup=2)
        return t_wrapped / t_base

    track_overhead_ratio.unit = "ratio"


class Stepper:
    """A parameter set with fixed gradients and an optimizer: ``step()`` runs one step and
    waits for the device (CUDA runs asynchronously)."""

    def __init__(self, params, opt):
        self.params, self.opt = params, opt
        self._sync = synchronizer(next(iter(params.values())).device)

    def step(self):
        self.opt.step()
        self._sync()


def torch_params(shapes=None, seed=0, device=None):
    import torch

    shapes = shapes or gpt2_shapes()
    device = device or torch_device()
    dtype = torch_dtype()
    gen = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in shapes.items():
        p = torch.nn.Parameter((torch.randn(shape, generator=gen) * 0.02).to(device, dtype))
        p.grad = (torch.randn(shape, generator=gen) * 1e-3).to(device, dtype)
        params[name] = p
    return params


def torch_base(optimizer, params):
    import torch

    if optimizer == "sgd-momentum":
        return torch.optim.SGD(params.values(), lr=1e-3, momentum=0.9)
    if optimizer.startswith("adamw"):
        fused = optimizer == "adamw-fused"
        return torch.optim.AdamW(params.values(), lr=1e-4, weight_decay=0.1, fused=fused, foreach=not fused)
    mats = [p for n, p in params.items() if n.startswith("h.") and p.ndim == 2]
    rest = [p for n, p in params.items() if not (n.startswith("h.") and p.ndim == 2)]
    return [torch.optim.Muon(mats, lr=0.02), torch.optim.AdamW(rest, lr=1e-4, fused=True)]


def torch_pair(optimizer, mode, shapes=None, **smoothing):
    from gradsmooth.backends.torch import GradientSmoothing
    from gradsmooth.experiments.torch_models import Both

    base_params, wrapped_params = torch_params(shapes), torch_params(shapes)
    base = torch_base(optimizer, base_params)
    base = Both(base) if isinstance(base, list) else base
    wrapped = GradientSmoothing(torch_base(optimizer, wrapped_params), list(wrapped_params.items()), mode=mode, **smoothing)
    return Stepper(base_params, base), Stepper(wrapped_params, wrapped)


def native_pair(shapes=None):
    """Fused AdamW and SmoothedAdamW on the same shapes, one step taken (state made, kernels compiled)."""
    from gradsmooth.backends.torch import SmoothedAdamW

    base_params, native_params = torch_params(shapes), torch_params(shapes)
    base = Stepper(base_params, torch_base("adamw-fused", base_params))
    native = Stepper(native_params, SmoothedAdamW(list(native_params.items()), lr=1e-4, weight_decay=0.1))
    base.step()
    native.step()
    return base, native


def mlx_pair(optimizer, mode, shapes=None):
    """Compiled base and wrapped steps (fixed gradients), each evaluating its state."""
    from functools import partial

    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx.utils import tree_unflatten

    from gradsmooth.backends.mlx import GradientSmoothing

    shapes = shapes or gpt2_shapes()
    rng = np.random.default_rng(0)
    init = [(k, (rng.standard_normal(s, dtype=np.float32) * 0.02)) for k, s in shapes.items()]
    grads = tree_unflatten([(k, mx.array(rng.standard_normal(s, dtype=np.float32) * 1e-3)) for k, s in shapes.items()])

    def make(wrap):
        if optimizer == "adamw":
            opt = optim.AdamW(learning_rate=1e-4, weight_decay=0.1)
        else:
            opt = optim.MultiOptimizer([optim.Muon(learning_rate=0.02), optim.AdamW(learning_rate=1e-4)],
                                       [lambda name, g: name.startswith("h.") and g.ndim == 2])
        opt = GradientSmoothing(opt, mode=mode) if wrap else opt
        holder = {"params": tree_unflatten([(k, mx.array(v)) for k, v in init])}
        opt.init(holder["params"])
        state = [holder, opt.state]

        @partial(mx.compile, inputs=state, outputs=state)
        def step():
            holder["params"] = opt.apply_gradients(grads, holder["params"])

        def run():
            step()
            mx.eval(state)

        return run

    return make(False), make(True)
