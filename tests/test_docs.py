"""The examples in the docs run as written."""

import doctest
import pathlib
import re
import runpy

import gradsmooth

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_package_docstring_example():
    assert doctest.testmod(gradsmooth, raise_on_error=True).attempted > 0


def test_readme_minimal_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## A minimal example\s+```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["smoothed"]["model.embed_tokens.weight"] is scope["updates"]["model.embed_tokens.weight"]


def test_quickstart_runs(capsys):
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert "after smoothing" in capsys.readouterr().out
