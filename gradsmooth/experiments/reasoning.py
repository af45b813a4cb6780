"""The rl task, framework-free: reasoning post-training of the small GPT on addition.

The problems are `load_problems`' (``a + b =``, the answer
written least significant digit first, `encode_problems`);
an answer is right when every digit is (exact match). A run has two phases:

1. **Supervised** (phase 1, not compared): cross-entropy on the answer tokens with AdamW at
   `SFT_LR` (no weight decay, gradient norm clipped to 1), batches of `SFT_BATCH`, until the greedy exact-match accuracy
   on the validation problems reaches the target (checked every `SFT_CHECK` steps, at most
   `SFT_MAX_STEPS` steps), so that the policy starts partly right and RL has room. It is
   the same for both arms of a seed: trained once per settings (`phase1_key`) and kept
   (`phase1`), in memory and, when the data names a folder, on disk.
2. **Policy gradient** (phase 2, the compared training), GRPO-style: for each prompt of a batch,
   ``group`` answers sampled at temperature 1 (uniform numbers from the run's seed,
   `Rollouts`), reward 1 for an exact answer else 0, advantages normalised within the
   group, ``A_i = (r_i - mean(r)) / (std(r) + 1e-6)`` (0 when all rewards are equal), and the loss

       L = -mean_i A_i * mean_t log pi(a_it) + kl * mean_it (exp(d_it) - d_it - 1),
       d_it = log pi_ref(a_it) - log pi(a_it)

   (the second term, the k3 estimate of KL(pi || pi_ref) to the phase-1 model, only with ``kl`` > 0).

The metric is the exact-match accuracy of greedy answers on held-out problems (val_acc, test_acc).
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import PROBLEM_VOCAB, ProblemData, encode_problems

if TYPE_CHECKING:
    from .runs import RunConfig

__all__ = ["RL_DEFAULTS", "SFT_LR", "SFT_BATCH", "SFT_CHECK", "SFT_MAX_STEPS", "RLSettings", "Rollouts",
           "answer_start", "context", "decode", "exact_match", "group_advantages", "phase1", "phase1_key", "probe",
           "rl_settings", "rewards", "teacher_forcing", "train_phase1"]

# phase 2's settings when a run does not say: answers sampled per prompt, the KL coefficient,
# and phase 1's target accuracy on the validation problems
RL_DEFAULTS = {"group": 8, "kl": 0.0, "sft_target": 0.3}
# phase 1's recipe (part of its cache key)
SFT_LR = 3e-3
SFT_BATCH = 64
SFT_CHECK = 25
SFT_MAX_STEPS = 4000

NextLogits = Callable[[np.ndarray], np.ndarray]  # token sequences (n, t) -> the last position's logits (n, vocab)


@dataclass(frozen=True)
class RLSettings:
    """A run's rl settings, checked: ``group`` >= 2 samples per prompt, ``kl`` >= 0, ``sft_target`` in (0, 1]."""

    group: int
    kl: float
    sft_target: float


def rl_settings(config: RunConfig) -> RLSettings:
    """``config``'s group, kl and sft_target, each `RL_DEFAULTS`' where None; a bad value
    raises ValueError naming it (before any training)."""
    value = {k: RL_DEFAULTS[k] if getattr(config, k) is None else getattr(config, k) for k in RL_DEFAULTS}
    group, kl, target = value["group"], value["kl"], value["sft_target"]
    if isinstance(group, bool) or not isinstance(group, int) or group < 2:
        raise ValueError(f"group (answers sampled per prompt) should be an integer >= 2 but is: {group!r}")
    if isinstance(kl, bool) or not isinstance(kl, (int, float)) or not (math.isfinite(kl) and kl >= 0):
        raise ValueError(f"kl (the KL coefficient) should be a finite number >= 0 but is: {kl!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"sft_target (phase 1's validation accuracy) should be in (0, 1] but is: {target!r}")
    return RLSettings(group, float(kl), float(target))


def answer_start(digits: int) -> int:
    """The position whose output predicts the first answer token: the prompt's last (``=``)."""
    return 2 * digits + 1


def context(digits: int) -> int:
    """The longest sequence the model reads: a prompt and all but the last answer token."""
    return 3 * digits + 2


def teacher_forcing(prompts: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's input (prompt and answer but its last token) and the answer tokens it learns;
    the logits from `answer_start` on are the answer's."""
    return np.concatenate([prompts, answers[:, :-1]], axis=1), answers


def decode(next_logits: NextLogits, prompts: np.ndarray, length: int,
           uniforms: np.ndarray | None = None) -> np.ndarray:
    """``length`` tokens after each prompt, one at a time: greedy (the largest logit) without
    ``uniforms``; with ``uniforms`` (n, length) in [0, 1), sampled at temperature 1 by inverting
    the softmax's cumulative distribution (token = how many cumulative probabilities are <= u)."""
    seq = prompts
    for i in range(length):
        logits = np.asarray(next_logits(seq), dtype=np.float64)
        if uniforms is None:
            token = logits.argmax(axis=1)
        else:
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
            token = np.minimum((cdf <= uniforms[:, i : i + 1]).sum(axis=1), logits.shape[1] - 1)
        seq = np.concatenate([seq, token[:, None].astype(np.int64)], axis=1)
    return seq[:, prompts.shape[1] :]


def rewards(sampled: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """1.0 where every token of a sampled answer is right, else 0.0, per row."""
    return np.all(sampled == answers, axis=1).astype(np.float64)


def group_advantages(reward: np.ndarray, group: int) -> np.ndarray:
    """Rewards of consecutive groups of ``group`` samples (one prompt each) normalised within the
    group, ``(r - mean) / (std + 1e-6)`` (population std): 0 where a group's rewards are equal."""
    r = reward.reshape(-1, group)
    return ((r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + 1e-6)).reshape(-1)


def exact_match(next_logits: NextLogits, pairs: np.ndarray, digits: int, batch: int = 1000) -> float:
    """The fraction of problems ``pairs`` whose greedy answer is exactly right."""
    prompts, answers = encode_problems(pairs, digits)
    right = [rewards(decode(next_logits, prompts[i : i + batch], digits + 1), answers[i : i + batch])
             for i in range(0, len(prompts), batch)]
    return float(np.concatenate(right).mean())


def probe(data: ProblemData, count: int = 256) -> np.ndarray:
    """The inputs the blocks' representations are measured on: the first ``count`` validation
    problems with their right answers (teacher forcing's input)."""
    return teacher_forcing(*encode_problems(data.val[:count], data.digits))[0]


class Rollouts:
    """The uniform numbers phase 2 samples answers with, drawn from the run's ``seed`` (a stream
    apart from the batches' order): the same for both arms of a seed."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 2])

    def uniforms(self, n: int, length: int) -> np.ndarray:
        return self.rng.random((n, length))


def sft_batches(data: ProblemData, seed: int):
    """Phase 1's endless batches of `SFT_BATCH` training problems, (input, answer) tokens."""
    rng = np.random.default_rng([seed, 3])
    while True:
        yield teacher_forcing(*encode_problems(data.train[rng.integers(0, len(data.train), SFT_BATCH)], data.digits))


def train_phase1(step: Callable[[np.ndarray, np.ndarray], float], accuracy: Callable[[], float], data: ProblemData,
                 seed: int, target: float) -> dict[str, Any]:
    """Phase 1's loop: ``step(inputs, answers)`` on `sft_batches` until ``accuracy()`` (on
    the validation problems) reaches ``target``, checked every `SFT_CHECK` steps, or
    `SFT_MAX_STEPS` steps. Returns what it did: steps, val_acc, reached, seconds."""
    start, batches, acc = time.perf_counter(), sft_batches(data, seed), 0.0
    steps = 0
    while steps < SFT_MAX_STEPS:
        step(*next(batches))
        steps += 1
        if steps % SFT_CHECK == 0:
            acc = accuracy()
            if acc >= target:
                break
    if acc < target:
        warnings.warn(f"phase 1 stopped after {steps} steps (SFT_MAX_STEPS) at validation accuracy {acc:.3f}, short "
                      f"of its target {target:g}: phase 2 starts from there", RuntimeWarning, stacklevel=2)
    return {"steps": steps, "val_acc": acc, "reached": acc >= target, "seconds": round(time.perf_counter() - start, 2)}


def phase1_key(config: RunConfig, data: ProblemData, device: str, sft_target: float) -> dict[str, Any]:
    """What a phase-1 model depends on: the backend, device, seed, model size, problems and recipe."""
    from .loop import model_size

    return {"backend": config.backend, "device": device, "seed": config.seed, **model_size(config),
            "digits": data.digits, "vocab": PROBLEM_VOCAB, "sft_target": sft_target,
            "recipe": {"lr": SFT_LR, "batch": SFT_BATCH, "check": SFT_CHECK, "max_steps": SFT_MAX_STEPS}}


def phase1(key: dict[str, Any], data: ProblemData,
           train: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]) -> tuple[dict[str, np.ndarray], dict]:
    """The phase-1 model of ``key`` (`phase1_key`): its weights by parameter name and what
    training it did. Found in ``data.models``, else in ``data.folder`` (``phase1-<hash>.npz`` and
    ``.json``, written by an earlier process), else trained now by ``train()`` and kept in both."""
    name = "phase1-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    if name in data.models:
        return data.models[name]
    folder = data.folder
    weights_path = folder / f"{name}.npz" if folder is not None else None
    if weights_path is not None and weights_path.is_file():
        try:
            with np.load(weights_path) as stored:
                weights = {k: stored[k] for k in stored.files}
            info = json.loads(weights_path.with_suffix(".json").read_text())["info"]
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"the phase-1 model {str(weights_path)!r} cannot be read ({err}): delete it to train "
                             f"it again") from None
    else:
        weights, info = train()
        if weights_path is not None:
            _write_phase1(weights_path, weights, key, info)
    data.models[name] = (weights, info)
    return weights, info


def _write_phase1(path: pathlib.Path, weights: dict[str, np.ndarray], key: dict[str, Any], info: dict) -> None:
    """The key and info (.json), then the weights (.npz), each written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta, part = path.with_suffix(".json"), path.with_name(path.stem + ".part.npz")
    meta.with_suffix(".part").write_text(json.dumps({"key": key, "info": info}, indent=1))
    meta.with_suffix(".part").replace(meta)
    np.savez(part, **weights)
    part.replace(path)  # last: the weights' file says the model is whole
