"""Headline results: a chapter states, records and checks its result with one call, ``expect``.

Results are JSON files, one per chapter, in ``$NNBOOK_RESULTS`` (the site build sets it to
``_build/results``) or, elsewhere, in ``results/`` under the data cache.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from .cache import data_dir
from .runtime import device, mode, seed_offset

RESULTS_VARIABLE = "NNBOOK_RESULTS"


class TargetMissed(AssertionError):
    """A chapter's full-mode result missed the target the chapter states."""


def results_dir() -> Path:
    """Where results are written (created if missing)."""
    path = Path(os.environ.get(RESULTS_VARIABLE) or data_dir() / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def expect(
    chapter: str,
    metric: str,
    value: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    split: str = "test",
    params: int | None = None,
    train_seconds: float | None = None,
) -> dict:
    """State a chapter's headline result: record it, print it, and in full mode check it.

    Give exactly one of ``at_least`` and ``at_most``. In full mode a missed target raises
    :class:`TargetMissed`, which fails the notebook (and the book's build); in smoke mode the
    sizes are too small for the target to mean anything, so the result is recorded and printed
    with the target, but not checked.

    Args:
        chapter: the notebook's name, e.g. ``"02_backpropagation"``.
        metric: what was measured, e.g. ``"MNIST test accuracy"``.
        value: the measurement (a finite number).
        at_least: the target is ``value >= at_least``.
        at_most: the target is ``value <= at_most``.
        split: the data the value was measured on: ``"test"`` (the default; measured once, after
            every choice was made on validation data) or, where a chapter has no test split,
            what it used instead.
        params: the model's parameter count.
        train_seconds: wall-clock training time.

    Returns:
        The record (also written to ``results_dir()/<chapter>.json``).

    Raises:
        ValueError: not exactly one bound, or a value that is not a finite number.
        TargetMissed: full mode and the target was missed.
    """
    if (at_least is None) == (at_most is None):
        raise ValueError(f"expect needs exactly one of at_least and at_most; got at_least={at_least}, "
                         f"at_most={at_most}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{chapter}: {metric} must be a finite number; got {value}")
    bound = at_least if at_least is not None else at_most
    target = f">= {bound:g}" if at_least is not None else f"<= {bound:g}"
    met = value >= at_least if at_least is not None else value <= at_most
    checked = mode() == "full"
    entry = {
        "chapter": chapter, "metric": metric, "value": value, "target": target, "met": met,
        "checked": checked, "split": split, "params": params,
        "train_seconds": None if train_seconds is None else round(float(train_seconds), 1),
        "device": str(device()), "mode": mode(), "seed_offset": seed_offset(),
        "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (results_dir() / f"{chapter}.json").write_text(json.dumps(entry, indent=2) + "\n")
    if checked:
        verdict = "target met" if met else "TARGET MISSED"
    else:
        verdict = "smoke run: sizes too small for the target, not checked"
    print(f"{chapter}: {metric} = {value:.4g} ({split} split), target {target}  ({verdict})")
    if checked and not met:
        raise TargetMissed(f"{chapter}: {metric} = {value:.4g} misses the stated target {target}")
    return entry


def collect(path: Path | str | None = None) -> dict[str, dict]:
    """All recorded results in a directory, keyed by chapter."""
    path = Path(path) if path is not None else results_dir()
    return {p.stem: json.loads(p.read_text()) for p in sorted(path.glob("*.json"))}
