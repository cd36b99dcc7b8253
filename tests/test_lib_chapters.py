"""nnbook.chapters: a chapter's definition cells as a module, found in the repository or fetched."""

from __future__ import annotations

import json
import traceback

import pytest

import nnbook.chapters as chapters
from nnbook.cache import DataUnavailable


def _write(folder, name, *cells):
    folder.mkdir(parents=True, exist_ok=True)
    nb = {"cells": [{"id": f"c{i}", "cell_type": "code", "source": src, "outputs": [],
                     "execution_count": None, "metadata": {"tags": tags}}
                    for i, (src, tags) in enumerate(cells)],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_number_and_full_name_load_the_same_chapter():
    # catches: the number and the name resolving to different notebooks or module objects
    by_number = chapters.load_chapter("04")
    path = chapters.notebook_path("04")
    assert path.stem != "04" and chapters.load_chapter(path.stem) is by_number
    assert by_number.__file__ == str(path) and hasattr(by_number, "LeNet5")


@pytest.mark.parametrize("bad", ["4", "x04", "04-lenet", "04_LeNet", "../04_x"])
def test_malformed_chapter_names_are_refused(bad):
    # catches: a path or a typo passed to glob (matching nothing or something unintended)
    with pytest.raises(ValueError, match="chapter must be"):
        chapters.notebook_path(bad)


def test_only_definition_cells_run_and_a_traceback_names_the_cell(tmp_path, monkeypatch):
    # catches: demonstration cells executed on import; tracebacks without notebook and cell
    folder = tmp_path / "notebooks"
    _write(folder, "98_demo", ("X = 1\n", ["definitions"]), ("raise SystemExit\n", []),
           ("def f():\n    return 1 / 0\n", ["definitions"]))
    _write(folder, "99_empty", ("print('no definitions')\n", []))
    monkeypatch.setattr(chapters, "notebooks_dir", lambda: folder)
    module = chapters.load_chapter("98")
    assert module.X == 1 and module.__name__ == "chapters.ch98_demo"
    with pytest.raises(ZeroDivisionError) as info:
        module.f()
    assert "notebooks/98_demo.ipynb, cell 2" in "".join(traceback.format_tb(info.tb))
    with pytest.raises(ValueError, match="no cells tagged"):
        chapters.load_chapter("99")


def test_outside_a_checkout_a_full_name_is_read_from_the_cache_or_fetched(fresh_cache, monkeypatch):
    # catches: a notebook opened alone (Colab) failing although the chapter is cached, or a
    # failed download reported as something other than DataUnavailable
    monkeypatch.setattr(chapters, "notebooks_dir", lambda: None)
    with pytest.raises(ValueError, match="named in full"):
        chapters.notebook_path("04")

    def offline(url, timeout):
        raise OSError("no network")

    monkeypatch.setattr(chapters.urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailable, match="97_cached.ipynb"):
        chapters.notebook_path("97_cached")
    cached = _write(fresh_cache / "notebooks", "97_cached", ("Y = 2\n", ["definitions"]))
    assert chapters.notebook_path("97_cached") == cached


def test_a_fetched_notebook_is_stored_once(fresh_cache, monkeypatch):
    # catches: fetching on every call, or storing an error page as a notebook
    monkeypatch.setattr(chapters, "notebooks_dir", lambda: None)
    body = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    calls = []

    class Response:
        def __init__(self, text):
            self.text = text

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return self.text.encode()

    def fake(url, timeout):
        calls.append(url)
        return Response("<html>rate limited</html>" if "96_" in url else body)

    monkeypatch.setattr(chapters.urllib.request, "urlopen", fake)
    path = chapters.notebook_path("95_fetched")
    assert path.read_text() == body and calls == [f"{chapters.REPOSITORY_RAW}/95_fetched.ipynb"]
    assert chapters.notebook_path("95_fetched") == path and len(calls) == 1
    with pytest.raises(DataUnavailable):
        chapters.notebook_path("96_error_page")
    assert not (fresh_cache / "notebooks" / "96_error_page.ipynb").exists()


def test_the_repository_notebooks_are_found_from_elsewhere(tmp_path, monkeypatch):
    # catches: the loader working only when the current directory is the repository
    monkeypatch.chdir(tmp_path)
    folder = chapters.notebooks_dir()
    assert folder is not None and (folder / chapters.notebook_path("04").name).is_file()


def test_notebooks_are_fetched_from_the_books_own_repository():
    # catches: the fetch address drifting from the repository the book names in _config.yml
    from pathlib import Path

    import yaml

    url = yaml.safe_load((Path(__file__).parents[1] / "_config.yml").read_text())["repository"]["url"]
    owner_name = url.removeprefix("https://github.com/").rstrip("/")
    assert chapters.REPOSITORY_RAW == f"https://raw.githubusercontent.com/{owner_name}/main/notebooks"
