"""Experiments: the tasks, runs and reports behind ``gradsmooth demo`` and ``gradsmooth compare``.

Framework-free: data comes as NumPy arrays, and each backend (``gradsmooth.backends.torch``,
``gradsmooth.backends.mlx``) supplies the same models and a ``train`` function.
"""

from .data import DataError, DigitsData, TextData, load_digits_split, load_text
from .runs import RunConfig, RunResult, compare, run

__all__ = ["DataError", "DigitsData", "TextData", "RunConfig", "RunResult", "compare", "load_digits_split",
           "load_text", "run"]
