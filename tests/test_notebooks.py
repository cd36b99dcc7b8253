"""Every chapter executed top to bottom in smoke mode, once per test run, against the current lib.

The executions use the book's own build code (``tools/build_book.py``) and land in the session's
smoke-book folder, where the site test (tests/test_site.py) renders them: each notebook is
executed once per `make test`. They are also stored in the smoke-mode execution cache.

Two chapters execute at a time, each kernel on one thread (``OMP_NUM_THREADS=1``), so the two
cores are used without PyTorch's thread pools spinning against each other.
"""

from __future__ import annotations

import pytest
from conftest import CHAPTER_NOTEBOOKS

# The most one chapter may take in smoke mode, on the one core it gets while another chapter runs
# on the other (kernel start and imports included): a guard against smoke sizes creeping up.
# About 12 s of it is fixed (kernel, setup cell, imports); chapters with many sections (22, 23)
# take 28-30 s on this 2-core machine.
SMOKE_SECONDS = 40

pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("notebook", CHAPTER_NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(notebook, smoke_runs, smoke_book):
    run = smoke_runs[notebook.stem]
    assert run["succeeded"], f"{notebook.name} failed in smoke mode:\n{run['error'][-6000:]}"
    result = smoke_book["out"] / "_build" / "results" / f"{notebook.stem}.json"
    assert result.is_file(), f"{notebook.name} stated no result (nnbook.expect)"
    assert run["seconds"] <= SMOKE_SECONDS, (
        f"{notebook.name} took {run['seconds']:.1f} s in smoke mode (at most {SMOKE_SECONDS} s): shrink its "
        "smoke sizes in the config's for_mode call")
