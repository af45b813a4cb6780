"""mkdocs hook: a built page that renders wrong is a warning, so ``mkdocs build --strict`` fails.

Looked for in each page's HTML, outside code blocks:

- a Sphinx role left as text (``:class:`X` ``): docstrings cross-reference in Markdown,
  ``[X][gradsmooth.X]``;
- TeX left unrendered (``$$``, arithmatex's ``\\(`` or ``\\[`` wrap);
- a reST literal-block marker (a paragraph ending in ``::``): code is fenced;
- a private base class in a ``Bases:`` line;
- an API heading anchored by something other than an import path (``gradsmooth.…``);
- anything the page loads from the network (a script, stylesheet, image, frame or CSS
  ``url()`` with a remote address): the site is read offline.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger("mkdocs.hooks.checks")

ROLES = "class|func|meth|mod|data|attr|obj|exc|const|ref|term|py:[a-z]+"
RAW_ROLE = re.compile(rf":(?:{ROLES}):(?:`|<code>)")
PRE = re.compile(r"<pre\b.*?</pre>", re.S)
CODE = re.compile(r"<code\b.*?</code>", re.S)
TAG = re.compile(r"<[^>]+>")
# arithmatex's generic wrap, left when a page's math was not turned into MathML
UNRENDERED_MATH = re.compile(r"\$\$|class=\"arithmatex\">\s*\\[(\[]")
LITERAL_MARKER = re.compile(r"::\s*</p>")
BASES = re.compile(r"Bases:(.*?)</p>", re.S)
BASE_NAME = re.compile(r'title="([^"]+)"|>([^<>,\s]+)<')
DOC_HEADING = re.compile(r'<h\d id="([^"]+)"\s+class="doc doc-heading"')
# what a browser fetches by itself: sources of scripts, images, frames and media, stylesheets and
# icons (a <link rel="canonical"> or "next" only names a page), and CSS url()
LOADED = re.compile(r"<(?:script|img|iframe|source|audio|video|embed)\b[^>]*?\bsrc=\"([^\"]*)\""
                    r"|<link\b(?=[^>]*\brel=\"[^\"]*(?:stylesheet|icon|preload|prefetch|manifest))"
                    r"[^>]*?\bhref=\"([^\"]*)\""
                    r"|url\(\s*['\"]?([^'\")]*)", re.S)
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)


def _private(path: str) -> bool:
    return any(part.startswith("_") and not part.endswith("__") for part in path.split("."))


def _excerpt(text: str, match: re.Match[str]) -> str:
    """The match and some text either side, without tags."""
    before, after = TAG.sub("", text[:match.start()])[-60:], TAG.sub("", text[match.end():])[:40]
    return " ".join((before + match.group(0) + after).split())


def problems(page_html: str) -> list[str]:
    """What renders wrong in one built page, each as a short message (none: an empty list)."""
    found = []
    # outside code: a role left as text is ":class:" before a <code> element (kept, emptied)
    prose = CODE.sub("<code></code>", PRE.sub("", page_html))
    for pattern, what in ((RAW_ROLE, "a Sphinx role left as text"), (UNRENDERED_MATH, "unrendered TeX"),
                          (LITERAL_MARKER, "a reST literal-block marker '::'")):
        for match in pattern.finditer(prose):
            found.append(f"{what}: {_excerpt(prose, match)!r}")
    for bases in BASES.finditer(page_html):
        names = [title or text for title, text in BASE_NAME.findall(bases.group(1))]
        found += [f"a private base class shown: Bases: {name}" for name in names if _private(name)]
    found += [f"an API heading not anchored by its import path: {anchor}"
              for anchor in DOC_HEADING.findall(page_html) if not anchor.startswith("gradsmooth.")]
    for addresses in LOADED.findall(page_html):
        address = "".join(addresses)
        if REMOTE.match(address.strip()):
            found.append(f"loaded from the network: {address}")
    return found


def on_post_page(output, page, config):
    for problem in problems(output):
        log.warning("%s: %s", page.file.src_uri, problem)
    return output
