"""The first step's cost: the compiled kernels are built at the first step with a new band
pattern (before anything changes), once per process, and inductor's and the blocked kernels'
caches on disk make the next process's build short. Each row runs in fresh processes: one with
an empty cache directory (``TORCHINDUCTOR_CACHE_DIR``), then one more with the same, now warm,
directory; each times its first step and the median of the three after it.

    python -m benchmarks.first_step              # the demo's ViT and GPT-2-small shapes
    python -m benchmarks.first_step --models demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = {  # label: what the child builds
    "wrapper, update mode": "update",
    "wrapper, gradient mode": "gradient",
    "SmoothedAdamW": "native",
}
MODELS = {"demo": "the demo's ViT (8 blocks, width 64)", "gpt2-small": "GPT-2-small shapes (12 blocks, d = 768)"}


def _params(model: str):
    """Named parameters with fixed gradients."""
    import torch

    if model == "gpt2-small":
        from .bench_step import torch_params
        from .common import gpt2_shapes

        return torch_params(gpt2_shapes(12, 768))
    from gradsmooth.experiments.runs import RunConfig
    from gradsmooth.experiments.torch_models import build_model

    net = build_model(RunConfig(task="vit"))
    gen = torch.Generator().manual_seed(0)
    params = dict(net.named_parameters())
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    return params


def _child(model: str, variant: str) -> dict[str, float]:
    """Build the optimizer, time its first step and the median of the next three (ms)."""
    import torch

    from gradsmooth.backends.torch import GradientSmoothing, SmoothedAdamW

    params = _params(model)
    named = list(params.items())
    if variant == "native":
        opt = SmoothedAdamW(named, lr=1e-4, weight_decay=0.1)
    else:
        base = torch.optim.AdamW(list(params.values()), lr=1e-4, weight_decay=0.1, fused=True)
        opt = GradientSmoothing(base, named, mode=variant)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        opt.step()
        times.append(1e3 * (time.perf_counter() - start))
    paths = sorted(set(opt.plan.paths))
    return {"first_ms": times[0], "later_ms": sorted(times[1:])[1], "paths": paths}


def _run_child(model: str, variant: str, cache: str) -> dict[str, float]:
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-m", "benchmarks.first_step", "--child", model, variant],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rows(models: list[str]) -> list[dict[str, object]]:
    """One row per model and variant: first step with a cold and a warm cache, and a later step."""
    result = []
    for model in models:
        for label, variant in VARIANTS.items():
            with tempfile.TemporaryDirectory() as cache:
                cold = _run_child(model, variant, cache)
                warm = _run_child(model, variant, cache)
            result.append({"model": model, "variant": label, "cold_first_ms": cold["first_ms"],
                           "warm_first_ms": warm["first_ms"], "later_ms": warm["later_ms"],
                           "paths": ", ".join(warm["paths"])})
    return result


def table(result: list[dict[str, object]]) -> str:
    """The rows as Markdown: compile cost = first step - a later step."""
    lines = ["| model | optimizer | first step, empty cache (s) | first step, warm cache (s) | later step (ms) | "
             "kernel paths |", "|---|---|---|---|---|---|"]
    for r in result:
        lines.append(f"| {MODELS[r['model']]} | {r['variant']} | {r['cold_first_ms'] / 1e3:.1f} | "
                     f"{r['warm_first_ms'] / 1e3:.2f} | {r['later_ms']:.1f} | {r['paths']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,gpt2-small", help="comma-separated: demo, gpt2-small")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"--models should name {', '.join(MODELS)} but names: {', '.join(unknown)}")
    print(table(rows(models)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
