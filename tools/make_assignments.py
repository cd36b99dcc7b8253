"""Turn each chapter's coding exercises into a course assignment graded by otter-grader.

    python tools/make_assignments.py [--out _build/assignments] [--chapters 04 16]

For every chapter whose notebook has coding exercises (a stub that raises
``NotImplementedError``, its test function, and a ``check(...)`` cell calling both), this
writes an otter-grader "master" notebook and runs ``otter assign`` on it. Each assignment gets:

- ``student/NN_name.ipynb``: the chapter's definitions (so the exercises run without the
  chapter's training), its exercise section, and one question per coding exercise whose stub
  still raises ``NotImplementedError``; the public test is the chapter's own test function,
  run through ``grader.check``;
- ``autograder/NN_name-autograder_*.zip``: the grader's archive, with the reference solutions
  and a hidden test that runs the grader's own copy of the test function (so a student who
  edits the visible test cannot change the grade).

Nothing is written twice: the reference solution of exercise stub ``f`` is the function
``solved_f`` of the chapter's test module under ``tests/``, which the test suite already checks
with the chapter's test function, and the tests are the chapter's own test functions.

Grade a submission locally (no Docker):
``otter run -a _build/assignments/04_convolution_lenet/autograder/*.zip submission.ipynb``.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_book import chapters  # noqa: E402

CHECK_CALL = re.compile(r'^check\("(?P<title>[^"]+)",\s*(?P<stub>\w+),\s*(?P<test>\w+)\)\s*$')
# The chapters' worked solutions: a MyST admonition titled "Solutions", fenced with 3+ backticks.
SOLUTIONS_BLOCK = re.compile(r"(?ms)^(?P<fence>`{3,})\{admonition\} Solutions.*?^(?P=fence)\s*$")


def package() -> str:
    """The pip requirement of the book's library: its repository, as ``_config.yml`` sets it."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return f"git+{url}"


@dataclass
class Exercise:
    """One coding exercise of a chapter."""

    title: str  # e.g. "Exercise 2 (receptive field)"
    stub: str  # the function the reader completes
    test: str  # the chapter's test function, called as test(stub)
    stub_cell: int  # index of the definitions cell holding the stub
    check_cell: int  # index of the cell calling check(...)

    @property
    def name(self) -> str:
        """The otter question name: ``exercise_2``."""
        return "exercise_" + re.sub(r"\D", "", self.title.split("(")[0])


def _defines(source: str, name: str) -> ast.FunctionDef | None:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def exercises(nb: nbformat.NotebookNode) -> list[Exercise]:
    """The notebook's coding exercises, in order."""
    found = []
    for k, cell in enumerate(nb.cells):
        match = cell.cell_type == "code" and CHECK_CALL.match(cell.source.strip())
        if not match:
            continue
        stub_cells = [i for i, c in enumerate(nb.cells)
                      if c.cell_type == "code" and "definitions" in c.metadata.get("tags", [])
                      and _defines(c.source, match["stub"])]
        if len(stub_cells) != 1:
            raise ValueError(f"{match['title']}: expected one definitions cell defining "
                             f"{match['stub']}; found {len(stub_cells)}")
        found.append(Exercise(match["title"], match["stub"], match["test"], stub_cells[0], k))
    return found


def test_module(notebook: Path) -> Path:
    """The chapter's test module, ``tests/test_chNN_*.py``."""
    matches = sorted((ROOT / "tests").glob(f"test_ch{notebook.name[:2]}_*.py"))
    if len(matches) != 1:
        raise ValueError(f"expected one tests/test_ch{notebook.name[:2]}_*.py; found {matches}")
    return matches[0]


def solution(notebook: Path, stub: str) -> str:
    """Source of the reference solution ``solved_<stub>`` from the chapter's test module,
    renamed to ``stub``, with the test module's ``ch.`` prefix dropped (the solution runs
    among the chapter's own definitions)."""
    path = test_module(notebook)
    source = path.read_text()
    node = _defines(source, f"solved_{stub}")
    if node is None:
        raise ValueError(f"{path.name} has no reference solution solved_{stub}")
    text = ast.get_source_segment(source, node)
    text = text.replace(f"def solved_{stub}(", f"def {stub}(", 1)
    return re.sub(r"\bch\.", "", text)


def _function_lines(source: str, name: str) -> tuple[int, int]:
    """First and last line (0-based, inclusive) of the top-level function ``name``."""
    node = _defines(source, name)
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    return start, node.end_lineno - 1


def question_cell(source: str, ex: Exercise, solved: str) -> str:
    """One question's code: the stub as the student's prompt, the reference solution in
    otter's solution block, then the chapter's test function."""
    lines = source.splitlines()
    first, last = _function_lines(source, ex.stub)
    prompt = lines[first:last + 1]
    block = ['""" # BEGIN PROMPT', *prompt, '""" # END PROMPT',
             "# BEGIN SOLUTION NO PROMPT", *solved.splitlines(), "# END SOLUTION"]
    first, last = _function_lines(source, ex.test)
    return "\n".join(block + ["", ""] + lines[first:last + 1])


def rest_of_cell(source: str, names: list[str]) -> str:
    """A definitions cell without the functions ``names`` (the exercises' stubs and tests)."""
    lines = source.splitlines()
    drop = set()
    for name in names:
        first, last = _function_lines(source, name)
        drop |= set(range(first, last + 1))
    kept = "\n".join(line for k, line in enumerate(lines) if k not in drop).strip()
    code = [line for line in kept.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return kept if code else ""


def _config(notebook: Path) -> str:
    return textwrap.dedent(f"""\
        # ASSIGNMENT CONFIG
        name: {notebook.stem}
        init_cell: false
        check_all_cell: false
        export_cell: false
        run_tests: false
        requirements: requirements.txt
        generate: true
        tests:
          files: false
          ok_format: false
        """)


def _setup(notebook: Path) -> str:
    return textwrap.dedent(f"""\
        # Setup: in Colab, install the book's library and the grader; elsewhere, nothing.
        import sys

        if "google.colab" in sys.modules:
            import subprocess

            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "otter-grader",
                            "{package()}"], check=True)
        import otter

        import nnbook

        nnbook.setup()
        grader = otter.Notebook("{notebook.stem}.ipynb")""")


def _tests(ex: Exercise, test_source: str) -> list[nbformat.NotebookNode]:
    public = (f"def test_{ex.name}({ex.stub}, {ex.test}):\n"
              f"    {ex.test}({ex.stub})\n\n\n"
              f"test_{ex.name}({ex.stub}, {ex.test})")
    # The hidden test runs the grader's copy of the test function among the submission's
    # names (its globals are the notebook's), so editing the visible test changes nothing.
    hidden = (f"# HIDDEN: the grader's own copy of {ex.test}\n"
              f"def test_{ex.name}_grader_copy(env):\n"
              f"    names = dict(env)\n"
              f"    exec({test_source!r}, names)\n"
              f"    names[{ex.test!r}](env[{ex.stub!r}])\n\n\n"
              f"test_{ex.name}_grader_copy(globals())")
    return [nbformat.v4.new_code_cell(public), nbformat.v4.new_code_cell(hidden)]


def _question(notebook: Path, source: str, ex: Exercise) -> list[nbformat.NotebookNode]:
    """The otter cells of one question: config, prompt, solution, public and hidden tests."""
    test_source = ast.get_source_segment(source, _defines(source, ex.test))
    return [nbformat.v4.new_raw_cell(
                f"# BEGIN QUESTION\nname: {ex.name}\npoints: 1\nall_or_nothing: true"),
            nbformat.v4.new_markdown_cell(f"**{ex.title}.** Complete `{ex.stub}` below; the "
                                          "chapter's check tests it."),
            nbformat.v4.new_raw_cell("# BEGIN SOLUTION"),
            nbformat.v4.new_code_cell(question_cell(source, ex, solution(notebook, ex.stub))),
            nbformat.v4.new_raw_cell("# END SOLUTION"),
            nbformat.v4.new_raw_cell("# BEGIN TESTS"),
            *_tests(ex, test_source),
            nbformat.v4.new_raw_cell("# END TESTS"),
            nbformat.v4.new_raw_cell("# END QUESTION")]


def master(notebook: Path) -> nbformat.NotebookNode:
    """The otter-grader master notebook of a chapter's exercises."""
    nb = nbformat.read(notebook, as_version=4)
    found = exercises(nb)
    if not found:
        raise ValueError(f"{notebook.name} has no coding exercises")
    by_stub_cell: dict[int, list[Exercise]] = {}
    for ex in found:
        by_stub_cell.setdefault(ex.stub_cell, []).append(ex)
    title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
    cells = [nbformat.v4.new_raw_cell(_config(notebook)),
             nbformat.v4.new_markdown_cell(
                 f"# Exercises · {title}\n\nRead the chapter first. This notebook loads the "
                 "chapter's definitions (without its training runs) and asks you to complete "
                 "its coding exercises. Run a question's check cell to test your answer."),
             nbformat.v4.new_code_cell(_setup(notebook))]
    start = next(i for i, c in enumerate(nb.cells)
                 if c.cell_type == "markdown" and any(
                     line.startswith("## ") and "Exercises" in line
                     for line in c.source.splitlines()))
    for i, cell in enumerate(nb.cells):
        tagged = cell.cell_type == "code" and "definitions" in cell.metadata.get("tags", [])
        if tagged and i not in by_stub_cell:
            cells.append(nbformat.v4.new_code_cell(cell.source))
    for i, cell in enumerate(nb.cells[start:], start):
        if i in by_stub_cell:
            names = [n for ex in by_stub_cell[i] for n in (ex.stub, ex.test)]
            rest = rest_of_cell(cell.source, names)
            if rest:
                cells.append(nbformat.v4.new_code_cell(rest))
            for ex in by_stub_cell[i]:
                cells += _question(notebook, cell.source, ex)
        elif cell.cell_type == "markdown":
            references = re.search(r"(?m)^## References", cell.source)
            text = cell.source[:references.start()] if references else cell.source
            text = SOLUTIONS_BLOCK.sub("", text).strip()
            if text:
                cells.append(nbformat.v4.new_markdown_cell(text))
            if references:
                break  # the student notebook ends with the exercises
        elif cell.cell_type == "code" and CHECK_CALL.match(cell.source.strip()):
            cells.append(nbformat.v4.new_code_cell(cell.source))
    out = nbformat.v4.new_notebook(cells=cells, metadata=nb.metadata)
    nbformat.validator.normalize(out)
    return out


def build(notebook: Path, out: Path) -> Path:
    """Write the master notebook of ``notebook`` and run ``otter assign`` on it; returns the
    assignment's directory (``student/`` and ``autograder/`` inside)."""
    work = out / notebook.stem
    shutil.rmtree(work, ignore_errors=True)
    (work / "master").mkdir(parents=True)
    path = work / "master" / notebook.name
    nbformat.write(master(notebook), path)
    (work / "master" / "requirements.txt").write_text(f"{package()}\notter-grader\n")
    otter = Path(sys.executable).with_name("otter")
    subprocess.run([str(otter), "assign", str(path), str(work)], check=True,
                   capture_output=True, text=True, cwd=work / "master")
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "assignments")
    parser.add_argument("--chapters", nargs="*", help="chapter numbers (default: all)")
    args = parser.parse_args(argv)
    built = []
    for notebook in chapters():
        if args.chapters and notebook.name[:2] not in args.chapters:
            continue
        if not exercises(nbformat.read(notebook, as_version=4)):
            continue
        work = build(notebook, args.out)
        questions = [ex.name for ex in exercises(nbformat.read(notebook, as_version=4))]
        print(f"{notebook.stem}: {', '.join(questions)} -> {work.relative_to(ROOT)}"
              if work.is_relative_to(ROOT) else f"{notebook.stem}: {work}", flush=True)
        built.append(work)
    print(f"{len(built)} assignments in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
