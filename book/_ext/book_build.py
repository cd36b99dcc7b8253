"""Sphinx extension for this book's site build.

* Serves MathJax from the installed ``jupyter-server-mathjax`` package: its files are copied
  into ``_static/mathjax`` so that equations render with no network (``mathjax_path`` in
  ``_config.yml`` points there).
* Writes each chapter's execution time, as measured by myst-nb, to
  ``<build>/results/_execution.json`` for the end-of-build table (``tools/report.py``).
"""

from __future__ import annotations

import json
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


def _write_execution_times(app, exception) -> None:
    metadata = getattr(app.env, "nb_metadata", {}) or {}
    times = {}
    for docname, data in sorted(metadata.items()):
        exec_data = data.get("exec_data")
        if exec_data:
            times[Path(docname).name] = {
                "seconds": exec_data.get("runtime"),
                "succeeded": exec_data.get("succeeded"),
                "method": exec_data.get("method"),
            }
    results = Path(app.outdir).parent / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "_execution.json").write_text(json.dumps(times, indent=2) + "\n")


def setup(app):
    _mathjax_source()  # fail early, with an ImportError naming the package, if it is missing
    app.connect("build-finished", _copy_mathjax)
    app.connect("build-finished", _write_execution_times)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
