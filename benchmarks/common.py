"""Shared pieces of the benchmarks: model shapes, backends, side-by-side timing."""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import numpy as np

BACKENDS = ("numpy-core", "numpy-reference", "mlx")  # the core's smooth (torch's kernels: bench_kernels)


def available(backend: str) -> bool:
    module = {"torch": "torch", "mlx": "mlx"}.get(backend, "numpy")
    return importlib.util.find_spec(module) is not None


def require(backend: str) -> None:
    """asv skips a parameter combination whose setup raises NotImplementedError."""
    if not available(backend):
        raise NotImplementedError(f"{backend} is not installed")


def torch_device() -> str:
    """Where the torch benchmarks run: the GPU when there is one."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype():
    """The torch benchmarks' parameter dtype: ``GRADSMOOTH_BENCH_DTYPE`` (default float32), so
    that asv and the overhead report (``--dtype``) can run them in bfloat16."""
    import torch

    name = os.environ.get("GRADSMOOTH_BENCH_DTYPE", "float32")
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"GRADSMOOTH_BENCH_DTYPE should name a torch floating dtype but is: {name!r}")
    return dtype


def synchronizer(device):
    """A callable that waits for ``device``'s queued work (nothing to wait for on a CPU)."""
    import torch

    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def skip_slow_on_cpu(optimizer: str, on_cpu: bool) -> None:
    """Muon's Newton–Schulz iteration takes minutes per GPT-2-size step on a CPU (benchmarks/README.md):
    asv skips those combinations there unless
    ``GRADSMOOTH_BENCH_CPU_MUON=1``."""
    if on_cpu and optimizer.startswith("muon") and os.environ.get("GRADSMOOTH_BENCH_CPU_MUON") != "1":
        raise NotImplementedError("Muon takes minutes per step on a CPU: set GRADSMOOTH_BENCH_CPU_MUON=1 to run it")


def gpt2_shapes(blocks: int = 12, d: int = 768, vocab: int = 50257) -> dict[str, tuple[int, ...]]:
    """GPT-2-small block shapes (qkv, attention projection, MLP in/out with biases, two norms)
    plus the token embedding."""
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab, d)}
    for i in range(blocks):
        shapes |= {
            f"h.{i}.ln_1.weight": (d,), f"h.{i}.ln_1.bias": (d,),
            f"h.{i}.attn.c_attn.weight": (3 * d, d), f"h.{i}.attn.c_attn.bias": (3 * d,),
            f"h.{i}.attn.c_proj.weight": (d, d), f"h.{i}.attn.c_proj.bias": (d,),
            f"h.{i}.ln_2.weight": (d,), f"h.{i}.ln_2.bias": (d,),
            f"h.{i}.mlp.c_fc.weight": (4 * d, d), f"h.{i}.mlp.c_fc.bias": (4 * d,),
            f"h.{i}.mlp.c_proj.weight": (d, 4 * d), f"h.{i}.mlp.c_proj.bias": (d,),
        }
    return shapes


def block_bytes(shapes: dict[str, tuple[int, ...]], itemsize: int = 4) -> int:
    return sum(int(np.prod(s)) * itemsize for k, s in shapes.items() if k.startswith("h."))


def side_by_side(a: Callable[[], object], b: Callable[[], object], repeats: int = 5, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, measured alternately in one loop (noise hits both)."""
    for _ in range(warmup):
        a()
        b()
    ta, tb = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        a()
        ta.append(time.perf_counter() - start)
        start = time.perf_counter()
        b()
        tb.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def shape_options(parser) -> None:
    """``--blocks`` and ``--dim`` of the GPT-2-small-shaped parameters (`gpt2_shapes`)."""
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)


def parse_counts(parser, argv, names: tuple[str, ...]):
    """``parser.parse_args(argv)``, with each of the options ``names`` (counts: rounds,
    repeats, sizes) refused by name and value unless it is >= 1."""
    args = parser.parse_args(argv)
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} should be >= 1 but is: {getattr(args, name)}")
    return args
