"""The ``gradsmooth`` command: ``demo`` and ``compare`` train small models with and without
Gradient Smoothing, each at its own learning rate, and show the difference; ``report``
renders a results folder's tables and plots again from its results.json.

Frameworks are imported only when a run needs one (``--backend torch`` or ``mlx``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import pathlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import Any, NoReturn

from . import __version__
from .compare import format_summary, overview, render
from .experiments.data import DataError, load_digits_split, load_problems, load_text
from .experiments.loop import ALPHA_SCHEDULES, MODEL_SIZES, AlphaSchedule
from .experiments.reasoning import RL_DEFAULTS
from .experiments.runs import METRICS, BackendMissing, RunConfig, RunResult, backend_module, compare, run
from .modes import MODES
from .operators import WINDOW_DEFAULTS
from .results import ResultsError, machine, provenance, read_results, write_results, wrote
from .settings import OPTIONS, Settings
from .windows import BOUNDARIES

__all__ = ["main", "TASK_DEFAULTS", "DEMO_LRS", "DEVICES", "VAL_FRACTION", "TEST_FRACTION"]

# the help's description: plain text (the module docstring above is reStructuredText)
DESCRIPTION = """The gradsmooth command: demo and compare train small models with and without
Gradient Smoothing, each at its own learning rate, and show the difference; report
renders a results folder's tables and plots again from its results.json.

Frameworks are imported only when a run needs one (--backend torch or mlx)."""

# per task: the run length and batch that fit the demo's budget on a 2-core CPU (rl: phase 2's
# steps, and prompts per step; phase 1 comes before, once per seed)
TASK_DEFAULTS = {
    "vit": dict(steps=600, batch_size=32, eval_every=50),
    "lm": dict(steps=300, batch_size=16, eval_every=25),
    "diffusion": dict(steps=600, batch_size=64, eval_every=100),
    "rl": dict(steps=300, batch_size=16, eval_every=25),
}
# what each task is, for --task's help
TASKS = {
    "vit": "a small ViT on scikit-learn's digits (accuracy)",
    "lm": "a small byte-level GPT on a local corpus (loss)",
    "diffusion": "a class-conditional diffusion transformer on the digits (denoising loss)",
    "rl": "the GPT post-trained by policy gradient on addition problems after a supervised phase 1 "
          "(exact-match accuracy)",
}
# the rl task's problems (data.load_problems): digits per operand, validation and test problems each
RL_PROBLEMS = {"digits": 2, "held_out": 500}
# --device: every backend's names (each backend refuses the ones it does not have, before training)
DEVICES = ("auto", "cpu", "cuda", "mps", "gpu")
# compare's held-out splits: the digits' validation part of the training images; the text's test part
VAL_FRACTION = 0.2
TEST_FRACTION = 0.1
# learning rates (base, smoothed) the demo uses: each arm's choice (on validation) in the
# published comparisons (docs/results: vit-adamw, lm-adamw, vit-muon); the others (SGD, the GPT
# with Muon: not published yet) from earlier sweeps; diffusion's and rl's: the base's best of a
# short sweep at seed 0 (three or four rates, the demo's length or less), smoothed set alike
DEMO_LRS = {
    ("vit", "adamw"): (1e-3, 3e-3),
    ("lm", "adamw"): (3e-3, 3e-3),
    ("vit", "sgd"): (0.1, 0.1),
    ("lm", "sgd"): (0.3, 0.3),
    ("vit", "muon"): (1e-2, 5e-3),
    ("lm", "muon"): (0.02, 0.02),
    ("diffusion", "adamw"): (1e-2, 1e-2),
    ("rl", "adamw"): (1e-3, 1e-3),
    ("diffusion", "sgd"): (0.3, 0.3),
    ("rl", "sgd"): (0.03, 0.03),
    ("diffusion", "muon"): (0.03, 0.03),
    ("rl", "muon"): (3e-3, 3e-3),
}


class _Parser(argparse.ArgumentParser):
    """Errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{self.prog}: error: {message} (see --help)")


def _fail(message: str, code: int = 2) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(code)


def _kernel(text: str) -> str | list[float]:
    if "," not in text:
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"kernel should be a name or comma-separated weights but is: {text!r}") from None


def _lrs(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"learning rates should be comma-separated numbers but are: {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"learning rates should be finite and positive but {bad[0]:g} is not: {text!r}")
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise argparse.ArgumentTypeError(
            f"learning rates should be distinct (each runs once per seed) but {repeated[0]:g} is repeated: {text!r}")
    return values


def _number(text: str, ok: Callable[[float], bool], what: str) -> float:
    """``text`` as a float for which ``ok`` holds (NaN when it is no number: ``ok`` refuses it)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not ok(value):
        raise argparse.ArgumentTypeError(f"should be {what} but is: {text!r}")
    return value


def _lr(text: str) -> float:
    return _number(text, lambda v: math.isfinite(v) and v > 0, "a finite positive number")


def _fraction(text: str) -> float:
    return _number(text, lambda v: 0 <= v <= 1, "a number in [0, 1]")  # False for NaN


def _integer(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise argparse.ArgumentTypeError(f"should be {what} but is: {text!r}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _depth(text: str) -> int:
    return _integer(text, 2, "an integer >= 2 (one block has no neighbour to smooth with)")


def _natural(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def _width(text: str) -> int:
    heads = MODEL_SIZES["vit"]["heads"]
    value = _integer(text, 1, f"a positive multiple of {heads} (the attention heads)")
    if value % heads:
        raise argparse.ArgumentTypeError(f"should be a positive multiple of {heads} (the attention heads) but is: {text!r}")
    return value


def _at_least_two(text: str) -> int:
    return _integer(text, 2, "an integer >= 2")


def _share(text: str) -> float:
    return _number(text, lambda v: 0 < v <= 1, "a number in (0, 1]")  # False for NaN


def _decay(text: str) -> float:
    return _number(text, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def _odd(text: str) -> int:
    value = _integer(text, 1, "an odd integer >= 1")
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"should be an odd integer >= 1 but is: {text!r}")
    return value


def _demo_lr_help(arm: int) -> str:
    """The demo's default learning rates of one arm (0 base, 1 smoothed), per optimizer and task."""
    parts = []
    for opt in ("adamw", "sgd", "muon"):
        by_task = {task: DEMO_LRS[(task, opt)][arm] for task in TASK_DEFAULTS}
        values = set(by_task.values())
        parts.append(f"{opt} {values.pop():g}" if len(values) == 1
                     else f"{opt} " + ", ".join(f"{lr:g} ({task})" for task, lr in by_task.items()))
    return ("default: " + "; ".join(parts) + "; AdamW's on vit and lm, and Muon's on vit, are each arm's choice in "
            "the published comparisons, docs/results; diffusion's and rl's from short sweeps")


def _per_task(key: str) -> str:
    """A default of TASK_DEFAULTS for every task: "vit 600, lm 300, ..."."""
    return ", ".join(f"{task} {d[key]}" for task, d in TASK_DEFAULTS.items())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=sorted(METRICS), default="vit",
                   help="; ".join(f"{task}: {what}" for task, what in TASKS.items()) + " (default: %(default)s)")
    p.add_argument("--backend", choices=("torch", "mlx"), default="torch", help="framework (default: %(default)s)")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to train: torch: cpu, cuda or mps; MLX: cpu or gpu; auto: torch's cuda, else mps, "
                        "else cpu, MLX's default device (default: %(default)s)")
    p.add_argument("--optimizer", choices=("sgd", "adamw", "muon"), default="adamw",
                   help="base optimizer; muon is Muon for the blocks' matrices + AdamW at lr/10 for the rest "
                        "(default: %(default)s)")
    p.add_argument("--window", type=_odd, default=WINDOW_DEFAULTS["window"], help=OPTIONS["window"])
    p.add_argument("--kernel", type=_kernel, default=WINDOW_DEFAULTS["kernel"],
                   help=OPTIONS["kernel"] + " (here: comma-separated weights)")
    p.add_argument("--boundary", choices=BOUNDARIES, default=WINDOW_DEFAULTS["boundary"], help=OPTIONS["boundary"])
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=WINDOW_DEFAULTS["normalize"],
                   help=OPTIONS["normalize"])
    p.add_argument("--alpha", type=_fraction, default=WINDOW_DEFAULTS["alpha"],
                   help="strength in [0, 1]; with --alpha-schedule, the first step's (default: %(default)s)")
    p.add_argument("--alpha-schedule", choices=ALPHA_SCHEDULES, default="constant",
                   help="alpha over the run: constant, or from --alpha at the first step to --alpha-final at the "
                        "last, linear or cosine (default: %(default)s)")
    p.add_argument("--alpha-final", type=_fraction, default=None,
                   help="the last step's alpha in [0, 1] of a linear or cosine --alpha-schedule (default: 0)")
    p.add_argument("--mode", choices=MODES, default=Settings.mode, help=OPTIONS["mode"])
    p.add_argument("--steps", type=_positive, default=None,
                   help=f"training steps; rl: phase 2's (default: {_per_task('steps')})")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help=f"rl: prompts per step (default: {_per_task('batch_size')})")
    p.add_argument("--eval-every", type=_positive, default=None,
                   help=f"steps between evaluations (default: {_per_task('eval_every')})")
    p.add_argument("--context", type=_positive, default=64, help="lm context length in bytes (default: %(default)s)")
    p.add_argument("--data", default=None, help="lm: a UTF-8 text file (default: this Python's standard library sources)")
    sizes = ", ".join(f"{task} {s['depth']}" for task, s in MODEL_SIZES.items())
    p.add_argument("--depth", type=_depth, default=None, help=f"number of transformer blocks, at least 2 (default: {sizes})")
    widths = ", ".join(f"{task} {s['width']}" for task, s in MODEL_SIZES.items())
    p.add_argument("--width", type=_width, default=None, help=f"model dimension, a multiple of 4 (default: {widths})")
    p.add_argument("--weight-decay", type=_decay, default=RunConfig.weight_decay,
                   help="weight decay of adamw and muon (default: %(default)s)")
    p.add_argument("--warmup", type=_fraction, default=RunConfig.warmup,
                   help="fraction of the steps spent warming the learning rate up (default: %(default)s)")
    p.add_argument("--group", type=_at_least_two, default=None,
                   help=f"rl: answers sampled per prompt (default: {RL_DEFAULTS['group']})")
    p.add_argument("--kl", type=_decay, default=None,
                   help=f"rl: coefficient of the KL term to the phase-1 model (default: {RL_DEFAULTS['kl']:g})")
    p.add_argument("--sft-target", type=_share, default=None,
                   help=f"rl: phase 1 trains until its validation accuracy reaches this, in (0, 1] "
                        f"(default: {RL_DEFAULTS['sft_target']:g})")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch's CPU threads (default: OMP_NUM_THREADS where set, else 1: these models are too small "
                        "to gain from more, and more threads than free cores slow them down)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradsmooth", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"gradsmooth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="base vs smoothed on one seed: table and PNG",
                          description="Train the task with the base optimizer and with Gradient Smoothing, each at "
                                      "its own learning rate (the defaults: from earlier sweeps of the task), same "
                                      "seed and data order; print checkpoints and "
                                      "the final difference; write curves and depth-structure heatmaps.")
    _common(demo)
    demo.add_argument("--lr-base", type=_lr, default=None, help=f"base learning rate ({_demo_lr_help(0)})")
    demo.add_argument("--lr-smoothed", type=_lr, default=None, help=f"smoothed learning rate ({_demo_lr_help(1)})")
    demo.add_argument("--seed", type=_natural, default=0, help="(default: %(default)s)")
    demo.add_argument("--out", default="gradsmooth-demo", help="output folder (default: %(default)s)")
    cmp = sub.add_parser("compare", help="sweep learning rates and seeds for base and smoothed; paired test difference",
                         description="Run base and smoothed at every learning rate for every seed; choose each arm's "
                                     "learning rate on a validation split; report the validation metric per learning "
                                     "rate, the test metric at the chosen rates, the per-seed paired difference with "
                                     "its 95% Student-t interval, the win count and a verdict; write results.json "
                                     "and PNG plots.")
    _common(cmp)
    cmp.add_argument("--lrs", type=_lrs, default=[1e-3, 3e-3, 1e-2], help="comma-separated (default: 1e-3,3e-3,1e-2)")
    cmp.add_argument("--seeds", type=_positive, default=3, help="number of seeds (default: %(default)s)")
    cmp.add_argument("--first-seed", type=_natural, default=0,
                     help="the seeds are first-seed, first-seed + 1, ...: --seeds 1 --first-seed 5 runs seed 5 "
                          "alone (default: %(default)s)")
    cmp.add_argument("--out", default="gradsmooth-compare", help="output folder (default: %(default)s)")
    cmp.add_argument("--resume", action="store_true",
                     help="continue --out's results.json (interrupted, or with fewer learning rates or seeds): its "
                          "runs are kept; it must have the same settings")
    cmp.add_argument("--overwrite", action="store_true",
                     help="replace --out's results.json if it holds a comparison (without --resume or --overwrite "
                          "such a folder is refused)")
    cmp.add_argument("--base-from", metavar="DIR",
                     help="reuse the base runs of the comparison in DIR (same settings but the smoothing: an "
                          "ablation): only the smoothed arm trains where DIR has the base run")
    rep = sub.add_parser("report", help="print a results folder's tables and redraw its plots from its results.json",
                         description="Read DIR/results.json (written by demo, compare or gradsmooth.compare.sweep) "
                                     "and print the same tables the command printed, as Markdown; redraw its PNG "
                                     "plots into DIR. Several DIRs (comparisons): one overview table, a row each.")
    rep.add_argument("dirs", metavar="DIR", nargs="+", help="a folder holding results.json")
    rep.add_argument("--reported", metavar="NAME",
                     help="instead, one overview row per comparison DIR for a number its runs report beside the "
                          "metric (adjacent_cka, adjacent_update_cosine, sample_acc), each arm at its chosen "
                          "learning rate, paired over seeds (default: the test metric)")
    return parser


def _check_kernel_window(command: str, kernel: str | list[float], window: int) -> None:
    """An explicit --kernel needs one weight per block of the window: advice in the CLI's terms."""
    if isinstance(kernel, str) or len(kernel) == window:
        return
    given = ",".join(f"{w:g}" for w in kernel)
    if len(kernel) % 2 == 0:
        _fail(f"gradsmooth {command}: error: --kernel {given} has {len(kernel)} weights: an explicit kernel needs an "
              f"odd number of symmetric weights, one per block of the window, and --window set to that number "
              f"(e.g. --kernel 0.5,1,0.5 --window 3)")
    _fail(f"gradsmooth {command}: error: --kernel {given} has {len(kernel)} weights but --window is {window}: "
          f"pass --window {len(kernel)} with it")


def _check_out(command: str, out: pathlib.Path) -> None:
    """--out is a folder this process can create and write in: checked before any training."""
    if out.exists() and not out.is_dir():
        _fail(f"gradsmooth {command}: error: --out {str(out)!r} is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _fail(f"gradsmooth {command}: error: --out {str(out)!r} cannot be created: {err.strerror or err}")
    probe = out / f".gradsmooth-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        _fail(f"gradsmooth {command}: error: --out {str(out)!r} is not writable: {err.strerror or err}")


def _alpha(args: argparse.Namespace, steps: int) -> float | AlphaSchedule:
    """--alpha, or the schedule of --alpha-schedule from it to --alpha-final over ``steps``."""
    if args.alpha_schedule == "constant":
        if args.alpha_final is not None:
            _fail(f"gradsmooth {args.command}: error: --alpha-final {args.alpha_final:g} needs --alpha-schedule "
                  f"linear or cosine (a constant alpha is --alpha alone)")
        return args.alpha
    final = 0.0 if args.alpha_final is None else args.alpha_final
    return AlphaSchedule(args.alpha_schedule, args.alpha, final, steps)


def _rl_options(args: argparse.Namespace) -> dict[str, Any]:
    """--group, --kl and --sft-target for --task rl (their defaults where not given); refused elsewhere."""
    given = {k: getattr(args, k) for k in RL_DEFAULTS}
    if args.task != "rl":
        named = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None]
        if named:
            _fail(f"gradsmooth {args.command}: error: {', '.join(named)} applies to --task rl only, not --task "
                  f"{args.task}")
        return {}
    return {k: RL_DEFAULTS[k] if v is None else v for k, v in given.items()}


def _config(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any]]:
    """The run's settings and the smoothing's, every one checked before any training."""
    _check_kernel_window(args.command, args.kernel, args.window)
    defaults, sizes = TASK_DEFAULTS[args.task], MODEL_SIZES[args.task]
    try:
        device = backend_module(args.backend).resolve_device(args.device)
    except ValueError as err:
        _fail(f"gradsmooth {args.command}: error: --device {args.device}: {err}")
    config = RunConfig(task=args.task, backend=args.backend, optimizer=args.optimizer,
                       steps=args.steps or defaults["steps"], batch_size=args.batch_size or defaults["batch_size"],
                       eval_every=args.eval_every or defaults["eval_every"], data=args.data, context=args.context,
                       weight_decay=args.weight_decay, warmup=args.warmup,
                       depth=args.depth or sizes["depth"], width=args.width or sizes["width"], device=device,
                       **_rl_options(args))
    smoothing = dict(window=args.window, kernel=args.kernel, boundary=args.boundary, normalize=args.normalize,
                     alpha=_alpha(args, config.steps), mode=args.mode)
    try:
        Settings.of(smoothing, takes=("mode",), who="gradsmooth")  # the options' one check
    except (TypeError, ValueError) as err:
        _fail(f"gradsmooth {args.command}: error: {err}")
    return config, smoothing


def _data(config: RunConfig, out: pathlib.Path, held_out: bool = False) -> Any:
    """The task's data; with ``held_out`` (compare) a validation split of the digits' training
    images, or a test part of the text, beside the split the demo uses. rl: its problems, with
    the phase-1 models kept in ``out``/phase1 (reused by both arms, and by a resumed comparison)."""
    if config.task in ("vit", "diffusion"):
        return load_digits_split(val_fraction=VAL_FRACTION if held_out else 0.0)
    if config.task == "rl":
        return load_problems(**RL_PROBLEMS, folder=out / "phase1")
    return load_text(config.data, config.context, test_fraction=TEST_FRACTION if held_out else 0.0)


def _progress(quiet: bool):
    def make(config: RunConfig):
        if quiet:
            return None
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc=f"{config.task} {config.optimizer} lr={config.lr:g} {config.label} "
                                             f"seed {config.seed}", leave=False, file=sys.stderr)

        def tick(step: int) -> None:
            bar.update(1)
            if step + 1 == config.steps:
                bar.close()

        return tick

    return make


@contextlib.contextmanager
def _threads(args: argparse.Namespace) -> Iterator[tuple[int, str] | None]:
    """Within: torch's CPU threads for the run, and why that many: ``--threads``, else
    OMP_NUM_THREADS where set (torch has read it), else 1, as these models are too small to gain
    from more threads. After: torch's count as it was. None for a backend other than torch
    (``--threads`` is refused there)."""
    if args.backend != "torch":
        if args.threads is not None:
            _fail(f"gradsmooth {args.command}: error: --threads {args.threads} sets torch's CPU threads; "
                  f"--backend {args.backend} does not take it")
        yield None
        return
    torch_models = backend_module("torch")  # the framework, only in its own module
    with torch_models.cpu_threads(args.threads) as threads:
        yield threads


def _say_threads(command: str, threads: tuple[int, str] | None) -> int | None:
    """Say on stderr how many torch threads the run uses and why; the count (None: not torch)."""
    if threads is None:
        return None
    print(f"gradsmooth {command}: torch on {_plural(threads[0], 'CPU thread')} ({threads[1]})", file=sys.stderr)
    return threads[0]


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def _demo(args: argparse.Namespace, argv: list[str], threads: tuple[int, str] | None) -> int:
    config, smoothing = _config(args)
    lr_base, lr_smoothed = DEMO_LRS[(config.task, config.optimizer)]
    arms = [replace(config, lr=lr_base if args.lr_base is None else args.lr_base, seed=args.seed),
            replace(config, lr=lr_smoothed if args.lr_smoothed is None else args.lr_smoothed, seed=args.seed,
                    smoothing=smoothing)]
    out = pathlib.Path(args.out)
    data = _data(config, out)
    _check_out(args.command, out)
    count = _say_threads(args.command, threads)
    results: list[RunResult] = []
    progress = _progress(args.quiet)
    def payload(interrupted: bool) -> dict[str, Any]:
        return {"command": "demo", "interrupted": interrupted, "provenance": provenance(["gradsmooth", *argv],
                [args.seed]), "machine": machine(), "runs": [r.to_json() for r in results]}

    try:
        for cfg in arms:
            run(cfg, data, progress=progress(cfg), diagnose=True, into=results)
    except KeyboardInterrupt:
        path = write_results(out, payload(True))
        sys.stderr.write("\n")  # the message on a line of its own, not after the progress bar or ^C
        _fail(f"interrupted: the results gathered so far are in {path}", 130)
    path = write_results(out, payload(False))
    paths = _render_demo(results, out, count)
    print(f"\n{wrote([*paths, path])}")
    return 0


def _render_demo(results: list[RunResult], out: pathlib.Path, threads: int | None) -> list[pathlib.Path]:
    """Print the demo's table of ``results`` (base, smoothed; run on ``threads`` torch threads)
    and draw its plots into ``out``."""
    base, smoothed = results
    config = base.config
    print(_demo_table(base, smoothed, threads))
    from .experiments.plots import plot_depth_structure, plot_samples
    from .plots import plot_curves

    plot_curves({r.config.label: (r.config.lr, [r.history]) for r in (base, smoothed)}, out / "curves.png",
                title=f"{config.task}: {config.optimizer} vs {config.optimizer} + Gradient Smoothing")
    plot_depth_structure(base, smoothed, out / "depth_structure.png")
    paths = [out / "curves.png", out / "depth_structure.png"]
    if all("samples" in r.diagnostics for r in (base, smoothed)):
        plot_samples(base, smoothed, out / "samples.png")
        paths.append(out / "samples.png")
    else:
        (out / "samples.png").unlink(missing_ok=True)  # an earlier diffusion demo's, not this run's
    return paths


# the demo table's columns per task (a row without one, rl's step 0, shows "-")
DEMO_COLUMNS = {"vit": ["train_loss", "test_loss", "test_acc"], "lm": ["train_loss", "val_loss"],
                "diffusion": ["train_loss", "test_loss", "sample_acc"], "rl": ["train_loss", "train_reward", "test_acc"]}


def _demo_table(base: RunResult, smoothed: RunResult, threads: int | None) -> str:
    keys = DEMO_COLUMNS[base.config.task]
    cell = lambda row, k: f"{row[k]:.4f}" if k in row else "-"  # noqa: E731
    head = ["step"] + [f"base {k}" for k in keys] + [f"smoothed {k}" for k in keys]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for b, s in zip(base.history, smoothed.history):
        lines.append(" | ".join([str(b["step"])] + [cell(b, k) for k in keys] + [cell(s, k) for k in keys]))
    key, higher = METRICS[base.config.task]
    diff = smoothed.final(key) - base.final(key)
    verdict = "better" if (diff > 0) == higher and diff != 0 else "worse" if diff != 0 else "equal"
    on = f" on {_plural(threads, 'thread')}" if threads else ""
    lines.append("")
    if base.phase1 is not None:
        p1 = base.phase1
        lines.append(f"phase 1 (the same for both, not compared): {p1['steps']} supervised steps to validation "
                     f"accuracy {p1['val_acc']:.3f} (target {base.config.sft_target:g}"
                     + ("" if p1["reached"] else ", not reached") + f"), trained in {p1['seconds']:.0f} s: inside the "
                     "first arm's time below, unless an earlier run in this folder kept it)")
    lines.append(f"base lr {base.config.lr:g}, smoothed lr {smoothed.config.lr:g} "
                 f"({smoothed.config.smoothing}); {base.seconds:.0f} s and {smoothed.seconds:.0f} s{on}")
    lines.append(f"final {key}: base {base.final(key):.4f}, smoothed {smoothed.final(key):.4f}, "
                 f"difference {diff:+.4f} (smoothed is {verdict} on seed {base.config.seed})")
    lines.append("")
    lines.append("One seed shows how the two arms train at these learning rates. It cannot show whether the "
                 "difference is larger than what another seed changes, nor whether each arm's learning rate is its "
                 "best: `gradsmooth compare` runs both arms over a grid of learning rates and several seeds, chooses "
                 "each arm's rate on a validation split and reports the paired difference with its 95% interval.")
    return "\n".join(lines)


def _label(config: RunConfig, smoothing: dict[str, Any]) -> str:
    """The setting in a few words, for the overview of several results folders."""
    changed = {k: v for k, v in smoothing.items() if k != "mode" and v != WINDOW_DEFAULTS[k]}
    extra = "".join(f", {k} {v}" for k, v in changed.items())
    return (f"{config.task} {config.optimizer}, {config.depth} blocks, width {config.width}, {config.steps} steps; "
            f"{smoothing['mode']} mode{extra}")


def _compare(args: argparse.Namespace, argv: list[str], threads: tuple[int, str] | None) -> int:
    config, smoothing = _config(args)
    out = pathlib.Path(args.out)
    data = _data(config, out, held_out=True)
    _check_out(args.command, out)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    settings = {"config": asdict(config), "label": _label(config, smoothing),
                "val_fraction": VAL_FRACTION if config.task in ("vit", "diffusion") else None,
                "test_fraction": TEST_FRACTION if config.task == "lm" else None,
                "problems": RL_PROBLEMS if config.task == "rl" else None}
    _say_threads(args.command, threads)
    try:
        result = compare(config, smoothing, args.lrs, seeds, data, out=out, verbose=not args.quiet,
                         progress_for=_progress(args.quiet), command=["gradsmooth", *argv], settings=settings,
                         resume=args.resume, overwrite=args.overwrite, base_from=args.base_from)
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # sweep wrote what was gathered and said where
    except (ResultsError, ValueError, FileExistsError) as err:  # --out's results.json: before any training
        _fail(f"gradsmooth compare: error: {err}")
    if args.quiet:  # else compare printed them
        print(format_summary(result["summary"]))
        print(f"\n{wrote(result['written'])}")
    return 0


def _report(args: argparse.Namespace) -> int:
    """Print the tables of each DIR/results.json and redraw a single DIR's plots, without
    training: a demo's table, a comparison's tables; of several DIRs, each demo's table and one
    overview of the comparisons."""
    try:
        payloads = {folder: read_results(folder) for folder in args.dirs}
        demos = {folder: payload for folder, payload in payloads.items() if payload.get("command") == "demo"}
        if args.reported is not None:
            if demos:
                raise ResultsError(f"--reported compares the runs of comparisons, but {next(iter(demos))!r} holds a "
                                   f"demo's results: leave it out")
            print(overview(args.dirs, reported=args.reported))
            return 0
        if len(args.dirs) > 1:
            for folder, payload in demos.items():
                print(f"demo {folder}:\n\n{_demo_table(*_demo_runs(payload, folder), _recorded_threads(payload))}\n")
            comparisons = [folder for folder in args.dirs if folder not in demos]
            if comparisons:
                print(overview(comparisons))
            return 0
        folder = pathlib.Path(args.dirs[0])
        if demos:
            payload = demos[args.dirs[0]]
            paths = _render_demo(_demo_runs(payload, args.dirs[0]), folder, _recorded_threads(payload))
            print(f"\n{wrote(paths)}")
            return 0
        print(render(folder))
    except ResultsError as err:
        _fail(f"gradsmooth report: error: {err}")
    print(f"\nwrote the plots in {folder}")
    return 0


def _demo_runs(payload: dict[str, Any], folder: str) -> list[RunResult]:
    """A demo results.json's two complete runs (base, smoothed); ResultsError without them."""
    complete = [RunResult.from_json(entry) for entry in payload.get("runs", [])]
    complete = [r for r in complete if r.complete]
    if len(complete) != 2:
        raise ResultsError(f"{str(pathlib.Path(folder) / 'results.json')!r} holds no complete demo runs to report")
    return complete


def _recorded_threads(payload: dict[str, Any]) -> int | None:
    """The torch threads a results.json records (None where it records none)."""
    return (payload.get("provenance") or {}).get("threads", {}).get("torch")


# the modules a command imports beyond gradsmooth's own dependencies: (PyPI name, extra that installs it)
EXTRAS = {"sklearn": ("scikit-learn", "demo"), "tqdm": ("tqdm", "demo"), "matplotlib": ("matplotlib", "demo"),
          "scipy": ("scipy", "demo")}


def _needs(args: argparse.Namespace) -> list[str]:
    """The modules of `EXTRAS` the command will import (its framework is backend_module's to check)."""
    if args.command == "report":
        return ["scipy", "matplotlib"]
    needs = ["matplotlib", "scipy"] if args.command == "compare" else ["matplotlib"]
    return needs + (["sklearn"] if args.task in ("vit", "diffusion") else []) + ([] if args.quiet else ["tqdm"])


def _require(args: argparse.Namespace) -> None:
    """Refuse, before any work, a command whose modules are not installed, naming the pip install."""
    for module in _needs(args):
        try:
            importlib.import_module(module)
        except ImportError:
            name, extra = EXTRAS[module]
            _fail(f"gradsmooth {args.command}: error: {name} (module {module}) is not installed: "
                  f"pip install 'gradsmooth[{extra}]'")


# options given to the other command by mistake: what to say instead of "unrecognized arguments"
OTHER_COMMANDS_OPTIONS = {
    "demo": {"--lrs": "demo takes --lr-base and --lr-smoothed (compare takes --lrs)",
             "--seeds": "demo runs one seed, --seed (compare takes --seeds)",
             "--first-seed": "demo runs one seed, --seed (compare takes --first-seed)"},
    "compare": {"--lr-base": "compare takes --lrs, one grid for both arms (demo takes --lr-base and --lr-smoothed)",
                "--lr-smoothed": "compare takes --lrs, one grid for both arms (demo takes --lr-base and --lr-smoothed)"},
}


def _unrecognized(command: str, extra: list[str]) -> NoReturn:
    """Refuse the arguments argparse did not recognise, saying which option the command takes instead."""
    options = OTHER_COMMANDS_OPTIONS.get(command, {})
    hints = list(dict.fromkeys(options[a.split("=")[0]] for a in extra if a.split("=")[0] in options))
    _fail(f"gradsmooth {command}: error: unrecognized arguments: {' '.join(extra)} (see --help)"
          + "".join(f"; {hint}" for hint in hints))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        _unrecognized(args.command, extra)
    _require(args)
    if args.command == "report":
        return _report(args)
    try:
        backend_module(args.backend)
        with _threads(args) as threads:
            return (_demo if args.command == "demo" else _compare)(args, argv, threads)
    except (BackendMissing, DataError) as err:
        _fail(f"gradsmooth {args.command}: error: {err}")
