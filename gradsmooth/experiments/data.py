"""The two tasks' data, made locally: no download.

- ``vit``: scikit-learn's bundled 8 x 8 digits images, a fixed train/test split.
- ``lm``: a character-level (UTF-8 byte) corpus: by default the running Python's standard
  library sources, read from disk; any UTF-8 text file instead.
"""

from __future__ import annotations

import pathlib
import sysconfig
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "DigitsData", "TextData", "load_digits_split", "load_text", "train_batches", "val_batches",
           "VOCAB"]

VOCAB = 256  # bytes


class DataError(ValueError):
    """The data cannot serve the task (missing, empty, too short): the message says why."""


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # (n, 8, 8) float32 in [0, 1]
    y_train: np.ndarray  # (n,) int64
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class TextData:
    train: np.ndarray  # (n,) uint8 bytes
    val: np.ndarray
    source: str


def load_digits_split(test_fraction: float = 0.2) -> DigitsData:
    """The digits images, split once with a fixed seed (the split never changes between runs)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return DigitsData(x[train], y[train], x[test], y[test])


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


def load_text(path: str | None, context: int, max_bytes: int = 2_000_000, val_fraction: float = 0.1) -> TextData:
    """A byte-level corpus split into train (first 90%) and validation (last 10%)."""
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
    n_val = int(len(arr) * val_fraction)
    if n_val < context + 1 or len(arr) - n_val < context + 1:
        raise DataError(
            f"data file {source!r} holds {len(arr)} bytes, too short for the context length {context}: "
            f"it needs at least {int((context + 1) / val_fraction) + 1} bytes"
        )
    return TextData(arr[: len(arr) - n_val], arr[len(arr) - n_val :], source)


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
    starts = np.linspace(0, len(data.val) - context - 2, count * batch_size).astype(int)
    chunk = np.stack([data.val[s : s + context + 1] for s in starts]).astype(np.int64)
    return [(chunk[i : i + batch_size, :-1], chunk[i : i + batch_size, 1:]) for i in range(0, len(chunk), batch_size)]
