"""The course assignments (tools/make_assignments.py): every coding exercise becomes an
otter-grader question whose reference solution passes the chapter's own check; for three
chapters the real ``otter assign`` / ``otter run`` pipeline is exercised end to end: the student
notebook holds no solution, the reference solution scores full marks, the unsolved notebook
scores zero, and editing the visible test does not change the grade."""

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import make_assignments as ma  # noqa: E402
from build_book import chapters  # noqa: E402

from nnbook.exercises import check  # noqa: E402

WITH_EXERCISES = [nb for nb in chapters() if ma.exercises(nbformat.read(nb, as_version=4))]
GRADED = ["01", "04", "19"]  # built and graded with otter end to end
TAMPERED = "04"  # also graded with its visible test rewritten
OTTER = Path(sys.executable).with_name("otter")


def _definitions(notebook: Path) -> dict:
    """The chapter's definitions cells, executed (what the assignment notebook loads)."""
    names: dict = {"__name__": "assignment"}
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "definitions" in cell.metadata.get("tags", []):
            exec(compile(cell.source, str(notebook), "exec"), names)
    return names


@pytest.mark.parametrize("notebook", WITH_EXERCISES, ids=lambda p: p.stem)
def test_every_reference_solution_passes_the_chapters_own_check(notebook):
    """The solution otter puts in the autograder, run among the chapter's definitions (as in
    the assignment), passes the chapter's test function; the stub it replaces does not.
    Catches a solution that leans on a name only the test module has, or a question built
    around the wrong function."""
    nb = nbformat.read(notebook, as_version=4)
    for ex in ma.exercises(nb):
        names = _definitions(notebook)
        assert check(ex.title, names[ex.stub], names[ex.test]) is None   # the stub: not tried
        exec(ma.solution(notebook, ex.stub), names)
        assert check(ex.title, names[ex.stub], names[ex.test]) is True


@pytest.mark.parametrize("notebook", WITH_EXERCISES, ids=lambda p: p.stem)
def test_master_notebook_has_one_question_per_exercise(notebook):
    """Each coding exercise is one question with a public and a hidden test, and the master
    keeps no worked-solutions block that would reach the student."""
    master = ma.master(notebook)
    raw = [c.source for c in master.cells if c.cell_type == "raw"]
    questions = [s for s in raw if s.startswith("# BEGIN QUESTION")]
    assert len(questions) == len(ma.exercises(nbformat.read(notebook, as_version=4)))
    hidden = [c for c in master.cells if c.cell_type == "code" and c.source.startswith("# HIDDEN")]
    assert len(hidden) == len(questions)
    assert not any("{admonition} Solutions" in c.source for c in master.cells)
    assert not any(c.source.lstrip().startswith("## References") for c in master.cells)


def _run(submission: Path, autograder: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    subprocess.run([str(OTTER), "run", "--no-logo", "-a", str(autograder), "-o", str(out),
                    str(submission)], check=True, capture_output=True, text=True, env=env,
                   timeout=300)
    results = json.loads((out / "results.json").read_text())
    return {t["name"]: t for t in results["tests"] if t["name"] != "Public Tests"}


def _tampered(student: Path, out: Path, ex: ma.Exercise) -> Path:
    """A submission that answers wrongly and rewrites the visible test to always pass."""
    nb = nbformat.read(student, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and ast.parse(cell.source).body and ma._defines(
                cell.source, ex.stub):
            cell.source += (f"\n\n\ndef {ex.stub}(*args, **kwargs):\n    return None\n\n\n"
                            f"def {ex.test}(fn):\n    pass\n")
    path = out / student.name
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """Build three assignments with ``otter assign`` and grade, with ``otter run``, each one's
    reference solution, its unsolved student notebook and a tampered submission."""
    root = tmp_path_factory.mktemp("assignments")
    notebooks = [nb for nb in WITH_EXERCISES if nb.name[:2] in GRADED]
    assert len(notebooks) == len(GRADED)
    built = {nb.name[:2]: ma.build(nb, root) for nb in notebooks}
    jobs = {}
    for number, work in built.items():
        stem = work.name
        autograder = next((work / "autograder").glob("*.zip"))
        student = work / "student" / f"{stem}.ipynb"
        first = ma.exercises(nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb",
                                           as_version=4))[0]
        jobs[number, "solution"] = (work / "autograder" / f"{stem}.ipynb", autograder)
        jobs[number, "student"] = (student, autograder)
        if number == TAMPERED:
            jobs[number, "tampered"] = (_tampered(student, root / "tampered", first),
                                        autograder)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {key: pool.submit(_run, sub, zip_, root / "graded" / "-".join(key))
                   for key, (sub, zip_) in jobs.items()}
        scores = {key: future.result() for key, future in futures.items()}
    return built, scores


@pytest.mark.parametrize("number", GRADED)
def test_student_notebook_holds_no_solution(graded, number):
    """No line of a reference solution's body reaches the student; the stub still raises."""
    built, _ = graded
    work = built[number]
    student = (work / "student" / f"{work.name}.ipynb").read_text()
    notebook = ROOT / "notebooks" / f"{work.name}.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    chapter_code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for ex in ma.exercises(nb):
        body = ma.solution(notebook, ex.stub).splitlines()[1:]
        own = [line.strip() for line in body   # lines the chapter's own code does not have
               if len(line.strip()) > 12 and line.strip() not in chapter_code]
        assert own, f"{ex.title}: the solution has no line of its own to look for"
        leaked = [line for line in own if line in student]
        assert not leaked, f"{ex.title}: solution lines in the student notebook: {leaked}"
        assert "raise NotImplementedError" in student
        assert "BEGIN SOLUTION" not in student and "solved_" not in student


@pytest.mark.parametrize("number", GRADED)
def test_reference_solution_scores_full_marks(graded, number):
    _, scores = graded
    result = scores[number, "solution"]
    assert result and all(t["score"] == t["max_score"] > 0 for t in result.values()), result


@pytest.mark.parametrize("number", GRADED)
def test_unsolved_notebook_scores_zero(graded, number):
    _, scores = graded
    result = scores[number, "student"]
    assert result and all(t["score"] == 0 for t in result.values()), result


def test_rewriting_the_visible_test_does_not_earn_marks(graded):
    """A wrong answer with the notebook's test function replaced by a no-op passes the public
    test but fails the grader's hidden copy; all-or-nothing scoring gives zero."""
    _, scores = graded
    result = scores[TAMPERED, "tampered"]
    first = next(iter(result.values()))
    assert first["score"] == 0, first
