"""mkdocs hook: code is highlighted when the site is built (Pygments, through
``pymdownx.highlight``), and its stylesheet is written into the site: the theme's own
highlighter (highlight.js) is fetched from a CDN, so it is turned off in mkdocs.yml."""

from __future__ import annotations

from mkdocs.structure.files import File
from pygments.formatters import HtmlFormatter

STYLESHEET = "css/pygments.css"


def on_config(config):
    config.extra_css.append(STYLESHEET)
    return config


def on_files(files, config):
    css = HtmlFormatter(style="default").get_style_defs(".highlight")
    files.append(File.generated(config, STYLESHEET, content=css))
    return files
