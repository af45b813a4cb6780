"""The overhead report's three default torch ratios, run after run.

One report is one sample of a noisy machine (the same fused AdamW step varies by a factor of two
within the hour on the 2-core CPU machines: benchmarks/README.md). This builds the report's three optimizer-step pairs
once (fused AdamW against the default wrapper in update mode, in gradient mode, and against
``SmoothedAdamW``), then measures each side by side, as the report does, ``--runs`` times, and
prints every run, the range and median of each column, and how many runs meet the targets:

```
python -m benchmarks.repeated             # 4 runs, GPT-2-small block shapes (12 blocks, d = 768)
python -m benchmarks.repeated --runs 10
```
"""

from __future__ import annotations

import argparse
import statistics

from .bench_step import native_pair, torch_pair
from .common import gpt2_shapes, parse_counts, shape_options, side_by_side

# optimizer step / fused AdamW step on a CPU, GPT-2-small block shapes (issue 15)
TARGETS = {"default, update mode": 1.6, "default, gradient mode": 1.3, "SmoothedAdamW": 1.1}


def pairs(shapes):
    """The report's default pairs, by column: (fused AdamW step, variant step), a step taken
    (compiled kernels are built then, not in the timing)."""
    made = {"default, update mode": torch_pair("adamw-fused", "update", shapes),
            "default, gradient mode": torch_pair("adamw-fused", "gradient", shapes)}
    for _, wrapped in made.values():
        wrapped.step()
    made["SmoothedAdamW"] = native_pair(shapes)  # steps both
    return {name: (base.step, variant.step) for name, (base, variant) in made.items()}


def measure(pairs, runs: int, repeats: int) -> list[dict[str, float]]:
    """``runs`` rows of variant / base time for each of ``pairs`` (name: (base, variant)
    callables), each pair measured side by side with ``repeats`` alternating calls."""
    rows = []
    for _ in range(runs):
        row = {}
        for name, (base, variant) in pairs.items():
            t_base, t_variant = side_by_side(base, variant, repeats)
            row[name] = t_variant / t_base
        rows.append(row)
    return rows


def table(rows: list[dict[str, float]], targets: dict[str, float] = TARGETS, of: str = "") -> str:
    """Every run, then each column's range and median, and the runs within its target where
    ``targets`` has one; ``of`` follows each column's name in the header."""
    names = list(rows[0])
    lines = ["| run | " + " | ".join(n + of for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {i + 1} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |" for i, row in enumerate(rows)]
    summary = []
    for n in names:
        values = [row[n] for row in rows]
        cell = f"{min(values):.2f}–{max(values):.2f}, median {statistics.median(values):.2f}"
        if n in targets:
            met = sum(round(v, 2) <= targets[n] for v in values)  # as the table shows them
            cell += f"; ≤ {targets[n]} in {met} of {len(values)}"
        summary.append(cell)
    return "\n".join([*lines, f"| {len(rows)} runs | " + " | ".join(summary) + " |"])


def parse(argv, description: str, runs: int, repeats: int) -> argparse.Namespace:
    """The options of a repeated measurement: ``--runs``, ``--repeats`` (alternating calls of
    each pair per run) and the shapes, each count refused below 1."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--repeats", type=int, default=repeats, help="alternating calls of each pair per run")
    shape_options(parser)
    return parse_counts(parser, argv, ("runs", "repeats", "blocks", "dim"))


def main(argv=None) -> None:
    args = parse(argv, __doc__, runs=4, repeats=15)
    print(table(measure(pairs(gpt2_shapes(args.blocks, args.dim)), args.runs, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
