"""mkdocs hook: the API reference reads the package as it installs.

pyproject.toml installs ``backends/`` as ``gradsmooth.backends`` and ``reference/`` as
``gradsmooth.reference``. griffe reads source files, not the editable install's import
hook, so it would only find them as top-level ``backends`` and ``reference``, under paths
nobody can import. Before each build this lays out the installed layout in a temporary
folder (symbolic links to the checkout's files: ``gradsmooth/*``, ``gradsmooth/backends``,
``gradsmooth/reference``) and points mkdocstrings' Python handler at it, so every object is
documented, anchored and cross-referenced by its import path, e.g.
``gradsmooth.backends.torch.GradientSmoothing``.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

from mkdocs.plugins import event_priority

# the package's folders in the checkout, by where they install inside gradsmooth/
SUBPACKAGES = {"backends": "backends", "reference": "reference"}

_layouts: list[pathlib.Path] = []


def lay_out(root: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Link ``root``'s gradsmooth/, backends/ and reference/ into ``into`` as one
    ``gradsmooth`` package; returns the folder to search (``into``)."""
    package = into / "gradsmooth"
    package.mkdir(parents=True)
    for entry in (root / "gradsmooth").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to((root / folder).resolve(), target_is_directory=True)
    return into


@event_priority(100)  # before mkdocstrings' on_config, which creates the Python handler
def on_config(config):
    root = pathlib.Path(config.config_file_path).resolve().parent
    folder = pathlib.Path(tempfile.mkdtemp(prefix="gradsmooth-docs-"))
    _layouts.append(folder)
    python = config.plugins["mkdocstrings"].config["handlers"].setdefault("python", {})
    python["paths"] = [str(lay_out(root, folder))]
    return config


def _remove_layouts() -> None:
    while _layouts:
        shutil.rmtree(_layouts.pop(), ignore_errors=True)


def on_post_build(config):
    _remove_layouts()


def on_build_error(error):
    _remove_layouts()


def on_shutdown():
    _remove_layouts()
