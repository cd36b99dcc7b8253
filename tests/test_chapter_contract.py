"""The chapter contract: what every chapter notebook must do, checked on all of them.

- Cells tagged ``definitions`` only define (imports, functions, classes, constants) and run
  quietly; ``tools/chapters.py`` imports them, and every chapter has a test module that does.
- No function or class body is written both in a notebook and in ``tests/``.
- A chapter states its result with exactly one ``nnbook.expect`` call and never branches on the
  mode or reads the environment.
- A chapter that trains asks ``nnbook.device()`` for its device.
- Exercise stubs raise ``NotImplementedError``; ``check`` gets the function itself.
- Code lines fit 88 characters, so the website's code cells do not scroll sideways.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import time
from pathlib import Path

import pytest
from chapters import TAG, definition_cells, load_chapter

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MAX_LINE = 88
ALLOWED_TOP_LEVEL = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
ids = dict(ids=lambda p: p.stem)


def code_cells(path: Path) -> list[tuple[int, str]]:
    cells = json.loads(path.read_text())["cells"]
    return [(i, "".join(c["source"])) for i, c in enumerate(cells) if c["cell_type"] == "code"]


def python_of(source: str) -> str:
    """A cell's source with IPython magics and shell escapes blanked out."""
    # `!= y` or `% 2` at the start of a continuation line is Python, not a magic.
    magic = re.compile(r"\s*(%%?[A-Za-z_]|!(?!=))")
    return "\n".join("" if magic.match(line) else line for line in source.splitlines())


def all_code(path: Path) -> str:
    return "\n".join(python_of(s) for _, s in code_cells(path))


def defined_bodies(tree: ast.AST) -> dict[str, str]:
    """name -> normalized source of every function and class defined anywhere in ``tree``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            out[node.name] = ast.dump(ast.Module(body=body, type_ignores=[]), annotate_fields=False)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_definition_cells_only_define(path):
    cells = definition_cells(path)
    assert cells, f"{path.name}: tag the cells that only define things with {TAG!r}"
    for index, source in cells:
        for node in ast.parse(python_of(source)).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            assert isinstance(node, ALLOWED_TOP_LEVEL) or docstring, (
                f"{path.name} cell {index} is tagged {TAG!r} but runs a {type(node).__name__} statement "
                f"at line {node.lineno}; move it to a cell of its own")


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_definitions_import_quietly_and_fast(path):
    import importlib
    import pkgutil

    import matplotlib.pyplot as plt
    import torchvision  # noqa: F401 - imported before the clock starts: only the chapter is timed

    import nnbook

    for module in pkgutil.iter_modules(nnbook.__path__):
        importlib.import_module(f"nnbook.{module.name}")
    plt.close("all")
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        module = load_chapter(path.stem)
    seconds = time.perf_counter() - start
    assert not printed.getvalue(), f"{path.name}: definition cells print:\n{printed.getvalue()[:500]}"
    assert not plt.get_fignums(), f"{path.name}: definition cells draw figures"
    assert seconds < 10, f"{path.name}: definition cells take {seconds:.1f} s; do they train?"
    assert module.__file__ == str(path)


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_every_chapter_has_a_test_module_that_imports_it(path):
    tests = sorted((ROOT / "tests").glob(f"test_ch{path.stem[:2]}_*.py"))
    assert tests, f"{path.name}: add tests/test_ch{path.stem[:2]}_<name>.py"
    text = "\n".join(t.read_text() for t in tests)
    assert re.search(rf"load_chapter\(\"{path.stem[:2]}", text), f"{tests[0].name}: load_chapter the chapter"


def test_no_body_is_written_both_in_a_notebook_and_in_tests():
    notebook_bodies = {}
    for path in NOTEBOOKS:
        for index, source in code_cells(path):
            for name, body in defined_bodies(ast.parse(python_of(source))).items():
                notebook_bodies.setdefault(body, []).append(f"{path.name} cell {index}: {name}")
    repeated = []
    for test in sorted((ROOT / "tests").glob("test_*.py")):
        for name, body in defined_bodies(ast.parse(test.read_text())).items():
            if body in notebook_bodies and len(body) > 120:  # trivial bodies (e.g. `pass`) may repeat
                repeated.append(f"{test.name}: {name} == {notebook_bodies[body]}")
    assert not repeated, "import these from the chapter instead:\n" + "\n".join(repeated)


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_no_chapter_test_redefines_a_chapter_name(path):
    chapter_names = set(defined_bodies(ast.parse(all_code(path))))
    for test in sorted((ROOT / "tests").glob(f"test_ch{path.stem[:2]}_*.py")):
        test_names = {n for n in defined_bodies(ast.parse(test.read_text())) if not n.startswith("test_")}
        clash = sorted(chapter_names & test_names)
        assert not clash, f"{test.name} redefines {clash} of {path.name}; import them with load_chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_result_is_stated_once_without_branching_on_mode(path):
    code = all_code(path)
    calls = len(re.findall(r"\bnnbook\.expect\(", code))
    assert calls == 1, f"{path.name}: state the result with one nnbook.expect (found {calls})"
    for forbidden in ("is_smoke", "nnbook.mode(", "nnbook.record(", "os.environ", "getenv", "NNBOOK_"):
        assert forbidden not in code, f"{path.name} uses {forbidden!r}; sizes belong in the config (for_mode)"


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_a_chapter_that_trains_uses_the_libs_device(path):
    code = all_code(path)
    trains = re.search(r"\.backward\(|nnbook\.fit\(|\.step\(\)", code)
    if trains:
        assert "nnbook.device()" in code, f"{path.name} trains but never asks nnbook.device()"
    assert not re.search(r"device\s*=\s*[\"'](?:cpu|cuda|mps)", code), f"{path.name} hard-codes a device"


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_exercise_stubs_raise_and_checks_get_functions(path):
    tree = ast.parse(all_code(path))
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "check":
            assert len(call.args) == 3 and isinstance(call.args[1], ast.Name | ast.Attribute), (
                f"{path.name} line {call.lineno}: call check(name, function, test) with the function "
                "itself (its stub raises NotImplementedError)")
    assert "return None  # replace" not in all_code(path), f"{path.name}: stubs raise NotImplementedError"


@pytest.mark.parametrize("path", NOTEBOOKS, **ids)
def test_code_lines_fit_the_page(path):
    long = [(i, line) for i, source in code_cells(path) for line in source.splitlines()
            if len(line) > MAX_LINE]
    assert not long, (f"{path.name}: {len(long)} code lines over {MAX_LINE} characters, e.g. cell "
                      f"{long[0][0]}: {long[0][1][:100]!r}")
