"""The book's files: clean notebooks, the setup cell's URL, the table of contents, lint, the
build's execution cache. (tests/test_notebooks.py executes every chapter; tests/test_chapter_contract.py
checks what each chapter's code must do.)
"""

from __future__ import annotations

import importlib.metadata
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


def _notebook(path: Path, *sources: str) -> Path:
    cells = [{"id": f"c{i}", "cell_type": "code", "metadata": {}, "source": src, "outputs": [],
              "execution_count": None} for i, src in enumerate(sources)]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_execution_cache_key_tracks_notebook_imported_lib_and_mode(tmp_path, monkeypatch, build_book):
    fake_root = tmp_path / "book"
    shutil.copytree(ROOT / "lib", fake_root / "lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, fake_root / name)
    (fake_root / "notebooks").mkdir()
    nb = _notebook(fake_root / "notebooks" / "01_x.ipynb", "import nnbook\n",
                   "from nnbook.text import shakespeare\n%matplotlib inline\n")
    monkeypatch.setattr(build_book, "ROOT", fake_root)
    lib = fake_root / "lib" / "nnbook"
    deps = {p.name for p in build_book.lib_dependencies(nb, lib)}
    # __init__ imports results, runtime and train; text imports cache (and results imports it too)
    assert {"__init__.py", "results.py", "runtime.py", "train.py", "text.py", "cache.py"} <= deps
    assert "mnist.py" not in deps and "attention.py" not in deps
    monkeypatch.delenv("NNBOOK_SEED", raising=False)
    key = build_book.inputs_key(nb, "full")
    assert key == build_book.inputs_key(nb, "full")
    assert key != build_book.inputs_key(nb, "smoke")
    monkeypatch.setenv("NNBOOK_SEED", "1")  # another initialization is another execution
    assert build_book.inputs_key(nb, "full") != key
    monkeypatch.delenv("NNBOOK_SEED")
    cells = json.loads(nb.read_text())
    cells["cells"].insert(0, {"id": "m0", "cell_type": "markdown", "metadata": {}, "source": "# prose"})
    nb.write_text(json.dumps(cells))
    assert build_book.inputs_key(nb, "full") == key, "prose does not change the outputs"
    cells["cells"][1]["source"] = "import nnbook  # changed code\n"
    nb.write_text(json.dumps(cells))
    assert build_book.inputs_key(nb, "full") != key
    key = build_book.inputs_key(nb, "full")
    (lib / "attention.py").write_text("# a module this chapter does not import\n")
    assert build_book.inputs_key(nb, "full") == key
    (lib / "cache.py").write_text((lib / "cache.py").read_text() + "# changed\n")  # imported through text
    assert build_book.inputs_key(nb, "full") != key
    key = build_book.inputs_key(nb, "full")
    (fake_root / "requirements.txt").write_text("otter-grader==0.0\n")
    assert build_book.inputs_key(nb, "full") == key, "a pin for tools or tests re-executes nothing"
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.0" if name == "numpy" else real(name))
    assert build_book.inputs_key(nb, "full") != key, "a new numpy re-executes the chapter"


def test_lib_imports_are_found_past_magics_and_operator_continuation_lines(build_book):
    """Catches a magic filter that also drops a continuation line starting with `!=` or `%`
    (the cell then no longer parses)."""
    code = ("%time x = 1\n!pip list\nok = (1\n      != 2)\nr = (7\n     % 2)\n"
            "from nnbook.mnist import mnist_split\n")
    assert build_book._imported_lib_modules(code) == {"nnbook.mnist", "nnbook.mnist.mnist_split"}


def test_package_versions_follow_imports_and_their_requirements(build_book):
    """scikit-learn brings scipy (its requirement) but not torch; no import, only Python."""
    names = {v.split("==")[0] for v in build_book.package_versions(["from sklearn import svm"])}
    assert {"scikit-learn", "scipy", "numpy", "python"} <= names and "torch" not in names
    assert build_book.package_versions(["import math\nx = 1"]) == [
        f"python=={sys.version.split()[0]}"]


def test_stored_outputs_go_into_the_current_prose(tmp_path, build_book):
    import nbformat

    nb = _notebook(tmp_path / "01_x.ipynb", "print(1)\n", "x = 2\n")
    done = nbformat.read(nb, as_version=4)
    done.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    done.cells[0].execution_count = 1
    nbformat.write(done, tmp_path / "executed.ipynb")
    current = json.loads(nb.read_text())
    current["cells"].insert(1, {"id": "m1", "cell_type": "markdown", "metadata": {}, "source": "new prose"})
    nb.write_text(json.dumps(current))
    merged = build_book.with_stored_outputs(nb, tmp_path / "executed.ipynb")
    assert [c.cell_type for c in merged.cells] == ["code", "markdown", "code"]
    assert merged.cells[0].outputs[0].text == "1\n" and merged.cells[1].source == "new prose"
    current["cells"][0]["source"] = "print(3)\n"
    nb.write_text(json.dumps(current))
    with pytest.raises(ValueError, match="is not an execution of the code"):
        build_book.with_stored_outputs(nb, tmp_path / "executed.ipynb")


def test_cell_timeout_is_set_once_and_jupyter_book_executes_nothing(build_book):
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert build_book.cell_timeout() == CONFIG["execute"]["timeout"]
    text = (ROOT / "tools" / "build_book.py").read_text()
    assert not re.search(r"TIMEOUT\s*=\s*\d", text)


def test_execution_cache_key_tracks_the_definitions_of_loaded_chapters(tmp_path, monkeypatch, build_book):
    # catches: chapter 27 reusing a stale execution after chapter 04's LeNet changed
    folder = tmp_path / "notebooks"
    folder.mkdir()
    used = _notebook(folder / "04_used.ipynb", "from nnbook.text import shakespeare\n",
                     "print('a demonstration')\n")
    cells = json.loads(used.read_text())
    cells["cells"][0]["metadata"]["tags"] = ["definitions"]
    used.write_text(json.dumps(cells))
    nb = _notebook(folder / "27_user.ipynb", "from nnbook.chapters import load_chapter\n",
                   "lenet = load_chapter('04_used')\n")
    assert build_book.chapter_dependencies(nb) == [used]
    deps = {p.name for p in build_book.lib_dependencies(nb)}
    assert {"chapters.py", "text.py"} <= deps, "the loaded definitions' imports count"
    key = build_book.inputs_key(nb, "full")
    cells["cells"][1]["source"] = "print('another demonstration')\n"
    used.write_text(json.dumps(cells))
    assert build_book.inputs_key(nb, "full") == key, "only definition cells are loaded"
    cells["cells"][0]["source"] += "WIDTH = 2\n"
    used.write_text(json.dumps(cells))
    assert build_book.inputs_key(nb, "full") != key
