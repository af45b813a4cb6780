"""The overhead report: first a whole training step (forward, backward, optimizer) of a
GPT-2-small-shaped model, base against smoothed (``bench_training``); then the optimizer step
alone: base step, wrapped step (default settings, eager kernels, ``check_finite``), and
``SmoothedAdamW``, their ratio, smoothing alone, the bandwidth floor, and the extra memory, for
each backend and mode, measured side by side in one run.

    python -m benchmarks.overhead            # GPT-2-small block shapes (12 blocks, d = 768) + embedding
    python -m benchmarks.overhead --dim 256  # smaller, quicker

The floor is an in-place axpy over the blocks' parameter bytes (``p <- p + a g``: two arrays
read, one written; on copies of the parameters). Extra memory, over the blocks' parameter bytes, is what a
wrapped run holds and peaks at beyond a base run: (peak during three steps after a first one
- resident before them) + bytes the wrapper holds between steps, wrapped minus base, each in
a fresh process (Linux /proc for torch on a CPU, the caching allocator's counters on CUDA,
MLX's own peak counter for MLX). torch runs on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

from .bench_step import Stepper, mlx_pair, native_pair, torch_base, torch_pair, torch_params
from .bench_training import training_rows, training_table
from .common import available, block_bytes, gpt2_shapes, parse_counts, shape_options, side_by_side, synchronizer

TORCH_VARIANTS = (  # label, GradientSmoothing keywords
    ("default", {}),
    ("eager kernels (fused=False)", {"fused": False}),
    ("default, check_finite=True", {"check_finite": True}),
)
NATIVE = {"native": True}  # the settings that stand for SmoothedAdamW in a row


def _torch_rows(shapes, repeats, optimizer="adamw-fused"):
    import torch

    from gradsmooth.backends.torch import GradientSmoothing

    rows = []
    params = torch_params(shapes)
    # the floor writes copies of the blocks' parameters (the same bytes): writing the parameters
    # themselves would make the fused wrapper measured beside it re-take its snapshot every step,
    # which no training step does (the base step runs after the wrapper's check)
    blocks = [p.detach().clone() for n, p in params.items() if n.startswith("h.")]
    grads = [p.grad for n, p in params.items() if n.startswith("h.")]
    sync = synchronizer(blocks[0].device)

    def floor():
        torch._foreach_add_(blocks, grads, alpha=1e-6)
        sync()

    class NoStep(torch.optim.Optimizer):
        """A base that changes nothing: the wrapper's own work alone."""

        def __init__(self, ps):
            super().__init__(ps, {"lr": 0.0})

        def step(self, closure=None):
            return None

    for mode in ("update", "gradient"):
        for label, kw in TORCH_VARIANTS:
            base, wrapped = torch_pair(optimizer, mode, shapes, **kw)
            wrapped.step()  # fused kernels compile here, not in the timing
            t_base, t_wrapped = side_by_side(base.step, wrapped.step, repeats)
            alone = Stepper(params, GradientSmoothing(NoStep(list(params.values())), list(params.items()), mode=mode, **kw))
            alone.step()
            t_alone, t_floor = side_by_side(alone.step, floor, repeats)
            rows.append({"backend": f"torch {optimizer}, {label}", "mode": mode, "settings": kw, "base_ms": 1e3 * t_base,
                         "wrapped_ms": 1e3 * t_wrapped, "ratio": t_wrapped / t_base, "smoothing_ms": 1e3 * t_alone,
                         "floor_ms": 1e3 * t_floor, "smoothing_over_floor": t_alone / t_floor})
    base, native = native_pair(shapes)
    t_base, t_native = side_by_side(base.step, native.step, repeats)
    rows.append({"backend": "torch SmoothedAdamW (vs fused AdamW)", "mode": "update", "settings": NATIVE,
                 "base_ms": 1e3 * t_base, "wrapped_ms": 1e3 * t_native, "ratio": t_native / t_base})
    return rows


def _mlx_rows(shapes, repeats):
    rows = []
    for mode in ("update", "gradient"):
        base, wrapped = mlx_pair("adamw", mode, shapes)
        t_base, t_wrapped = side_by_side(base, wrapped, repeats, warmup=2)
        rows.append({"backend": "mlx adamw (compiled)", "mode": mode, "base_ms": 1e3 * t_base,
                     "wrapped_ms": 1e3 * t_wrapped, "ratio": t_wrapped / t_base})
    return rows


def _numpy_rows(shapes, repeats):
    from gradsmooth import WindowSmoothing, find_blocks, smooth

    rng = np.random.default_rng(0)
    updates = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items() if k.startswith("h.")}
    plan = find_blocks({k: v.shape for k, v in updates.items()})
    op = WindowSmoothing(3)
    ys = [v.copy() for v in updates.values()]
    xs = list(updates.values())

    def floor():
        for y, x in zip(ys, xs):
            np.add(y, x, out=y)

    def allocate():  # what a function returning new arrays pays: fresh outputs, all alive at once
        return [np.multiply(x, 1.0) for x in xs]

    t_alone, t_floor = side_by_side(lambda: smooth(updates, plan, op), floor, repeats)
    t_alloc, t_floor2 = side_by_side(allocate, floor, repeats)
    return [{"backend": "numpy core", "mode": "smooth()", "smoothing_ms": 1e3 * t_alone, "floor_ms": 1e3 * t_floor,
             "smoothing_over_floor": t_alone / t_floor},
            {"backend": "numpy: new outputs alone (x * 1.0)", "mode": "–", "smoothing_ms": 1e3 * t_alloc,
             "floor_ms": 1e3 * t_floor2, "smoothing_over_floor": t_alloc / t_floor2}]


def _vm(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} is not in /proc/self/status")


def _peak_during_steps_child(backend: str, mode: str, wrapped: bool, blocks: int, dim: int, settings: dict) -> int:
    """In a fresh process: set up and take one step, reset the peak, take three more steps
    (base or wrapped); return the peak bytes above the resident bytes before them."""
    code = (
        "from benchmarks.overhead import _steps_for_memory as run\n"
        f"print(run({backend!r}, {mode!r}, {wrapped}, {blocks}, {dim}, {settings!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return int(out.stdout.strip().splitlines()[-1])


def _steps_for_memory(backend: str, mode: str, wrapped: bool, blocks: int, dim: int, settings: dict | None = None) -> int:
    shapes = gpt2_shapes(blocks, dim)
    if backend == "torch":
        from gradsmooth.backends.torch import GradientSmoothing

        from gradsmooth.backends.torch import SmoothedAdamW

        params = torch_params(shapes)
        settings = dict(settings or {})
        if wrapped and settings.pop("native", False):
            opt = SmoothedAdamW(list(params.items()), lr=1e-4, weight_decay=0.1, **settings)
        else:
            opt = torch_base("adamw-fused", params)
        if wrapped and not isinstance(opt, SmoothedAdamW):
            opt = GradientSmoothing(opt, list(params.items()), mode=mode, **settings)
        opt.step()  # the optimizer's state (and the wrapper's snapshot) exists before the measurement
        run = opt.step
        snapshots = getattr(opt, "_snapshots", None)
        held = 0 if snapshots is None else snapshots.nbytes
        if next(iter(params.values())).is_cuda:  # GPU memory: ask the caching allocator
            import torch

            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):
                run()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - start + held
    else:  # MLX keeps freed buffers in its own cache, so ask MLX for its peak
        import mlx.core as mx

        base, wrapped_step = mlx_pair("adamw", mode, shapes)
        run = wrapped_step if wrapped else base
        run()  # the optimizer's state exists before the measurement
        start = mx.get_active_memory()
        mx.reset_peak_memory()
        for _ in range(3):
            run()
        return mx.get_peak_memory() - start
    start = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current resident size
        f.write("5")
    for _ in range(3):
        run()
    return _vm("VmHWM") - start + held


def extra_memory(backend: str, mode: str, blocks: int, dim: int, settings: dict | None = None) -> float:
    """(peak during wrapped steps - peak during base steps) / block parameter bytes."""
    base = _peak_during_steps_child(backend, mode, False, blocks, dim, {})
    wrapped = _peak_during_steps_child(backend, mode, True, blocks, dim, settings or {})
    return (wrapped - base) / block_bytes(gpt2_shapes(blocks, dim))


def machine() -> str:
    parts = [f"{os.cpu_count()} cores", platform.machine(), platform.python_version(), f"numpy {np.__version__}"]
    if available("torch"):
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
        if torch.cuda.is_available():
            parts.append(f"torch on {torch.cuda.get_device_name()}")
    if available("mlx"):
        import mlx.core as mx

        parts.append(f"mlx {mx.__version__} ({mx.default_device()})")
    return ", ".join(parts)


def table(rows: list[dict]) -> str:
    cols = [("backend", "backend", "{}"), ("mode", "mode", "{}"), ("base_ms", "base step ms", "{:.1f}"),
            ("wrapped_ms", "wrapped step ms", "{:.1f}"), ("ratio", "ratio", "{:.2f}"),
            ("smoothing_ms", "smoothing alone ms", "{:.1f}"), ("floor_ms", "axpy floor ms", "{:.1f}"),
            ("smoothing_over_floor", "smoothing / floor", "{:.2f}"), ("extra_memory", "extra memory / block bytes", "{:.2f}")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(c[2].format(r[c[0]]) if c[0] in r else "–" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_options(parser)
    parser.add_argument("--repeats", type=int, default=15, help="alternating repeats of each optimizer-step pair")
    parser.add_argument("--training-repeats", type=int, default=3,
                        help="alternating repeats of each whole training step pair (seconds each on a CPU)")
    parser.add_argument("--no-memory", action="store_true", help="skip the extra-memory measurement (subprocesses)")
    parser.add_argument("--batch", type=int, default=4, help="the training step's batch (sequences)")
    parser.add_argument("--context", type=int, default=256, help="the training step's sequence length")
    parser.add_argument("--vocab", type=int, default=50257, help="the training step's vocabulary")
    parser.add_argument("--no-training", action="store_true", help="skip the whole training step")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="the torch parameters' dtype (the optimizer step alone)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parse_counts(parser, argv, ("blocks", "dim", "repeats", "training_repeats", "batch", "context", "vocab"))
    before = os.environ.get("GRADSMOOTH_BENCH_DTYPE")
    os.environ["GRADSMOOTH_BENCH_DTYPE"] = args.dtype  # read by torch_params, here and in the memory subprocesses
    try:
        return _report(args)
    finally:
        if before is None:
            del os.environ["GRADSMOOTH_BENCH_DTYPE"]
        else:
            os.environ["GRADSMOOTH_BENCH_DTYPE"] = before


def _report(args: argparse.Namespace) -> int:
    shapes = gpt2_shapes(args.blocks, args.dim)
    print(f"machine: {machine()}; {args.blocks} blocks, d = {args.dim}, block parameters "
          f"{block_bytes(shapes) / 2**20:.0f} MiB (float32)\n")
    training = []
    if available("torch") and not args.no_training:
        training = training_rows(args.blocks, args.dim, args.batch, args.context, args.training_repeats, args.vocab)
        print(training_table(training, args.blocks, args.dim, args.batch, args.context) + "\n")
    rows = _numpy_rows(shapes, args.repeats)
    for backend, make in (("torch", _torch_rows), ("mlx", _mlx_rows)):
        if available(backend):
            for row in make(shapes, args.repeats):
                if not args.no_memory:
                    row["extra_memory"] = extra_memory(backend, row["mode"], args.blocks, args.dim, row.get("settings"))
                rows.append(row)
    print(f"optimizer step alone (torch parameters in {args.dtype})\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "training": training, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
