"""The kernel table: every registered torch kernel on every kind it serves, one group's call timed
side by side with the eager kernel's on the same members and with torch's fused AdamW step on
them, on this machine. It is the measurement behind keeping (or removing) a kernel: a compiled
kernel stays where it beats the eager one by more than 10 % on some device users train on
(docs/architecture.md has the table, benchmarks/README.md the runs).

    python -m benchmarks.kernels                  # GPT-2-small's 12 MLP matrices, float32
    python -m benchmarks.kernels --dtype bfloat16 --repeats 15
"""

from __future__ import annotations

import argparse
import statistics
import sys

from .bench_kernels import KINDS, SHAPES, group
from .common import parse_counts, side_by_side, synchronizer, torch_device


def _bound(kernel, kind: str, shape: str, dtype):
    """A fresh group of ``kind`` on ``shape`` (``dtype``) and ``kernel``'s call over it, bound."""
    members, band, coefficients = group(kind, shape)
    members = members._replace(arrays=[[t.to(dtype) for t in ts] for ts in members.arrays])
    first = members.first
    kernel.prepare(kind, band, first.dtype, first.device)
    call = kernel.bind(members, band, coefficients, kernel.scratch(members, band))
    sync = synchronizer(torch_device())
    return lambda: (call(), sync())


def _adamw(shape: str, dtype):
    import torch

    members, _, _ = group("adamw", shape)
    params = [torch.nn.Parameter(t.to(dtype)) for t in members.arrays[0]]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    opt.step()
    sync = synchronizer(torch_device())
    return lambda: (opt.step(), sync())


def rows(shape: str, dtype_name: str, repeats: int) -> list[dict]:
    """Per kind and registered kernel that serves it here: median ms of its call, its ratio to the
    eager kernel's call and to fused AdamW's step, each measured side by side."""
    import torch

    from gradsmooth.backends.torch import dispatch

    dtype = getattr(torch, dtype_name)
    device = torch.device(torch_device())
    n, size = SHAPES[shape]
    numel = int(torch.tensor(size).prod())
    out = []
    for kind in KINDS:
        eager = _bound(dispatch.EAGER, kind, shape, dtype)
        adamw = _adamw(shape, dtype)
        for kernel, kinds in dispatch.KERNELS:
            if kind not in kinds or kernel.refuses(kind, dtype, device, numel, True) is not None:
                continue
            call = _bound(kernel, kind, shape, dtype)
            call()
            times = [side_by_side(call, eager, repeats=1, warmup=1) for _ in range(repeats)]
            floors = [side_by_side(call, adamw, repeats=1, warmup=0) for _ in range(repeats)]
            ms = statistics.median(t for t, _ in times) * 1e3
            out.append({"kind": kind, "kernel": kernel.name, "ms": ms,
                        "vs_eager": statistics.median(t / e for t, e in times),
                        "vs_adamw": statistics.median(t / a for t, a in floors)})
    return out


def table(found: list[dict], shape: str, dtype_name: str) -> str:
    n, size = SHAPES[shape]
    head = (f"{n} members of {size[0]} x {size[1]} ({shape}), {dtype_name}, {torch_device()}; medians of alternating "
            "calls\n\n| kind | kernel | ms per group call | / eager kernel | / fused AdamW step |\n|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['kind']} | {r['kernel']} | {r['ms']:.1f} | {r['vs_eager']:.2f} | {r['vs_adamw']:.2f} |"
                            for r in found)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="gpt2-small-mlp")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=7, help="alternating calls of each pair (default 7)")
    return parse_counts(parser, argv, ("repeats",))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print(table(rows(args.shape, args.dtype, args.repeats), args.shape, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
