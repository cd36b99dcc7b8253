"""Plots with one look across the book: training curves, image grids, heatmaps."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = ["#1f6fb4", "#e07b24", "#2a9d4b", "#c8313a", "#7c5bb5", "#8c564b", "#d46fb6"]


def use_book_style() -> None:
    """Set the book's matplotlib defaults (called once by the setup cell via ``nnbook``)."""
    plt.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "savefig.dpi": 120,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": plt.cycler(color=PALETTE),
        "font.size": 10,
        "axes.titlesize": 11,
        "legend.frameon": False,
        "image.cmap": "viridis",
    })


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def curves(history: dict, keys: Sequence[str] = ("train_loss", "val_loss"), *,
           x: str = "epoch", ax=None, title: str | None = None, logy: bool = False):
    """Plot the lists ``history[k]`` for each key against ``history[x]``; returns the axes."""
    if ax is None:
        _, ax = plt.subplots()
    for key in keys:
        if key not in history:
            raise KeyError(f"history has no {key!r}; it has {sorted(history)}")
        xs = history.get(x, range(1, len(history[key]) + 1))
        ax.plot(xs, history[key], marker="o" if len(history[key]) < 30 else None,
                label=key.replace("_", " "))
    ax.set_xlabel(x)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def image_grid(images, *, ncols: int = 8, titles: Sequence[str] | None = None,
               cmap: str = "gray", size: float = 1.1, suptitle: str | None = None,
               symmetric: bool = False):
    """Show images ``(N, H, W)`` or ``(N, 1, H, W)`` (or ``(N, 3, H, W)``) in a grid.

    Args:
        symmetric: centre the colour scale on zero (for filters and signed maps).

    Returns:
        The figure.
    """
    arr = _numpy(images)
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        arr = arr[:, 0] if arr.shape[1] == 1 else arr.transpose(0, 2, 3, 1)
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W); got {arr.shape}")
    n = len(arr)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3 * bool(titles)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        kwargs = {}
        if symmetric:
            m = np.abs(arr[i]).max() or 1.0
            kwargs = dict(vmin=-m, vmax=m, cmap="RdBu_r")
        ax.imshow(arr[i], cmap=kwargs.pop("cmap", cmap), **kwargs)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def heatmap(matrix, *, xlabels: Sequence | None = None, ylabels: Sequence | None = None,
            ax=None, cmap: str = "viridis", annotate: bool = False, fmt: str = "{:.2f}",
            colorbar: bool = True, title: str | None = None):
    """A labelled heatmap of a 2-D array (attention maps, confusion matrices); returns the axes."""
    m = _numpy(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array; got shape {m.shape}")
    if ax is None:
        _, ax = plt.subplots()
    im = ax.imshow(m, cmap=cmap, aspect="auto")
    ax.grid(False)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), [str(s) for s in xlabels], fontsize=8)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), [str(s) for s in ylabels], fontsize=8)
    if annotate:
        mid = (m.max() + m.min()) / 2
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if v < mid else "black")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return ax
