"""Run a docs/recipes page: its ``python`` code blocks, in order, in one namespace, in a fresh
folder (the pages write their checkpoints to relative paths). The tests run the pages as
written, so a page cannot drift from what works."""

import pathlib
import re

import pytest

RECIPES = pathlib.Path(__file__).resolve().parents[2] / "docs" / "recipes"


def code_blocks(page: str) -> list[str]:
    """The ``python`` fenced blocks of ``docs/recipes/<page>.md``, in order (at least one)."""
    text = (RECIPES / f"{page}.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks, f"docs/recipes/{page}.md has no python code block"
    return blocks


def run_blocks(page: str, scope: dict | None = None) -> dict:
    """Execute every python block of ``page`` in ``scope`` (a fresh namespace by default); return it."""
    scope = {"__name__": "__main__"} if scope is None else scope
    for i, block in enumerate(code_blocks(page)):
        exec(compile(block, f"docs/recipes/{page}.md[block {i}]", "exec"), scope)
    return scope


@pytest.fixture
def run_recipe(tmp_path, monkeypatch):
    """``run_recipe(page, scope=None)``: run the page's code in ``tmp_path``; the namespace it leaves."""
    monkeypatch.chdir(tmp_path)

    def run(page: str, scope: dict | None = None) -> dict:
        return run_blocks(page, scope)

    return run
