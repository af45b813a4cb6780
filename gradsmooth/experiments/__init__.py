"""Experiments: the tasks, runs and reports behind ``gradsmooth demo`` and ``gradsmooth compare``.

Framework-free except for one module per framework: data comes as NumPy arrays (``data``), the
training loop is written once (``loop``), and ``torch_models`` / ``mlx_models`` hold the same
models and the framework's part of the loop, built on the adapters' public API. ``runs.BACKENDS``
names them; a framework is imported only when a run needs it.
"""

from .data import DataError, DigitsData, TextData, load_digits_split, load_text
from .runs import RunConfig, RunResult, compare, run

__all__ = ["DataError", "DigitsData", "TextData", "RunConfig", "RunResult", "compare", "load_digits_split",
           "load_text", "run"]
