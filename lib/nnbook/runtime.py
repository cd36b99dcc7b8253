"""Where the book's code runs: device choice, seeding, and full vs smoke mode.

One environment variable, ``NNBOOK_MODE``, switches the whole book between

* ``full`` (the default): the sizes the website shows and the chapters' stated results;
* ``smoke``: tiny data and one short epoch, so every notebook runs in seconds (tests, CI).

Chapters never read the environment themselves: they describe their sizes in a config
dataclass and pass it through :func:`for_mode`.
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
    """The best available device: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (all devices); return a CPU generator seeded the same.

    Args:
        seed: the seed.

    Returns:
        A ``torch.Generator`` for code that wants its own stream (e.g. data shuffling).
    """
    random.seed(seed)
    np.random.seed(seed)
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
    return f"mode={mode()}  device={device()}  torch={torch.__version__}"
