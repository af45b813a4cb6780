r"""mkdocs hook: math rendered to MathML when the site is built, nothing loaded when it is read.

``pymdownx.arithmatex`` (generic mode) finds ``$...$`` and ``$$...$$`` in pages and in
docstrings and leaves them as ``<span class="arithmatex">\(...\)</span>`` and
``<div class="arithmatex">\[...\]</div>``; this hook replaces their TeX with the MathML that
``latex2mathml`` (pure Python) writes, which browsers display natively: no script, font or
stylesheet from anywhere.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

# arithmatex's generic output: the tag, and the TeX inside its \( \) or \[ \] wrap
ARITHMATEX = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*(?:\\\((?P<inline>.*?)\\\)|\\\[(?P<block>.*?)\\\])\s*</(?P=tag)>', re.S)


def to_mathml(page_html: str) -> str:
    """``page_html`` with every arithmatex element's TeX replaced by MathML."""

    def render(match: re.Match[str]) -> str:
        block = match["block"] is not None
        tex = html.unescape(match["block"] if block else match["inline"])
        mathml = convert(tex.strip(), display="block" if block else "inline")
        return f'<{match["tag"]} class="arithmatex">{mathml}</{match["tag"]}>'

    return ARITHMATEX.sub(render, page_html)


def on_page_content(html_text, page, config, files):
    return to_mathml(html_text)
