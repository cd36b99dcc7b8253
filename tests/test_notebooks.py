"""Every chapter executed top to bottom in smoke mode, once per test run, against the current lib.

The executions use the book's own build code (``tools/build_book.py``) and land in the session's
smoke-book folder, where the site test (tests/test_site.py) renders them: each notebook is
executed once per `make test`. They are also stored in the smoke-mode execution cache.

Two chapters execute at a time, each kernel on one thread (``OMP_NUM_THREADS=1``). They start
with the session, in the background (tests/conftest.py), while the lib and chapter tests run in
this process on one thread; the tests here wait for them. Each kernel's CPU time is checked, not
its wall time, which depends on what else runs.
"""

from __future__ import annotations

import pytest
from conftest import CHAPTER_NOTEBOOKS

# The most CPU time one chapter's kernel may use in smoke mode (it runs on one thread; kernel start
# and imports included, about 8 s of it): a guard against smoke sizes creeping up that does not
# depend on what else this machine runs beside it. It does depend on the host: the slowest
# chapters (02, 06, 07, 25) used 10-11 CPU s on one machine, 20-23 s on another and up to 30 s
# in one slow run there. The aim is 20 s.
SMOKE_SECONDS = 40

pytestmark = pytest.mark.notebook


@pytest.mark.parametrize("notebook", CHAPTER_NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_executes_in_smoke_mode(notebook, smoke_runs, smoke_book):
    run = smoke_runs[notebook.stem]
    assert run["succeeded"], f"{notebook.name} failed in smoke mode:\n{run['error'][-6000:]}"
    result = smoke_book["out"] / "_build" / "results" / f"{notebook.stem}.json"
    assert result.is_file(), f"{notebook.name} stated no result (nnbook.expect)"
    cpu = run["cpu_seconds"]
    assert cpu is not None, f"{notebook.name}: the kernel's CPU time could not be read"
    assert cpu <= SMOKE_SECONDS, (
        f"{notebook.name} used {cpu:.1f} CPU s in smoke mode (at most {SMOKE_SECONDS} s): shrink its "
        "smoke sizes in the config's for_mode call")
