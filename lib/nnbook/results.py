"""Headline results: a chapter records its result with one call; the build collects them.

Results are JSON files, one per chapter, in ``$NNBOOK_RESULTS`` (the site build sets it to
``_build/results``) or, elsewhere, in ``results/`` under the data cache.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from .cache import data_dir
from .runtime import device, mode

RESULTS_VARIABLE = "NNBOOK_RESULTS"


def results_dir() -> Path:
    """Where results are written (created if missing)."""
    path = Path(os.environ.get(RESULTS_VARIABLE) or data_dir() / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def record(
    chapter: str,
    metric: str,
    value: float,
    *,
    target: str | None = None,
    met: bool | None = None,
    params: int | None = None,
    train_seconds: float | None = None,
) -> dict:
    """Record a chapter's headline result and print it.

    Args:
        chapter: the notebook's name, e.g. ``"02_backpropagation"``.
        metric: what was measured, e.g. ``"MNIST test accuracy"``.
        value: the measurement.
        target: the stated goal in words, e.g. ``">= 0.98"``.
        met: whether the goal was reached (the chapter computes it).
        params: the model's parameter count.
        train_seconds: wall-clock training time.

    Returns:
        The record (also written to ``results_dir()/<chapter>.json``).
    """
    entry = {
        "chapter": chapter, "metric": metric, "value": float(value), "target": target,
        "met": met, "params": params,
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 1),
        "device": str(device()), "mode": mode(), "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (results_dir() / f"{chapter}.json").write_text(json.dumps(entry, indent=2) + "\n")
    verdict = "" if met is None else ("  (target met)" if met else "  (TARGET NOT MET)")
    print(f"{chapter}: {metric} = {value:.4g}" + (f"  target {target}" if target else "") + verdict)
    return entry


def collect(path: Path | str | None = None) -> dict[str, dict]:
    """All recorded results in a directory, keyed by chapter."""
    path = Path(path) if path is not None else results_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(path.glob("*.json"))}
