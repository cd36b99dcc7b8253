"""Import a chapter's definitions straight from its notebook, so that tests, tools and later
chapters (chapter 27 compares the book's architectures) use the chapter's own code.

A chapter marks the cells that only *define* things (imports, functions, classes, config
dataclasses, constants) with the cell tag ``definitions``. :func:`load_chapter` executes exactly
those cells, in order, into a fresh module, the way ``import`` would run a file: nothing trains,
loads data or draws. Each cell is compiled under the name ``<notebooks/NN_name.ipynb, cell K>``
and its source registered with ``linecache``, so a traceback names the notebook and the cell
and shows the failing line.

    ch04 = load_chapter("04")                    # or load_chapter("04_convolution_lenet")
    ch04.conv2d(x, w)                            # the notebook's own function

Where the notebooks are: the ``notebooks/`` folder of the book's repository, found from the
working directory (a notebook runs in ``notebooks/``, a test or tool in the repository) or from
this library's own checkout (an editable install). A notebook opened alone (e.g. in Colab) has
no such folder: then a chapter named in full is fetched once from the book's repository into the
data cache (see :mod:`nnbook.cache`).
"""

from __future__ import annotations

import functools
import json
import linecache
import re
import sys
import types
import urllib.request
from pathlib import Path

from .cache import DataUnavailable, data_dir

TAG = "definitions"
REPOSITORY_RAW = "https://raw.githubusercontent.com/nnbook/neural-architectures/main/notebooks"
_NAME = re.compile(r"\d\d(_[a-z0-9_]+)?")


def notebooks_dir() -> Path | None:
    """The repository's ``notebooks/`` folder, or None when this runs outside a checkout."""
    here = Path.cwd().resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    for base in candidates:
        for folder in (base, base / "notebooks"):
            if folder.name == "notebooks" and any(folder.glob("[0-9][0-9]_*.ipynb")):
                return folder
    return None


def notebook_path(chapter: str, folder: Path | None = None) -> Path:
    """The notebook of a chapter given by number (``"04"``) or full name.

    Outside a checkout, a chapter given by its full name is fetched from the book's repository
    (once; later calls read the data cache).

    Raises:
        ValueError: ``chapter`` is neither ``"NN"`` nor ``"NN_name"``, or it names no notebook
            (or several).
        DataUnavailable: outside a checkout, the notebook is not cached and cannot be fetched.
    """
    if not _NAME.fullmatch(chapter):
        raise ValueError(f"chapter must be a number such as '04' or a notebook name such as "
                         f"'04_convolution_lenet'; got {chapter!r}")
    folder = folder or notebooks_dir()
    if folder is None:
        return _fetched(chapter)
    matches = sorted(folder.glob(f"{chapter}.ipynb" if "_" in chapter else f"{chapter}_*.ipynb"))
    if len(matches) != 1:
        raise ValueError(f"chapter {chapter!r} must name one notebook in {folder}; "
                         f"found {[m.name for m in matches]}")
    return matches[0]


def _fetched(name: str) -> Path:
    if "_" not in name:
        raise ValueError(f"outside the book's repository a chapter must be named in full "
                         f"(e.g. '04_convolution_lenet'); got {name!r}")
    path = data_dir() / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        url = f"{REPOSITORY_RAW}/{name}.ipynb"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                text = response.read().decode()
            json.loads(text)  # a notebook, not an error page
        except (OSError, ValueError) as error:
            raise DataUnavailable(f"{name}.ipynb is not in a local copy of the book and could "
                                  f"not be fetched from {url}: {error}") from error
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return path


def definition_cells(path: Path) -> list[tuple[int, str]]:
    """``(cell index, source)`` of the notebook's cells tagged ``definitions``, in order."""
    cells = json.loads(Path(path).read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells)
            if c["cell_type"] == "code" and TAG in c.get("metadata", {}).get("tags", [])]


def load_chapter(chapter: str) -> types.ModuleType:
    """Execute a chapter's definition cells into a module ``chapters.ch<notebook name>``, once:
    later calls (by number or by name) return the same module.

    Raises:
        ValueError: the chapter names no notebook, or its notebook has no definition cells.
    """
    return _load(notebook_path(chapter))


@functools.cache
def _load(path: Path) -> types.ModuleType:
    cells = definition_cells(path)
    if not cells:
        raise ValueError(f"{path.name} has no cells tagged {TAG!r}")
    name = f"chapters.ch{path.stem}"
    module = types.ModuleType(name, f"The definitions of {path.name}.")
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    label = f"{path.parent.name}/{path.name}"
    for index, source in cells:
        filename = f"<{label}, cell {index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the notebook's own cell
    return module
