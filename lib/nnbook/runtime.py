"""Where the book's code runs: device choice, seeding, and full vs smoke mode.

Environment variables, read here and nowhere else (chapters never read the environment):

* ``NNBOOK_MODE``: ``full`` (the default; the sizes the website shows and the chapters' stated
  results) or ``smoke`` (tiny data and one short epoch, so every notebook runs in seconds).
  Chapters describe their sizes in a config dataclass and pass it through :func:`for_mode`.
* ``NNBOOK_DEVICE``: overrides :func:`device`'s choice, e.g. ``cpu``, ``cuda:1`` or ``mps``.
* ``NNBOOK_SEED``: an integer added to every seed given to :func:`seed_everything` (default 0),
  so that a whole chapter can be rerun with other initializations to measure its spread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
from typing import Any, TypeVar

import numpy as np
import torch

MODE_VARIABLE = "NNBOOK_MODE"
DEVICE_VARIABLE = "NNBOOK_DEVICE"
SEED_VARIABLE = "NNBOOK_SEED"
MODES = ("full", "smoke")
SITE_VARIABLE = "NNBOOK_SITE"  # set to 1 by the site build: plain-text progress, static widgets

C = TypeVar("C")


def mode() -> str:
    """The book's run mode, ``"full"`` or ``"smoke"``, from ``NNBOOK_MODE`` (default full)."""
    value = os.environ.get(MODE_VARIABLE, "full").strip().lower() or "full"
    if value not in MODES:
        raise ValueError(f"{MODE_VARIABLE} must be one of {MODES}; got {value!r}")
    return value


def is_smoke() -> bool:
    """True when the book runs in smoke mode (tiny sizes, for tests)."""
    return mode() == "smoke"


def for_mode(config: C, **smoke: Any) -> C:
    """Return ``config`` in full mode, or a copy with the ``smoke`` overrides in smoke mode.

    Args:
        config: a dataclass instance holding the full-mode sizes.
        **smoke: field values to use instead in smoke mode.

    Returns:
        The config for the current mode (the original object in full mode).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"for_mode expects a dataclass instance; got {type(config).__name__}")
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(smoke) - names)
    if unknown:
        raise ValueError(f"smoke overrides {unknown} are not fields of {type(config).__name__}")
    return dataclasses.replace(config, **smoke) if is_smoke() else config


def in_site_build() -> bool:
    """True while the website is being built (``NNBOOK_SITE=1``): no live kernel will follow."""
    return os.environ.get(SITE_VARIABLE, "") == "1"


def device() -> torch.device:
    """The device every chapter trains on: ``NNBOOK_DEVICE`` if set, else CUDA, MPS, then CPU.

    Raises:
        ValueError: ``NNBOOK_DEVICE`` names no device, or one this machine does not have.
    """
    override = os.environ.get(DEVICE_VARIABLE, "").strip()
    if override:
        try:
            dev = torch.device(override)
        except RuntimeError as error:
            raise ValueError(f"{DEVICE_VARIABLE} must name a device such as cpu, cuda, cuda:1 or "
                             f"mps; got {override!r}") from error
        if not _available(dev):
            raise ValueError(f"{DEVICE_VARIABLE}={override!r}, but this machine has no such device "
                             f"(CUDA devices: {torch.cuda.device_count()}, MPS: {_has_mps()})")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _has_mps():
        return torch.device("mps")
    return torch.device("cpu")


def _has_mps() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _available(dev: torch.device) -> bool:
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    if dev.type == "mps":
        return _has_mps()
    return False


def seed_offset() -> int:
    """The integer ``NNBOOK_SEED`` adds to every seed (0 when unset)."""
    value = os.environ.get(SEED_VARIABLE, "").strip() or "0"
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE} must be an integer; got {value!r}") from None


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator seeded the same.

    Args:
        seed: the seed; ``NNBOOK_SEED`` (default 0) is added to it.

    Returns:
        A ``torch.Generator`` for code that wants its own stream (e.g. data shuffling).
    """
    seed = int(seed) + seed_offset()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds CUDA and MPS
    return torch.Generator().manual_seed(seed)


def autocast(dev: torch.device | str):
    """bf16 autocast on CUDA; a no-op context on MPS and the CPU (where it does not help)."""
    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe() -> str:
    """One line naming the mode, device and PyTorch version, for a notebook's setup cell."""
    offset = seed_offset()
    seeds = f"  seed offset={offset}" if offset else ""
    return f"mode={mode()}  device={device()}  torch={torch.__version__}{seeds}"
