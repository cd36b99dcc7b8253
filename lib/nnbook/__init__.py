"""nnbook: the shared library of the book *Neural Architectures, Derived and Built*.

Small modules, one topic each: ``runtime`` (device, seeds, full/smoke mode), ``cache`` (the
checksummed data cache), ``mnist``, ``text`` (Shakespeare), ``series`` (sunspots, CO2),
``train`` (``fit``/``evaluate``), ``plot`` and ``results`` (``expect``, a chapter's stated result).
"""

from .results import TargetMissed, expect
from .runtime import autocast, describe, device, for_mode, mode, seed_everything
from .train import History, TensorLoader, count_parameters, evaluate, fit

__version__ = "0.1.0"
__all__ = [
    "History", "TargetMissed", "TensorLoader", "autocast", "count_parameters", "describe", "device",
    "evaluate", "expect", "fit", "for_mode", "mode", "seed_everything", "setup",
]


def setup(seed: int = 0) -> None:
    """A notebook's first call: book plot style, seeds, and one line naming mode and device."""
    from .plot import use_book_style

    use_book_style()
    seed_everything(seed)
    print(describe())
