"""Sphinx extension for this book's site build.

* Serves MathJax from the installed ``jupyter-server-mathjax`` package: its files are copied
  into ``_static/mathjax`` so that equations render with no network (``mathjax_path`` in
  ``_config.yml`` points there).
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


def setup(app):
    _mathjax_source()  # fail early, with an ImportError naming the package, if it is missing
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
