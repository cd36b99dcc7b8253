"""Build the book's website and print the per-chapter table.

    python tools/build_book.py --mode full     # what `make book` runs: _build/html
    python tools/build_book.py --mode smoke --out DIR   # the test suite's quick build

Every chapter notebook is executed during the build (Jupyter Book 1, myst-nb). The build is
strict: a failing cell or any Sphinx warning fails it. At the end it prints one row per
chapter: execution seconds and the headline result the chapter recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(mode: str, out: Path) -> int:
    """Run jupyter-book with the book's environment; returns its exit code."""
    results = out / "_build" / "results"
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    env = dict(os.environ, NNBOOK_MODE=mode, NNBOOK_SITE="1", NNBOOK_RESULTS=str(results),
               MPLBACKEND="module://matplotlib_inline.backend_inline", PYDEVD_DISABLE_FILE_VALIDATION="1")
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb), "build", str(ROOT), "--path-output", str(out), "--all", "-W", "--keep-going"]
    print("$", " ".join(command), f"  (NNBOOK_MODE={mode})", flush=True)
    return subprocess.run(command, env=env, cwd=ROOT).returncode


def table(results_dir: Path) -> tuple[str, list[str]]:
    """The end-of-build table, and the chapters that executed but recorded no result."""
    times_file = results_dir / "_execution.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    rows = [("chapter", "exec s", "headline result", "target", "met")]
    missing = []
    for chapter in sorted(times):
        t = times[chapter]
        seconds = "-" if t.get("seconds") is None else f"{t['seconds']:.1f}"
        path = results_dir / f"{chapter}.json"
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
    args = parser.parse_args()
    code = build(args.mode, args.out.resolve())
    text, missing = table(args.out.resolve() / "_build" / "results")
    print(f"\nChapters executed in {args.mode} mode:\n{text}\n", flush=True)
    if code != 0:
        print(f"The site build failed (exit code {code}); see the messages above.")
        return code
    if missing:
        print(f"Chapters that recorded no headline result: {', '.join(missing)}")
        return 1
    print(f"Site: {args.out.resolve() / '_build' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
