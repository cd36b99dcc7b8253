"""Build the book's website and print the per-chapter table.

    python tools/build_book.py --mode full              # what `make book` runs: _build/html
    python tools/build_book.py --mode smoke --out DIR   # the test suite's quick build

Two stages:

1. **Execute.** Every chapter listed in ``_toc.yml`` is executed top to bottom in the chosen
   mode (``NNBOOK_MODE``), one after the other, with its wall-clock time measured. A failing
   cell fails the build (after the other chapters have run, so one report shows every failure).
2. **Render.** Jupyter Book renders the executed notebooks and the prose pages into
   ``OUT/_build/html``, strictly: any Sphinx warning fails the build.

The build ends with one row per chapter: execution seconds and the headline result the chapter
states with ``nnbook.expect``.

Execution cache. An executed notebook is stored, with its recorded result and its time, under
``$NNBOOK_EXEC_CACHE`` (default ``~/.cache/nnbook/executed``), keyed by a SHA-256 of everything
that can change its outputs: the mode, the notebook's code cells, the ``nnbook`` modules it
imports (directly or through other modules of the library), the installed versions of the
packages that code imports and of everything they require, the Python version, ``NNBOOK_SEED``
and ``NNBOOK_DEVICE``, and the definition cells of other chapters it loads with
``load_chapter`` (and the library modules those import). When nothing of that changed since the
last build, the stored outputs are reused, put into the notebook as it is now (so a change of
prose alone shows without executing the chapter again), and the table says so (with its date).
Pass ``--fresh`` (or set ``NNBOOK_EXEC_CACHE=off``) to execute everything regardless. The test
suite executes every chapter in smoke mode on each run (and stores those executions, which its
site build then reuses), so a lib change that a full-mode chapter does not import is still run
against that chapter, in smoke mode.

The cell timeout is ``execute.timeout`` in ``_config.yml``, the one place it is set.
"""

from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE_VARIABLE = "NNBOOK_EXEC_CACHE"
# Python 3.11's ast.parse is not safe to call from two threads at once ("AST constructor
# recursion depth mismatch"): the two threads that execute chapters take turns (a thread that
# runs beside code parsing on its own passes run_chapter its keys instead).
_PARSE_LOCK = threading.Lock()


def cell_timeout() -> int:
    """Seconds a cell may run: ``execute.timeout`` of ``_config.yml``."""
    return int(yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["timeout"])


def chapters() -> list[Path]:
    """The notebooks listed in ``_toc.yml``, in book order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc.get("parts", []) for entry in part.get("chapters", [])]
    return [ROOT / f"{f}.ipynb" for f in files if (ROOT / f"{f}.ipynb").is_file()]


_MAGIC = re.compile(r"\s*(%%?[A-Za-z_]|!(?!=))")


def _imported_lib_modules(source: str, package: str = "nnbook") -> set[str]:
    """Names (``"nnbook.mnist"``) of the library modules a piece of Python imports."""
    # IPython magics (%time, %%bash) and shell escapes (!pip) are not Python; a continuation
    # line that starts with an operator (`!= y`, `% 2`) is.
    lines = [line for line in source.splitlines() if not _MAGIC.match(line)]
    found = set()
    with _PARSE_LOCK:
        tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "nnbook"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import inside the library
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "nnbook":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from nnbook import mnist`
    return found


def _module_file(name: str, lib: Path) -> Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return lib / "__init__.py"
    relative = Path(*parts)
    for candidate in (lib / relative / "__init__.py", lib / relative.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


_LOADED = re.compile(r"""load_chapter\(\s*["'](\d\d[a-z0-9_]*)["']\s*\)""")


def chapter_dependencies(notebook: Path) -> list[Path]:
    """The other chapters whose definitions a notebook loads with ``load_chapter("NN...")``
    (chapter 27 uses the architectures of earlier chapters), and the ones those load."""
    from nnbook.chapters import definition_cells, notebook_path

    nb = nbformat.read(notebook, as_version=4)
    todo = set(_LOADED.findall("\n".join(c.source for c in code_cells(nb))))
    found: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        path = notebook_path(name, folder=notebook.parent)
        if path.stem in found or path == notebook:
            continue
        found[path.stem] = path
        todo |= set(_LOADED.findall("\n".join(src for _, src in definition_cells(path))))
    return [found[k] for k in sorted(found)]


def lib_dependencies(notebook: Path, lib: Path | None = None) -> list[Path]:
    """The library files a notebook imports, directly or through other library modules, or
    through the definitions of the chapters it loads.

    Importing ``nnbook.x`` also runs the package's ``__init__``, so that is always included.
    """
    from nnbook.chapters import definition_cells

    lib = lib or ROOT / "lib" / "nnbook"
    nb = nbformat.read(notebook, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for path in chapter_dependencies(notebook):
        code += "\n" + "\n".join(src for _, src in definition_cells(path))
    todo = _imported_lib_modules(code) | ({"nnbook"} if "nnbook" in code else set())
    files: set[Path] = set()
    while todo:
        name = todo.pop()
        for prefix in [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)]:
            path = _module_file(prefix, lib)
            if path is None or path in files:
                continue
            files.add(path)
            package = prefix if path.name == "__init__.py" else prefix.rsplit(".", 1)[0]
            todo |= _imported_lib_modules(path.read_text(), package)
    return sorted(files)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def inputs_key(notebook: Path, mode: str, env: dict[str, str] | None = None) -> str:
    """SHA-256 of everything an execution's outputs depend on: the notebook's code cells (not
    its prose), the library modules it imports, the versions of the packages they import, the
    mode, the seed offset and device override, and the definitions of the chapters it loads
    (:func:`chapter_dependencies`). The overrides are read from ``env`` (by default this
    process's environment)."""
    from nnbook.chapters import definition_cells

    env = os.environ if env is None else env
    overrides = {name: env.get(name, "").strip() for name in ("NNBOOK_SEED", "NNBOOK_DEVICE")}
    h = hashlib.sha256(f"mode={mode}\n{sorted(overrides.items())}\n".encode())
    code = [c.source for c in code_cells(nbformat.read(notebook, as_version=4))]
    h.update(json.dumps(code).encode() + b"\0")
    for path in chapter_dependencies(notebook):  # the definitions it loads from chapters
        loaded = [src for _, src in definition_cells(path)]
        h.update(path.name.encode() + b"\0" + json.dumps(loaded).encode() + b"\0")
        code += loaded
    deps = lib_dependencies(notebook, ROOT / "lib" / "nnbook")
    for path in deps:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    sources = [*code, *(path.read_text() for path in deps)]
    h.update("\n".join(package_versions(sources)).encode())
    return h.hexdigest()


def _imported_top_level(source: str) -> set[str]:
    """Top-level names of the modules a piece of Python imports (``torch``, ``sklearn``)."""
    # IPython magics (%time, %%bash) and shell escapes (!pip) are not Python; a continuation
    # line that starts with an operator (`!= y`, `% 2`) is.
    lines = [line for line in source.splitlines() if not _MAGIC.match(line)]
    with _PARSE_LOCK:
        tree = ast.parse("\n".join(lines))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@functools.cache
def _distributions_of_modules() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.cache
def _closure(distribution: str) -> frozenset[str]:
    """A distribution and everything it requires (without extras), as installed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen, todo = set(), [canonicalize_name(distribution)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return frozenset(seen)


def package_versions(sources: list[str]) -> list[str]:
    """``name==version`` of every installed distribution the given code imports, and of all
    they require: what a chapter's outputs can depend on. A pin added to requirements.txt for
    a tool or a test (or another chapter) therefore re-executes no chapter; a new torch, numpy
    or scikit-learn re-executes the chapters that use it."""
    modules = set().union(*(_imported_top_level(src) for src in sources)) - {"nnbook"}
    names = set()
    for module in modules:
        for distribution in _distributions_of_modules().get(module, []):
            names |= _closure(distribution)
    versions = [f"{n}=={importlib.metadata.version(n)}" for n in names]
    return sorted(versions + [f"python=={sys.version.split()[0]}"])


def with_stored_outputs(notebook: Path, executed: Path) -> nbformat.NotebookNode:
    """The current notebook (its prose as it is now) with the outputs of a stored execution of
    the same code cells."""
    nb, done = nbformat.read(notebook, as_version=4), nbformat.read(executed, as_version=4)
    current, stored = code_cells(nb), code_cells(done)
    if [c.source for c in current] != [c.source for c in stored]:
        raise ValueError(f"{executed} is not an execution of the code of {notebook.name}")
    for cell, run in zip(current, stored):
        cell.outputs, cell.execution_count = run.outputs, run.execution_count
        if "execution" in run.metadata:
            cell.metadata["execution"] = run.metadata["execution"]
    nb.metadata = done.metadata  # the kernel and language information of the execution
    return nb


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_VARIABLE, "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "nnbook" / "executed"


def execute(notebook: Path, mode: str, results: Path, env: dict[str, str] | None = None
            ) -> tuple[nbformat.NotebookNode, float, str | None, float | None]:
    """Run one notebook in a fresh kernel, in the chapter environment (``environment``, built on
    ``env``, by default this process's environment). Returns (executed notebook, seconds, error
    or None, the kernel's CPU seconds up to its last cell, or None where they cannot be read)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    cpu = {"seconds": None}

    def kernel_cpu(**_):  # after each cell: user + system time of the kernel and its children
        try:
            import psutil

            times = psutil.Process(client.km.provisioner.process.pid).cpu_times()
            cpu["seconds"] = times.user + times.system + times.children_user + times.children_system
        except Exception:  # noqa: BLE001 - a remote or exotic kernel: no CPU time, no harm
            pass

    client = NotebookClient(nb, timeout=cell_timeout(), kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}},
                            on_cell_executed=kernel_cpu)
    start = time.perf_counter()
    error = None
    try:
        client.execute(env=environment(mode, results, env))
    except CellExecutionError as failure:
        error = str(failure)
    except Exception as failure:  # noqa: BLE001 - a dead kernel or timeout is a failed chapter too
        error = f"{type(failure).__name__}: {failure}"
    return nb, time.perf_counter() - start, error, cpu["seconds"]


def environment(mode: str, results: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a chapter executes in: ``base`` (by default this process's environment)
    with the build's variables. It goes to the kernel only; this process's own environment is
    left alone (executions may run in threads beside other work)."""
    return dict(os.environ if base is None else base, NNBOOK_MODE=mode, NNBOOK_SITE="1",
                NNBOOK_RESULTS=str(results), MPLBACKEND="module://matplotlib_inline.backend_inline",
                PYDEVD_DISABLE_FILE_VALIDATION="1")


def run_chapter(notebook: Path, mode: str, out: Path, *, store: Path | None, reuse: bool = True,
                env: dict[str, str] | None = None, key: str | None = None) -> dict:
    """Execute one chapter (or reuse its stored execution) into ``out/_build/source``.

    Args:
        notebook: the chapter's notebook.
        mode: ``"full"`` or ``"smoke"``.
        out: output root; the executed notebook goes to ``out/_build/source/notebooks/``, its
            result to ``out/_build/results/``.
        store: the execution cache (None: no cache).
        reuse: take a stored execution when its key matches; False executes anyway (and
            stores the new execution).
        env: the environment the kernel's is built on (None: this process's).
        key: the execution's :func:`inputs_key`, when the caller computed it already (None:
            computed here). A thread that runs beside other work passes it: computing it
            calls ``ast.parse``, which in Python 3.11 fails when another thread parses at the
            same time ("AST constructor recursion depth mismatch").

    Returns:
        ``{"seconds", "executed_at", "key", "succeeded", "cached", "error", "cpu_seconds"}``
        (``cpu_seconds``: the kernel's, for a fresh execution; None when reused or unknown).
    """
    name = notebook.stem
    results = out / "_build" / "results"
    results.mkdir(parents=True, exist_ok=True)
    key = inputs_key(notebook, mode, env) if key is None else key
    entry = store / mode / f"{name}-{key[:20]}" if store else None
    target = out / "_build" / "source" / notebook.relative_to(ROOT)
    target.parent.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").unlink(missing_ok=True)
    if reuse and entry is not None and (entry / "meta.json").is_file():
        meta = json.loads((entry / "meta.json").read_text())
        nbformat.write(with_stored_outputs(notebook, entry / "executed.ipynb"), target)
        if (entry / "result.json").is_file():
            shutil.copyfile(entry / "result.json", results / f"{name}.json")
        print(f"[{name}] unchanged since {meta['executed_at']}: reusing its execution "
              f"({meta['seconds']:.1f} s then)", flush=True)
        return dict(meta, cached=True, error=None, cpu_seconds=None)
    print(f"[{name}] executing in {mode} mode ...", flush=True)
    nb, seconds, error, cpu_seconds = execute(notebook, mode, results, env)
    nbformat.write(nb, target)
    meta = {"seconds": round(seconds, 1), "executed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "key": key, "succeeded": error is None}
    if error is not None:
        print(f"[{name}] FAILED after {seconds:.1f} s:\n{error[-4000:]}", flush=True)
        return dict(meta, cached=False, error=error, cpu_seconds=cpu_seconds)
    print(f"[{name}] done in {seconds:.1f} s", flush=True)
    if entry is not None:
        tmp = entry.with_name(entry.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(target, tmp / "executed.ipynb")
        if (results / f"{name}.json").is_file():
            shutil.copyfile(results / f"{name}.json", tmp / "result.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for old in entry.parent.glob(f"{name}-*"):  # keep one entry per chapter and mode
            if old != tmp:
                shutil.rmtree(old, ignore_errors=True)
        tmp.rename(entry)
    return dict(meta, cached=False, error=None, cpu_seconds=cpu_seconds)


def run_chapters(mode: str, out: Path, *, use_cache: bool) -> tuple[dict, list[str]]:
    """Stage 1: execute (or reuse) every chapter; write them into the staging source tree."""
    shutil.rmtree(out / "_build" / "results", ignore_errors=True)
    store = cache_dir() if use_cache else None
    info, failures = {}, []
    for notebook in chapters():
        info[notebook.stem] = run_chapter(notebook, mode, out, store=store)
        if not info[notebook.stem]["succeeded"]:
            failures.append(notebook.stem)
    return info, failures


def format_value(value, digits: int = 4) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}g}" if isinstance(value, float) else f"{value:,}"


def results_page(info: dict, results_dir: Path, mode: str) -> str:
    """``book/results.md`` as this build makes it: every chapter's recorded headline result."""
    head = ("| Chapter | Headline result | Value | Target | Met | Split | Parameters | "
            "Training s | Chapter s | Device | Measured |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for chapter, meta in info.items():
        path = results_dir / f"{chapter}.json"
        link = f"[{chapter}](../notebooks/{chapter}.ipynb)"
        if not meta["succeeded"] or not path.exists():
            rows.append(f"| {link} | (no result recorded) |" + " |" * 9)
            continue
        r = json.loads(path.read_text())
        met = {True: "yes", False: "**no**"}.get(r.get("met"), "")
        if not r.get("checked"):
            met += " (not checked)"
        target = r.get("target", "").replace(">=", "≥").replace("<=", "≤")
        rows.append(f"| {link} | {r['metric']} | {format_value(r['value'])} | {target} | {met} | "
                    f"{r.get('split', '')} | {format_value(r.get('params'))} | "
                    f"{format_value(r.get('train_seconds'), 3)} | {meta['seconds']:.0f} | "
                    f"{r.get('device', '')} | {r.get('time', '')[:16]} |")
    note = ("" if mode == "full" else
            "\n**This build ran the chapters in smoke mode**: sizes are too small for the targets, "
            "so no result below is checked and none means anything about the architectures.\n")
    return f"""# Results

Every chapter states one headline result and the target it must reach, with
`nnbook.expect`. This page is generated by the build from the results the chapters recorded
while they were executed for this site: in full mode a chapter that misses its target fails the
build, so every "yes" below was checked, on the split named in the table (a test split that no
choice was made on, where the chapter has one). "Chapter s" is the whole notebook's execution
time; a chapter whose code did not change since an earlier build shows that build's
measurements and date.
{note}
{chr(10).join(rows)}
"""


def render(out: Path, pages: dict[str, str] | None = None) -> int:
    """Stage 2: Jupyter Book renders the staged (already executed) sources, strictly.
    ``pages`` (path relative to the book -> text) replaces committed pages with generated ones."""
    staged = out / "_build" / "source"
    for item in ("_toc.yml", "book"):
        src, dst = ROOT / item, staged / item
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)
    for name, text in (pages or {}).items():
        (staged / name).write_text(text)
    shutil.copyfile(ROOT / "_config.yml", staged / "_config.yml")  # says execute_notebooks: off
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb), "build", str(staged), "--path-output", str(out), "--all", "-W", "--keep-going"]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=staged).returncode


def table(info: dict, results_dir: Path) -> tuple[str, list[str]]:
    """The end-of-build table, and the chapters that executed but recorded no result."""
    rows = [("chapter", "exec s", "headline result", "target", "met")]
    missing = []
    for chapter, meta in info.items():
        seconds = f"{meta['seconds']:.1f}"
        if meta["cached"]:
            seconds += f" (cached {meta['executed_at'][:10]})"
        path = results_dir / f"{chapter}.json"
        if not meta["succeeded"]:
            rows.append((chapter, seconds, "(execution failed)", "", ""))
            continue
        if not path.exists():
            missing.append(chapter)
            rows.append((chapter, seconds, "(no result recorded)", "", ""))
            continue
        r = json.loads(path.read_text())
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        rows.append((chapter, seconds, f"{r['metric']} = {r['value']:.4g}", r.get("target") or "", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines), missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("full", "smoke"), default="full")
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (site in OUT/_build/html)")
    parser.add_argument("--fresh", action="store_true", help="execute every chapter, ignoring the cache")
    args = parser.parse_args()
    out = args.out.resolve()
    start = time.perf_counter()
    info, failures = run_chapters(args.mode, out, use_cache=not args.fresh)
    page = results_page(info, out / "_build" / "results", args.mode)
    code = render(out, {"book/results.md": page}) if not failures else 1
    text, missing = table(info, out / "_build" / "results")
    total = sum(m["seconds"] for m in info.values() if not m["cached"])
    print(f"\nChapters in {args.mode} mode ({total:.0f} s of execution in this build, "
          f"{time.perf_counter() - start:.0f} s in all):\n{text}\n", flush=True)
    if failures:
        print(f"Chapters that failed to execute: {', '.join(failures)}")
        return 1
    if code != 0:
        print(f"The site build failed (exit code {code}); see the messages above.")
        return code
    if missing:
        print(f"Chapters that recorded no headline result: {', '.join(missing)}")
        return 1
    print(f"Site: {out / '_build' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
