"""The overhead report's three default torch ratios, run after run.

One report is one sample of a noisy machine (on the 2-core CPU machines the same fused AdamW
step measures 45-90 ms within the hour). This builds the report's three optimizer-step pairs
once (fused AdamW against the default wrapper in update mode, in gradient mode, and against
``SmoothedAdamW``), then measures each side by side, as the report does, ``--runs`` times, and
prints every run, the range and median of each column, and how many runs meet the targets::

    python -m benchmarks.repeated             # 4 runs, GPT-2-small block shapes (12 blocks, d = 768)
    python -m benchmarks.repeated --runs 10
"""

from __future__ import annotations

import argparse
import statistics

from .bench_step import native_pair, torch_pair
from .common import gpt2_shapes, parse_counts, side_by_side

# optimizer step / fused AdamW step on a CPU, GPT-2-small block shapes (issue 15)
TARGETS = {"default, update mode": 1.6, "default, gradient mode": 1.3, "SmoothedAdamW": 1.1}


def pairs(shapes):
    """The report's default pairs, by column: (fused AdamW, variant) steppers, a step taken."""
    made = {"default, update mode": torch_pair("adamw-fused", "update", shapes),
            "default, gradient mode": torch_pair("adamw-fused", "gradient", shapes),
            "SmoothedAdamW": native_pair(shapes)}
    for _, variant in made.values():
        variant.step()  # compiled kernels are built here, not in the timing
    return made


def runs(shapes, runs: int, repeats: int):
    """``runs`` rows of variant / base ratios (one per column of :data:`TARGETS`), each pair
    measured side by side with ``repeats`` alternating steps."""
    made = pairs(shapes)
    rows = []
    for _ in range(runs):
        row = {}
        for name, (base, variant) in made.items():
            t_base, t_variant = side_by_side(base.step, variant.step, repeats)
            row[name] = t_variant / t_base
        rows.append(row)
    return rows


def table(rows) -> str:
    """Every run, then each column's range, median and the runs within its target."""
    names = list(TARGETS)
    lines = ["| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {i + 1} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |" for i, row in enumerate(rows)]
    summary = []
    for n in names:
        values = [row[n] for row in rows]
        met = sum(round(v, 2) <= TARGETS[n] for v in values)  # as the table shows them
        summary.append(f"{min(values):.2f}–{max(values):.2f}, median {statistics.median(values):.2f}; "
                       f"≤ {TARGETS[n]} in {met} of {len(values)}")
    return "\n".join([*lines, f"| {len(rows)} runs | " + " | ".join(summary) + " |"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15, help="alternating steps of each pair per run")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--dim", type=int, default=768)
    args = parse_counts(parser, argv, ("runs", "repeats", "blocks", "dim"))
    print(table(runs(gpt2_shapes(args.blocks, args.dim), args.runs, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
