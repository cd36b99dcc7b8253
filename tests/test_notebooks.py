"""Every chapter executed top to bottom in smoke mode, once per test run, against the current lib.

The executions use the book's own build code (``tools/build_book.py``) and land in the session's
smoke-book folder, where the site test (tests/test_site.py) renders them: each notebook is
executed once per `make test`. They are also stored in the smoke-mode execution cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [ROOT / f"{e['file']}.ipynb" for part in TOC["parts"] for e in part["chapters"]
            if e["file"].startswith("notebooks/")]
SMOKE_SECONDS = 20  # the most one chapter may take in smoke mode

pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(notebook, build_book, smoke_book):
    saved = dict(os.environ)
    try:
        run = build_book.run_chapter(notebook, "smoke", smoke_book["out"], store=build_book.cache_dir(),
                                     reuse=False)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    smoke_book["runs"][notebook.stem] = run
    assert run["succeeded"], f"{notebook.name} failed in smoke mode:\n{run['error'][-6000:]}"
    result = smoke_book["out"] / "_build" / "results" / f"{notebook.stem}.json"
    assert result.is_file(), f"{notebook.name} stated no result (nnbook.expect)"
    assert run["seconds"] <= SMOKE_SECONDS, (
        f"{notebook.name} took {run['seconds']:.1f} s in smoke mode (at most {SMOKE_SECONDS} s): shrink its "
        "smoke sizes in the config's for_mode call")
