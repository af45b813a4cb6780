"""The diffusion task, framework-free: the noise schedule, the training noise, the fixed
evaluation, and the deterministic sampler and its judge.

A class-conditional diffusion transformer (``DiT`` in each framework module) predicts the noise
``eps`` added to an image ``x0`` (the digits in [-1, 1]) at timestep ``t``:

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    loss = mean((eps_hat(x_t, t, y) - eps)^2),

with ``abar`` the cosine schedule of Nichol & Dhariwal (2021) over `TIMESTEPS` steps.
Everything random here is NumPy, drawn from fixed seeds, so that both frameworks and both arms
of a comparison see the same numbers:

- training: each step's timesteps and noise come from the run's seed (`TrainingNoise`);
- evaluation: the denoising loss on the held-out images at each timestep of
  `EVAL_TIMESTEPS`, with noise drawn once from `EVAL_SEED` (`evaluation_set`):
  it does not depend on the training seed;
- samples: DDIM with eta 0 (deterministic) from fixed noise, `SAMPLES_PER_CLASS` per class
  (`ddim_sample`), judged by a classifier fitted on the training images
  (`sample_accuracy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .data import signed_images

__all__ = ["TIMESTEPS", "EVAL_TIMESTEPS", "EVAL_SEED", "SAMPLE_STEPS", "SAMPLES_PER_CLASS", "CLASSES",
           "cosine_alpha_bar", "noised", "timestep_features", "TrainingNoise", "EvalSet", "evaluation_set",
           "probe", "ddim_sample", "denoising_loss", "Evaluation", "fit_judge", "sample_accuracy"]

TIMESTEPS = 1000  # the diffusion's steps: t = 0 (least noise) ... TIMESTEPS - 1 (pure noise, almost)
EVAL_TIMESTEPS = tuple(range(50, TIMESTEPS, 100))  # the evaluation's fixed grid: 50, 150, ..., 950
EVAL_SEED = 20260601  # the evaluation's and the sampler's noise: never a training seed's stream
SAMPLE_STEPS = 25  # DDIM steps of the sampler
SAMPLES_PER_CLASS = 10
CLASSES = 10
PROBE_TIMESTEP = TIMESTEPS // 2  # the representations are measured on images noised to this step

Predict = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x_t, t, y) -> predicted noise, NumPy


def cosine_alpha_bar(steps: int = TIMESTEPS, s: float = 0.008) -> np.ndarray:
    """``abar_t`` for ``t = 0 .. steps - 1`` (float64): ``f(t + 1) / f(0)`` with ``f(u) =
    cos^2((u / steps + s) / (1 + s) * pi / 2)``, each step's ``beta = 1 - abar_t / abar_{t-1}``
    clipped to 0.999 (improved DDPM's cosine schedule)."""
    u = np.arange(steps + 1, dtype=np.float64) / steps
    f = np.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0.0, 0.999)
    return np.cumprod(1 - betas)


ALPHA_BAR = cosine_alpha_bar()


def noised(x0: np.ndarray, t: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` for images (n, 8, 8) at timesteps (n,), float32."""
    a = ALPHA_BAR[t].reshape(-1, 1, 1)
    return (np.sqrt(a) * x0 + np.sqrt(1 - a) * eps).astype(np.float32)


def timestep_features(t: np.ndarray, dim: int) -> np.ndarray:
    """The sinusoidal embedding of timesteps (n,) in ``dim`` features, float32: ``[cos(t w_k),
    sin(t w_k)]`` with ``w_k = 10000^(-k / (dim / 2))``, ``k = 0 .. dim/2 - 1`` (the model's
    input: computed once here so that both frameworks see the same numbers)."""
    half = dim // 2
    w = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    angles = np.asarray(t, dtype=np.float64)[:, None] * w[None]
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@dataclass
class TrainingNoise:
    """Each training step's timesteps (uniform over 0 .. TIMESTEPS - 1) and Gaussian noise,
    drawn from the run's ``seed`` (a stream apart from the batches' order)."""

    seed: int

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng([self.seed, 1])

    def draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` timesteps (int64) and ``n`` noise images (n, 8, 8) float32."""
        t = self.rng.integers(0, TIMESTEPS, n)
        return t, self.rng.standard_normal((n, 8, 8), dtype=np.float32)


@dataclass(frozen=True)
class EvalSet:
    """Fixed noised held-out images: ``x_t``, ``t``, labels ``y`` and the noise ``eps`` to predict."""

    x_t: np.ndarray  # (n, 8, 8) float32
    t: np.ndarray  # (n,) int64
    y: np.ndarray  # (n,) int64
    eps: np.ndarray  # (n, 8, 8) float32

    def batches(self, size: int = 1024):
        """``(x_t, t, y, eps)`` in slices of ``size``."""
        for i in range(0, len(self.t), size):
            yield self.x_t[i : i + size], self.t[i : i + size], self.y[i : i + size], self.eps[i : i + size]


def evaluation_set(images: np.ndarray, labels: np.ndarray) -> EvalSet:
    """Every image (in [0, 1], as loaded) at every timestep of `EVAL_TIMESTEPS`, with noise
    drawn from `EVAL_SEED`: the denoising loss's fixed evaluation, the same for every run."""
    x0 = np.tile(signed_images(images), (len(EVAL_TIMESTEPS), 1, 1))
    t = np.repeat(np.asarray(EVAL_TIMESTEPS, dtype=np.int64), len(images))
    eps = np.random.default_rng(EVAL_SEED).standard_normal(x0.shape, dtype=np.float32)
    return EvalSet(noised(x0, t, eps), t, np.tile(labels, len(EVAL_TIMESTEPS)), eps)


def probe(images: np.ndarray, labels: np.ndarray, count: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs the blocks' representations are measured on: the first ``count`` images noised
    to `PROBE_TIMESTEP` with fixed noise, their timesteps and labels."""
    x0 = signed_images(images[:count])
    t = np.full(len(x0), PROBE_TIMESTEP, dtype=np.int64)
    eps = np.random.default_rng(EVAL_SEED + 1).standard_normal(x0.shape, dtype=np.float32)
    return noised(x0, t, eps), t, labels[:count].astype(np.int64)


def ddim_sample(predict: Predict, steps: int = SAMPLE_STEPS, per_class: int = SAMPLES_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional samples by DDIM with eta 0 from fixed noise: ``per_class`` images of each
    class, and their classes. ``predict(x_t, t, y)`` is the model's noise prediction (NumPy in, out).

    At timesteps ``tau_0 > ... > tau_{steps-1}`` (evenly spaced from TIMESTEPS - 1 to 0):
    ``x0_hat = clip((x - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t), -1, 1)``, ``eps' = (x -
    sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)``, ``x <- sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev)
    eps'`` (``abar_prev = 1`` after the last step: the sample is ``x0_hat``)."""
    y = np.repeat(np.arange(CLASSES, dtype=np.int64), per_class)
    x = np.random.default_rng(EVAL_SEED + 2).standard_normal((len(y), 8, 8), dtype=np.float32)
    taus = np.linspace(TIMESTEPS - 1, 0, steps).round().astype(np.int64)
    for i, t in enumerate(taus):
        a = ALPHA_BAR[t]
        a_prev = ALPHA_BAR[taus[i + 1]] if i + 1 < len(taus) else 1.0
        eps = predict(x, np.full(len(y), t, dtype=np.int64), y).astype(np.float64)
        x0 = np.clip((x - math.sqrt(1 - a) * eps) / math.sqrt(a), -1.0, 1.0)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        x = (math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps).astype(np.float32)
    return x, y


def denoising_loss(predict: Predict, evaluation: EvalSet) -> float:
    """The mean squared error of ``predict``'s noise over the whole ``evaluation`` set (float64 sums)."""
    total = sum(float(np.sum((predict(x_t, t, y).astype(np.float64) - eps) ** 2))
                for x_t, t, y, eps in evaluation.batches())
    return total / evaluation.eps.size


class Evaluation:
    """A run's held-out evaluation, the same for every run and arm: the denoising loss on each
    split's fixed set (``test``, and ``val`` where the data has one: `evaluation_set`), and
    the accuracy of the judge (fitted once, on the training images) on the sampler's images.
    Call it with the model's noise prediction; ``samples`` holds the last call's images."""

    def __init__(self, data) -> None:
        self.sets = {"test": evaluation_set(data.x_test, data.y_test)}
        if data.x_val is not None:
            self.sets["val"] = evaluation_set(data.x_val, data.y_val)
        self.judge = fit_judge(data.x_train, data.y_train)
        self.samples: np.ndarray | None = None

    def __call__(self, predict: Predict) -> dict[str, float]:
        """``<split>_loss`` for each split, and ``sample_acc``."""
        out = {f"{split}_loss": denoising_loss(predict, s) for split, s in self.sets.items()}
        self.samples, classes = ddim_sample(predict)
        out["sample_acc"] = sample_accuracy(self.judge, self.samples, classes)
        return out


def fit_judge(images: np.ndarray, labels: np.ndarray):
    """A classifier of digits (scikit-learn's SVC, deterministic) fitted on training images in
    [0, 1] as loaded, seen in [-1, 1] as the samples are."""
    from sklearn.svm import SVC

    return SVC(gamma="scale").fit(signed_images(images).reshape(len(images), -1), labels)


def sample_accuracy(judge, samples: np.ndarray, classes: np.ndarray) -> float:
    """The fraction of ``samples`` (n, 8, 8) in [-1, 1] that ``judge`` classifies as the class
    they were drawn for."""
    return float(np.mean(judge.predict(samples.reshape(len(samples), -1)) == classes))
