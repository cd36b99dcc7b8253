"""The book's files: clean notebooks, the setup cell's URL, the table of contents, lint.

(Executing every notebook in smoke mode is nbmake's job: `pytest` collects notebooks/ too.)
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_no_stored_outputs(path):
    dirty = [i for i, c in enumerate(cells(path)) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_promise_and_setup_cell(path):
    first, setup = cells(path)[:2]
    title = source(first)
    number = path.stem[:2]
    assert first["cell_type"] == "markdown" and title.startswith(f"# {number} · "), title[:60]
    assert "**Expected result" in title and "**Runtime" in title, f"{path.name}: state result and runtime"
    code = source(setup)
    assert setup["cell_type"] == "code" and '"google.colab" in sys.modules' in code
    urls = re.findall(r"git\+(\S+?)[\"']", code)
    assert urls == [REPO_URL], (f"{path.name}: the setup cell installs from {urls}, but _config.yml's "
                                f"repository.url is {REPO_URL}; update the setup cell")
    assert "nnbook.setup()" in code


def test_repository_url_appears_in_exactly_one_setting():
    config_text = (ROOT / "_config.yml").read_text()
    assert config_text.count(REPO_URL) == 1
    for path in [ROOT / "README.md", *(ROOT / "book").rglob("*.md")]:
        assert REPO_URL not in path.read_text() or path.name == "README.md", path


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    missing = [p.stem for p in NOTEBOOKS if f"notebooks/{p.stem}" not in toc]
    assert not missing, f"add to _toc.yml: {missing}"


def test_ruff_is_clean_on_lib_tests_notebooks_and_tools():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed (it is in requirements.txt)"
    done = subprocess.run([ruff, "check", "lib", "tests", "notebooks", "tools"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_execution_cache_key_tracks_notebook_lib_and_mode(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "tools" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    fake_root = tmp_path / "book"
    shutil.copytree(ROOT / "lib", fake_root / "lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, fake_root / name)
    (fake_root / "notebooks").mkdir()
    nb = fake_root / "notebooks" / "01_x.ipynb"
    nb.write_text('{"cells": []}')
    monkeypatch.setattr(build_book, "ROOT", fake_root)
    key = build_book.inputs_key(nb, "full")
    assert key == build_book.inputs_key(nb, "full")
    assert key != build_book.inputs_key(nb, "smoke")
    (fake_root / "lib" / "nnbook" / "train.py").write_text("# changed\n")
    assert build_book.inputs_key(nb, "full") != key
