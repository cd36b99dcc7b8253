"""Import a chapter's definitions straight from its notebook, so tests (and tools such as the
chapter 16 training script for several processes) use the chapter's own code.

A chapter marks the cells that only *define* things (imports, functions, classes, config
dataclasses, constants) with the cell tag ``definitions``. :func:`load_chapter` executes exactly
those cells, in order, into a fresh module, the way ``import`` would run a file: nothing trains,
loads data or draws. Each cell is compiled under the name ``<notebooks/NN_name.ipynb, cell K>``
and its source registered with ``linecache``, so a traceback names the notebook and the cell
and shows the failing line.

    ch04 = load_chapter("04")          # or load_chapter("04_convolution_lenet")
    ch04.conv2d(x, w)                  # the notebook's own function
"""

from __future__ import annotations

import functools
import json
import linecache
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TAG = "definitions"


def notebook_path(chapter: str) -> Path:
    """The notebook of a chapter given by number (``"04"``) or full name."""
    matches = sorted(NOTEBOOKS.glob(f"{chapter}*.ipynb"))
    if len(matches) != 1:
        raise ValueError(f"chapter {chapter!r} must name one notebook in {NOTEBOOKS}; "
                         f"found {[m.name for m in matches]}")
    return matches[0]


def definition_cells(path: Path) -> list[tuple[int, str]]:
    """``(cell index, source)`` of the notebook's cells tagged ``definitions``, in order."""
    cells = json.loads(path.read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells)
            if c["cell_type"] == "code" and TAG in c.get("metadata", {}).get("tags", [])]


@functools.cache
def load_chapter(chapter: str) -> types.ModuleType:
    """Execute a chapter's definition cells into a module ``chapters.<notebook name>``.

    Raises:
        ValueError: the chapter has no definition cells.
    """
    path = notebook_path(chapter)
    cells = definition_cells(path)
    if not cells:
        raise ValueError(f"{path.name} has no cells tagged {TAG!r}")
    name = f"chapters.ch{path.stem}"
    module = types.ModuleType(name, f"The definitions of {path.name}.")
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    for index, source in cells:
        filename = f"<{path.relative_to(ROOT)}, cell {index}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the notebook's own cell
    return module
