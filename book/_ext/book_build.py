"""Sphinx extension for this book's site build.

* Serves MathJax 3 from the installed ``sphinx-mathjax-offline`` package (MathJax's own
  browser build, with its fonts): its files are copied into ``_static/mathjax`` so that equations
  render with no network (``mathjax_path`` in ``_config.yml`` points there).
* Drops repeated identical scripts from each page. Sphinx 7 hands a page the inline scripts that
  sphinx-thebe and sphinx-togglebutton add while the build runs twice (once with the file name
  None, once with ""); the second copy of sphinx-thebe's re-declares a ``const`` and throws a
  JavaScript error in the browser.
* Moves an equation's ``\\tag{..}`` out of the ``split`` environment Sphinx wraps around any
  displayed equation holding ``\\\\`` (a matrix or ``cases`` row break): MathJax 3 allows a tag
  on the whole display, not inside ``split``.
* Adds ``static/book.css``: a displayed equation wider than the column scrolls sideways.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

MATHJAX_PACKAGE = "sphinx-mathjax-offline"  # its import name has hyphens: found by spec, not imported


def _mathjax_source() -> Path:
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the site serves MathJax from the {MATHJAX_PACKAGE} package; "
                          f"pip install -r requirements.txt")
    source = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    if not (source / "tex-chtml.js").is_file():
        raise ImportError(f"{source} holds no tex-chtml.js")
    return source


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(_mathjax_source(), target, dirs_exist_ok=True)


TAG_IN_SPLIT = re.compile(r"\\begin\{split\}((?:(?!\\end\{split\}).)*?)(\\tag\{[^{}]*\})(.*?)\\end\{split\}",
                          re.S)


def _tags_out_of_split(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body")
    if body and "\\tag{" in body:
        context["body"] = TAG_IN_SPLIT.sub(r"\\begin{split}\1\3\\end{split}\2", body)


def _drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if scripts:
        seen, unique = set(), []
        for script in scripts:  # an inline script's file is None in one copy and "" in the other
            key = (str(script.filename or ""), script.priority, tuple(sorted(script.attributes.items())))
            if key not in seen:
                seen.add(key)
                unique.append(script)
        context["script_files"] = unique


def _add_static(app, config) -> None:
    config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    _mathjax_source()  # fail early, with an ImportError naming the package, if it is missing
    app.connect("config-inited", _add_static)
    app.add_css_file("book.css")
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _drop_repeated_scripts)
    app.connect("html-page-context", _tags_out_of_split)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
