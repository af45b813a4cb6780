"""The training loop of ``gradsmooth demo`` and ``gradsmooth compare``, written once for every framework.

The loop owns what does not depend on the framework: the seeded batches of
`gradsmooth.experiments.data`, when to evaluate, the history rows, the progress callback,
the diagnostics and the learning-rate schedule's shape. A framework module
(`torch_models`, `mlx_models`)
supplies a `Trainer`: it builds the model and the optimizer, takes one training step,
evaluates, and hands over the diagnostics' raw data as NumPy arrays.

A Ctrl-C (KeyboardInterrupt) goes on up out of `train`; the rows appended to
``result.history`` so far stay there.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gradsmooth.diagnostics import adjacent_similarity, block_update_similarity, representation_similarity

from . import diffusion, reasoning
from .data import held_out_batches, train_batches

if TYPE_CHECKING:
    from .runs import RunConfig, RunResult

__all__ = ["ALPHA_SCHEDULES", "AlphaSchedule", "Batch", "Trainer", "TrainerFactory", "WarmupCosine", "train",
           "MODEL_SIZES", "model_size", "held_out", "depth_summary"]

Batch = tuple[np.ndarray, np.ndarray]  # (inputs, targets) as NumPy arrays

# each task's model when the run does not say: blocks (depth), model dimension (width), heads
MODEL_SIZES = {"vit": dict(depth=8, width=64, heads=4), "lm": dict(depth=6, width=128, heads=4),
               "diffusion": dict(depth=6, width=64, heads=4), "rl": dict(depth=6, width=64, heads=4)}


def model_size(config: RunConfig) -> dict[str, int]:
    """The model's ``depth``, ``dim`` and ``heads``: ``config.depth`` and ``config.width`` where
    set, else the task's `MODEL_SIZES`."""
    sizes = MODEL_SIZES[config.task]
    depth = sizes["depth"] if config.depth is None else config.depth
    width = sizes["width"] if config.width is None else config.width
    if depth < 1:
        raise ValueError(f"depth should be a positive integer but is: {depth!r}")
    if width < 1 or width % sizes["heads"]:
        raise ValueError(f"width should be a positive multiple of {sizes['heads']} (the heads) but is: {width!r}")
    return {"depth": depth, "dim": width, "heads": sizes["heads"]}


def held_out(config: RunConfig, data: Any) -> dict[str, list[Batch]] | None:
    """The lm task's fixed evaluation batches by split ("val", and "test" when the text has a
    test part); None for vit (its held-out images are evaluated whole)."""
    if config.task != "lm":
        return None
    splits = {"val": data.val, "test": getattr(data, "test", None)}
    return {name: held_out_batches(text, config.batch_size, config.context)
            for name, text in splits.items() if text is not None}


class Trainer(Protocol):
    """One run's model and optimizer in one framework: the framework-specific pieces of the loop.

    Optional: a trainer whose class sets ``evaluate_first = True`` (rl: the phase-1 model) is
    evaluated once before the first step too, a history row at step 0 without training metrics;
    its ``phase1`` (rl: what phase 1 did) goes into the result; with the diagnostics, its
    ``samples()`` (diffusion: the last evaluation's samples) go into them."""

    def step(self, step: int, x: np.ndarray, y: np.ndarray) -> float | dict[str, float]:
        """Train on one batch at step ``step`` (0-based; the schedule's position) and return its
        loss, or its training metrics by name (``train_loss`` among them; rl: ``train_reward``)."""

    def evaluate(self) -> dict[str, float]:
        """The task's held-out metrics: vit: test_loss and test_acc (and val_loss, val_acc when the
        data has a validation split); lm: val_loss (and test_loss when the text has a test part);
        diffusion: test_loss (and val_loss), the denoising loss on the fixed grid, and
        sample_acc; rl: val_acc and test_acc, greedy exact match."""

    def parameters(self) -> dict[str, np.ndarray]:
        """A copy of every parameter by name, in the model's order."""

    def block_outputs(self, x: Any) -> list[np.ndarray]:
        """Each block's output on the probe ``x`` (the loop's ``_probe``) in evaluation mode,
        flattened to (tokens, features)."""


# builds a Trainer from the run's config, its data and the lm task's held-out batches by split (None for vit)
TrainerFactory = Callable[["RunConfig", Any, "dict[str, list[Batch]] | None"], Trainer]


@dataclass(frozen=True)
class WarmupCosine:
    """The learning-rate schedule of every run: linear warm-up over ``warm`` steps to the peak
    ((step + 1) / warm of it), then cosine decay over ``decay`` steps to ``floor`` x the peak.

    `factor` is the schedule as a multiplier of the peak; a framework with schedules of its
    own (MLX) builds the same curve from ``warm``, ``decay`` and ``floor``."""

    warm: int
    decay: int
    floor: float = 0.1

    @classmethod
    def of(cls, config: RunConfig) -> WarmupCosine:
        """The schedule of ``config``: warm-up over its ``warmup`` fraction of ``steps`` (at least one step)."""
        warm = max(1, int(config.warmup * config.steps))
        return cls(warm, max(1, config.steps - warm))

    def factor(self, step: int) -> float:
        """The multiplier of the peak learning rate at ``step`` (0-based)."""
        if step < self.warm:
            return (step + 1) / self.warm
        t = (step - self.warm) / self.decay
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class AlphaSchedule:
    """Gradient Smoothing's strength as a function of the step (``alpha(step)``, the steps taken
    before this one), from ``start`` at the first step to ``final`` at the last (``steps - 1``),
    with ``T = max(steps - 1, 1)`` and ``u = min(step, T) / T``:

    - ``linear``: ``start + (final - start) u``;
    - ``cosine``: ``final + (start - final) (1 + cos(pi u)) / 2``.

    A constant strength is a number, not a schedule. The adapters take it as it is (the torch
    adapter calls it with the step); MLX's step is an ``mx.array`` under ``mx.compile``, so the MLX
    module builds the same curve from its own schedules (as `WarmupCosine`)."""

    kind: str
    start: float
    final: float
    steps: int

    def __post_init__(self) -> None:
        if self.kind not in ALPHA_SCHEDULES[1:]:
            raise ValueError(f"alpha schedule should be one of {ALPHA_SCHEDULES[1:]} (a constant alpha is a number) "
                             f"but is: {self.kind!r}")
        for name in ("start", "final"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(f"alpha schedule's {name} should be a number in [0, 1] but is: {value!r}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"alpha schedule's steps should be a positive integer but is: {self.steps!r}")
        object.__setattr__(self, "start", float(self.start))
        object.__setattr__(self, "final", float(self.final))

    @property
    def span(self) -> int:
        """``T``: the step at which the schedule reaches ``final`` (the run's last)."""
        return max(self.steps - 1, 1)

    def __call__(self, step: int) -> float:
        u = min(step, self.span) / self.span
        if self.kind == "linear":
            return self.start + (self.final - self.start) * u
        return self.final + (self.start - self.final) * 0.5 * (1 + math.cos(math.pi * u))

    def __str__(self) -> str:
        return f"{self.kind} {self.start:g} to {self.final:g} over {self.steps} steps"


ALPHA_SCHEDULES = ("constant", "linear", "cosine")


def train(config: RunConfig, data: Any, result: RunResult, trainer: TrainerFactory,
          progress: Callable[[int], None] | None = None, diagnose: bool = False) -> None:
    """Train ``config`` on ``data`` with the framework's ``trainer``, appending a row to
    ``result.history`` at every evaluation (so a Ctrl-C leaves what was gathered so far), and,
    with ``diagnose``, the depth diagnostics to ``result.diagnostics`` at the end (they read the
    parameters and run the model on a probe: the training is the same with and without them)."""
    val = held_out(config, data)
    session = trainer(config, data, val)
    result.phase1 = getattr(session, "phase1", None)
    batches = train_batches(config.task, data, config.batch_size, config.context, config.seed)
    outcomes: list[dict[str, float]] = []
    similarities: list[np.ndarray] = []
    if getattr(session, "evaluate_first", False):
        result.history.append({"step": 0} | session.evaluate())
    for step in range(config.steps):
        evaluating = _evaluates(step, config)
        before = session.parameters() if diagnose and evaluating else None
        outcome = session.step(step, *next(batches))
        outcomes.append(outcome if isinstance(outcome, dict) else {"train_loss": outcome})
        if before is not None:
            similarities.append(_update_similarity(before, session.parameters()))
        if evaluating:
            result.history.append(_row(step, outcomes, config.eval_every) | session.evaluate())
        if progress:
            progress(step)
    if diagnose:
        result.diagnostics.update(_diagnostics(session, similarities, _probe(config, data, val)))
        if hasattr(session, "samples"):  # diffusion: the sampler's images, for the demo's figure
            result.diagnostics["samples"] = session.samples()


def _evaluates(step: int, config: RunConfig) -> bool:
    """Whether the loop evaluates after ``step`` (0-based): every ``eval_every`` steps and after the last."""
    return (step + 1) % config.eval_every == 0 or step + 1 == config.steps


def _row(step: int, outcomes: Sequence[dict[str, float]], eval_every: int) -> dict[str, float]:
    """A history row's start: the step count and the mean of each training metric (the loss;
    rl: the reward too) over the last ``eval_every`` steps."""
    recent = outcomes[-eval_every:]
    return {"step": step + 1} | {k: float(np.mean([o[k] for o in recent])) for k in recent[-1]}


def _update_similarity(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> np.ndarray:
    """How alike the blocks' updates of one step are: the step's update is ``after - before``."""
    return block_update_similarity({name: after[name] - before[name] for name in after})


def _probe(config: RunConfig, data: Any, val: dict[str, list[Batch]] | None) -> Any:
    """The inputs the representations are measured on: vit: 256 test images; lm: the first
    validation batch; diffusion: 256 held-out images noised with fixed noise, with their
    timesteps and labels; rl: 256 validation problems with their answers."""
    if config.task == "vit":
        return data.x_test[:256]
    if config.task == "diffusion":
        images, labels = (data.x_val, data.y_val) if data.x_val is not None else (data.x_test, data.y_test)
        return diffusion.probe(images, labels)
    if config.task == "rl":
        return reasoning.probe(data)
    return val["val"][0][0]


def _diagnostics(session: Trainer, similarities: list[np.ndarray], probe: Any) -> dict[str, np.ndarray]:
    """The depth diagnostics: the mean update similarity over the evaluated steps, and the
    similarity of the blocks' representations of ``probe`` after training."""
    return {"update_similarity": np.mean(similarities, axis=0),
            "representation_similarity": representation_similarity(session.block_outputs(probe))}


def depth_summary(diagnostics: dict[str, Any]) -> dict[str, float]:
    """The depth diagnostics as one number each (`gradsmooth.diagnostics.adjacent_similarity`):
    ``adjacent_cka``, the mean linear CKA between adjacent blocks' representations after training,
    and ``adjacent_update_cosine``, the mean cosine similarity of adjacent blocks' updates at the
    evaluated steps."""
    return {"adjacent_cka": adjacent_similarity(diagnostics["representation_similarity"]),
            "adjacent_update_cosine": adjacent_similarity(diagnostics["update_similarity"])}
