"""The two tasks' data, made locally: no download.

- ``vit``: scikit-learn's bundled 8 x 8 digits images, a fixed train/test split; optionally a
  validation split held out of the training part (``compare`` chooses learning rates on it).
- ``lm``: a character-level (UTF-8 byte) corpus: by default the running Python's standard
  library sources, read from disk; any UTF-8 text file instead: train, then validation, then
  (optionally) test, in that order.
"""

from __future__ import annotations

import pathlib
import sysconfig
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "DigitsData", "TextData", "load_digits_split", "load_text", "train_batches", "val_batches",
           "held_out_batches", "VOCAB"]

VOCAB = 256  # bytes


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
    With no test split the validation part is the last 10%, as it always was."""
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


def train_batches(task: str, data: DigitsData | TextData, batch_size: int, context: int, seed: int):
    """Endless (inputs, targets) NumPy batches drawn with ``seed``: the same order for every
    backend and both arms of a comparison. vit: (b, 8, 8) images and labels; lm: (b, context)
    byte windows and the next bytes."""
    rng = np.random.default_rng(seed)
    if task == "vit":
        while True:
            idx = rng.integers(0, len(data.y_train), batch_size)
            yield data.x_train[idx], data.y_train[idx]
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
