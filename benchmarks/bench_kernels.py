"""Every registered torch kernel (``dispatch.KERNELS``) on every kind it serves: one group's call,
bound as a step binds it, on the shapes that matter (GPT-2-small's MLP matrices, and GPT-2-medium
width's), as a ratio to torch's fused AdamW step on the same members measured side by side (the
floor a group's step is measured against in ``benchmarks/README.md``; one number per
combination keeps ``asv run --quick`` within minutes)."""

from __future__ import annotations

import numpy as np

from .common import require, side_by_side, synchronizer, torch_device

# members x (rows, cols): GPT-2-small's 12 MLP input matrices, and 12 of GPT-2-medium's width
SHAPES = {"gpt2-small-mlp": (12, (3072, 768)), "gpt2-medium-mlp": (12, (4096, 1024))}
KINDS = ("update", "gradient", "adamw", "sgd", "sgd-plain")


def _kernel_names() -> list[str]:
    try:
        from gradsmooth.backends.torch.dispatch import KERNELS
    except ImportError:
        return ["eager"]
    return [k.name for k, _ in KERNELS]


def group(kind: str, shape: str, seed: int = 0):
    """The members of one group of ``kind`` (its arrays, float32, on the benchmark device), its
    band (window 3) and coefficients, as a step makes them."""
    import torch

    from gradsmooth import WindowSmoothing
    from gradsmooth.backends.torch.arithmetic import KINDS as SPECS
    from gradsmooth.backends.torch.bands import layout
    from gradsmooth.backends.torch.coefficients import adamw_coefficients, coefficient_table, sgd_coefficients
    from gradsmooth.backends.torch.contract import Members

    n, size = SHAPES[shape]
    device, gen = torch_device(), torch.Generator().manual_seed(seed)
    base = (torch.randn(size, generator=gen) * 0.02).to(device)  # drawn once: copies are cheap, draws are not
    arrays = [[base.mul(1 + 0.01 * j + 0.1 * k) for j in range(n)] for k in range(len(SPECS[kind].arrays))]
    if kind == "adamw":
        arrays[3] = [t.abs_() for t in arrays[3]]
    band = layout(WindowSmoothing(3).band(n), minus_identity=kind == "update")
    like = arrays[0][0]
    if kind == "adamw":
        groups = [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}] * n
        coefficients = coefficient_table(adamw_coefficients(groups, [2.0] * n), like).view(-1)
    elif kind in ("sgd", "sgd-plain"):
        groups = [{"lr": 1e-3, "momentum": 0.9 if kind == "sgd" else 0.0, "dampening": 0.0, "nesterov": False,
                   "weight_decay": 0.0}] * n
        coefficients = coefficient_table(sgd_coefficients(groups, [False] * n), like).view(-1)
    elif kind == "update":
        coefficients = torch.full((n,), 0.9999, device=like.device)
    else:
        coefficients = None
    return Members(kind, arrays), band, coefficients


class Kernels:
    """One group's call per registered kernel and kind (skipped where the kernel refuses it)."""

    params = (_kernel_names(), KINDS, list(SHAPES))
    param_names = ["kernel", "kind", "shape"]
    timeout = 300
    number, repeat, warmup_time = 1, (1, 5, 10.0), 0  # each sample one call: a full run stays within minutes

    def setup(self, kernel, kind, shape):
        require("torch")
        import torch

        from gradsmooth.backends.torch import dispatch

        found = {k.name: (k, kinds) for k, kinds in dispatch.KERNELS}
        made, kinds = found[kernel]
        if kind not in kinds:
            raise NotImplementedError(f"{kernel} does not serve {kind}")
        if kernel == "eager" and shape != "gpt2-small-mlp":
            raise NotImplementedError("the eager kernel, the reference, is tracked at gpt2-small-mlp")
        members, band, coefficients = group(kind, shape)
        first = members.first
        reason = made.refuses(kind, first.dtype, first.device, first.numel(), True)
        if reason is not None:
            raise NotImplementedError(reason)
        made.prepare(kind, band, first.dtype, first.device)
        call = made.bind(members, band, coefficients, made.scratch(members, band))
        sync = synchronizer(torch_device())
        self.run = lambda: (call(), sync())
        params = [t for t in members.arrays[0]]
        grads = [t.mul(0.05) for t in params]
        self.adamw = torch.optim.AdamW([torch.nn.Parameter(t.clone()) for t in params], lr=1e-4, fused=True)
        for p, g in zip(self.adamw.param_groups[0]["params"], grads):
            p.grad = g
        self.adamw.step()
        self.floor = lambda: (self.adamw.step(), sync())
        self.run()  # first-call costs are not the kernel's

    def track_ratio_to_fused_adamw(self, kernel, kind, shape):
        """The group's call / torch's fused AdamW step on the same members, side by side."""
        t_kernel, t_adamw = side_by_side(self.run, self.floor, repeats=3, warmup=1)
        return t_kernel / t_adamw

    track_ratio_to_fused_adamw.unit = "ratio"


def elements(shape: str) -> int:
    """Elements of one group's parameters."""
    n, size = SHAPES[shape]
    return n * int(np.prod(size))
