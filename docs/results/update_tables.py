"""Rewrites every table between ``<!-- report [--reported NAME] DIR [DIR ...] -->`` and
``<!-- end report -->`` in README.md and docs/results/README.md with what ``gradsmooth report``
prints for those arguments (one folder: its tables; several: the overview; ``--reported NAME``:
the overview of that reported number). Run from the repository root after regenerating results;
tests/test_docs.py checks that the tables are that output.

    python docs/results/update_tables.py
"""

import pathlib
import re
import sys

from gradsmooth.compare import overview, render

FILES = ["README.md", "docs/results/README.md"]
MARKER = re.compile(r"(<!-- report ([^>]+?) -->\n)(.*?)(<!-- end report -->)", re.S)


def report(arguments: list[str]) -> str:
    """What ``gradsmooth report ARGUMENTS`` prints (without redrawing plots), in a Markdown file:
    folders, or ``--reported NAME`` and folders."""
    if arguments[0] == "--reported":
        return overview(arguments[2:], reported=arguments[1])
    return render(arguments[0], draw=False) if len(arguments) == 1 else overview(arguments)


def update(path: pathlib.Path) -> int:
    text = path.read_text()
    new, count = MARKER.subn(lambda m: m.group(1) + report(m.group(2).split()) + "\n" + m.group(4), text)
    path.write_text(new)
    return count


if __name__ == "__main__":
    for name in FILES:
        print(f"{name}: {update(pathlib.Path(name))} tables", file=sys.stderr)
