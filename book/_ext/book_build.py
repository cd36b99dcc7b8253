"""Sphinx extension for this book's site build.

* Serves MathJax from the installed ``jupyter-server-mathjax`` package: its files are copied
  into ``_static/mathjax`` so that equations render with no network (``mathjax_path`` in
  ``_config.yml`` points there).
* Drops repeated identical scripts from each page. Sphinx 7 hands a page the inline scripts that
  sphinx-thebe and sphinx-togglebutton add while the build runs twice (once with the file name
  None, once with ""); the second copy of sphinx-thebe's re-declares a ``const`` and throws a
  JavaScript error in the browser.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _mathjax_source() -> Path:
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "MathJax.js").is_file():
        shutil.copytree(_mathjax_source(), target, dirs_exist_ok=True)


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


def setup(app):
    _mathjax_source()  # fail early, with an ImportError naming the package, if it is missing
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
