"""The tasks' data, made locally: no download.

- ``vit`` and ``diffusion``: scikit-learn's bundled 8 x 8 digits images, a fixed train/test
  split; optionally a validation split held out of the training part (``compare`` chooses
  learning rates on it). The diffusion task sees the images scaled to [-1, 1].
- ``lm``: a character-level (UTF-8 byte) corpus: by default the running Python's standard
  library sources, read from disk; any UTF-8 text file instead: train, then validation, then
  (optionally) test, in that order.
- ``rl``: addition problems ``a + b`` of two numbers of ``digits`` digits, generated in code:
  every pair once, split with a fixed seed into held-out validation and test problems and the
  training problems (`load_problems`).
"""

from __future__ import annotations

import pathlib
import sysconfig
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DataError", "DigitsData", "TextData", "ProblemData", "load_digits_split", "load_text", "load_problems",
           "train_batches", "val_batches", "held_out_batches", "VOCAB", "signed_images", "encode_problems", "PROBLEM_VOCAB"]

VOCAB = 256  # bytes
PLUS, EQUALS = 10, 11  # the rl task's tokens: the digits 0-9 are themselves
PROBLEM_VOCAB = 12


class DataError(ValueError):
    """The data cannot serve the task (missing, empty, too short): the message says why."""


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # (n, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None  # held out of the training part; None when not asked for
    y_val: np.ndarray | None = None


@dataclass(frozen=True)
class ProblemData:
    """The rl task's addition problems: each row an operand pair ``(a, b)``, ``0 <= a, b < 10**digits``.

    ``folder`` is where the phase-1 models trained on them are kept between processes (None: in
    memory only); ``models`` holds them in memory, by the key of their settings
    (`gradsmooth.experiments.reasoning`)."""

    train: np.ndarray  # (n, 2) int64
    val: np.ndarray
    test: np.ndarray
    digits: int
    folder: pathlib.Path | None = None
    models: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class TextData:
    train: np.ndarray  # (n,) uint8 bytes
    val: np.ndarray
    source: str
    test: np.ndarray | None = None  # the last part of the text, after val; None when not asked for


def load_digits_split(test_fraction: float = 0.2, val_fraction: float = 0.0) -> DigitsData:
    """The digits images, split once with a fixed seed (the split never changes between runs).
    With ``val_fraction`` > 0, that fraction of the training part is held out as a validation
    split (with a second fixed seed); the test split is the same either way."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction should be in [0, 1) but is: {val_fraction!r}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    if val_fraction == 0:
        return DigitsData(x[train], y[train], x[test], y[test])
    inner = np.random.default_rng(1).permutation(train)
    n_val = int(round(val_fraction * len(train)))
    val, train = inner[:n_val], inner[n_val:]
    return DigitsData(x[train], y[train], x[test], y[test], x[val], y[val])


def signed_images(images: np.ndarray) -> np.ndarray:
    """Digits images in [0, 1] scaled to [-1, 1] (``2 x - 1``), as the diffusion task sees them."""
    return images * np.float32(2) - np.float32(1)


def load_problems(digits: int = 2, held_out: int = 500, folder: str | pathlib.Path | None = None) -> ProblemData:
    """Every pair ``(a, b)`` of ``digits``-digit numbers (leading zeros allowed) once, shuffled
    with a fixed seed: the first ``held_out`` are the validation problems, the next
    ``held_out`` the test problems, the rest the training problems (the split never changes
    between runs). ``folder``: where phase-1 models are kept (`ProblemData`)."""
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 4:
        raise ValueError(f"digits should be an integer in [1, 4] but is: {digits!r}")
    n = 10**digits
    if isinstance(held_out, bool) or not isinstance(held_out, int) or not 1 <= held_out or 2 * held_out >= n * n:
        raise ValueError(f"held_out should be an integer in [1, {(n * n - 1) // 2}] (two held-out splits and some "
                         f"training problems among the {n * n} problems) but is: {held_out!r}")
    order = np.random.default_rng(0).permutation(n * n)
    pairs = np.stack([order // n, order % n], axis=1).astype(np.int64)  # (n^2, 2)
    return ProblemData(pairs[2 * held_out :], pairs[:held_out], pairs[held_out : 2 * held_out], digits,
                       None if folder is None else pathlib.Path(folder))


def encode_problems(pairs: np.ndarray, digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Addition problems as tokens: prompts ``a + b =`` with each operand's ``digits`` digits
    (leading zeros, most significant first), shape (n, 2 digits + 2); answers: the sum's
    ``digits + 1`` digits, least significant first (the order a carry travels), shape (n, digits + 1)."""
    a, b = pairs[:, 0], pairs[:, 1]
    place = 10 ** np.arange(digits - 1, -1, -1)  # most significant first
    prompts = np.concatenate([a[:, None] // place % 10, np.full((len(a), 1), PLUS), b[:, None] // place % 10,
                              np.full((len(a), 1), EQUALS)], axis=1)
    answers = (a + b)[:, None] // 10 ** np.arange(digits + 1) % 10
    return prompts.astype(np.int64), answers.astype(np.int64)


def _stdlib_text(max_bytes: int) -> tuple[bytes, str]:
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes], f"{root}/*.py"


def load_text(path: str | None, context: int, max_bytes: int = 2_000_000, val_fraction: float = 0.1,
              test_fraction: float = 0.0) -> TextData:
    """A byte-level corpus split into train (the first part), validation (the next
    ``val_fraction``) and, with ``test_fraction`` > 0, test (the last ``test_fraction``).
    With no test split the validation part is the last 10%."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction should be in [0, 1) but is: {test_fraction!r}")
    if path is None:
        data, source = _stdlib_text(max_bytes)
    else:
        p = pathlib.Path(path)
        if p.is_dir():
            raise DataError(f"data file {path!r} is a directory, not a file")
        if not p.is_file():
            raise DataError(f"data file {path!r} does not exist")
        data, source = p.read_bytes()[:max_bytes], str(p)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"data file {path!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not data.strip():
        raise DataError(f"data file {source!r} is empty")
    arr = np.frombuffer(data, dtype=np.uint8)
    n_val, n_test = int(len(arr) * val_fraction), int(len(arr) * test_fraction)
    n_train = len(arr) - n_val - n_test
    if min(n_val, n_train) < context + 1 or (test_fraction and n_test < context + 1):
        smallest = min(val_fraction, test_fraction) if test_fraction else val_fraction
        raise DataError(
            f"data file {source!r} holds {len(arr)} bytes, too short for the context length {context}: "
            f"it needs at least {int((context + 1) / smallest) + 1} bytes"
        )
    test = arr[n_train + n_val :] if test_fraction else None
    return TextData(arr[:n_train], arr[n_train : n_train + n_val], source, test)


def train_batches(task: str, data: DigitsData | TextData | ProblemData, batch_size: int, context: int, seed: int):
    """Endless (inputs, targets) NumPy batches drawn with ``seed``: the same order for every
    backend and both arms of a comparison. vit: (b, 8, 8) images and labels; diffusion: the
    same images in [-1, 1] and their labels; lm: (b, context) byte windows and the next bytes;
    rl: (b, 2 digits + 2) prompts of training problems and (b, digits + 1) answers (`encode_problems`)."""
    rng = np.random.default_rng(seed)
    if task in ("vit", "diffusion"):
        scale = signed_images if task == "diffusion" else (lambda x: x)
        while True:
            idx = rng.integers(0, len(data.y_train), batch_size)
            yield scale(data.x_train[idx]), data.y_train[idx]
    if task == "rl":
        while True:
            yield encode_problems(data.train[rng.integers(0, len(data.train), batch_size)], data.digits)
    n = len(data.train) - context - 1
    while True:
        starts = rng.integers(0, n, batch_size)
        chunk = np.stack([data.train[s : s + context + 1] for s in starts]).astype(np.int64)
        yield chunk[:, :-1], chunk[:, 1:]


def val_batches(data: TextData, batch_size: int, context: int, count: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` fixed validation batches of byte windows spread over the held-out text."""
    return held_out_batches(data.val, batch_size, context, count)


def held_out_batches(text: np.ndarray, batch_size: int, context: int,
                     count: int = 16) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` fixed batches of byte windows spread evenly over ``text`` (validation or test)."""
    starts = np.linspace(0, len(text) - context - 2, count * batch_size).astype(int)
    chunk = np.stack([text[s : s + context + 1] for s in starts]).astype(np.int64)
    return [(chunk[i : i + batch_size, :-1], chunk[i : i + batch_size, 1:]) for i in range(0, len(chunk), batch_size)]
