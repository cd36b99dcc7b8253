"""Tests of nnbook.dates: the generated date-format translation task."""

import datetime as dt

import pytest
import torch

from nnbook.dates import (
    FIRST,
    FORMATS,
    LAST,
    STRPTIME,
    DateVocab,
    all_days,
    date_tensors,
    format_date,
    make_pairs,
    split_days,
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_reads_back_with_strptime(fmt):
    for day in [dt.date(2026, 11, 22), dt.date(1969, 1, 1), dt.date(2068, 12, 31), dt.date(2000, 2, 29),
                dt.date(1999, 9, 3)]:
        text = format_date(day, fmt)
        assert dt.datetime.strptime(text, STRPTIME[fmt]).date() == day, f"{fmt}: {text!r} is not {day}"


def test_examples_from_the_issue():
    day = dt.date(2026, 11, 22)
    assert format_date(day, "weekday, day month year") == "Sunday, 22 November 2026"
    assert format_date(day, "US short") == "11/22/26"
    assert format_date(day, "day abbr. year") == "22 nov. 2026"


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown format"):
        format_date(dt.date(2026, 1, 1), "klingon")


def test_days_and_held_out_split():
    days = all_days()
    assert days[0] == FIRST and days[-1] == LAST and len(days) == len(set(days)) == 36_525
    train, val, test = split_days(seed=0)
    assert not set(train) & set(test), "test days must never be training days"
    assert not set(train) & set(val) and not set(val) & set(test), "validation days are held out too"
    assert len(test) == int(0.2 * len(days)) and len(val) == int(0.1 * len(days))
    assert len(train) + len(val) + len(test) == len(days)
    assert split_days(seed=0) == (train, val, test) and split_days(seed=1) != (train, val, test)
    with pytest.raises(ValueError, match="must be below 1"):
        split_days(val_fraction=0.5, test_fraction=0.5)


def test_pairs_are_reproducible_and_correct():
    _, _, test = split_days(seed=0)
    pairs = make_pairs(test, 50, seed=3)
    assert pairs == make_pairs(test, 50, seed=3)
    for human, iso, fmt in pairs:
        assert dt.datetime.strptime(human, STRPTIME[fmt]).date().isoformat() == iso


def test_tensors_encode_and_decode():
    data = date_tensors(n_train=200, n_val=30, n_test=50, seed=0)
    assert data.x_train.shape == (200, 29) and data.y_test.shape == (50, 10)
    assert data.x_val.shape == (30, 29) and data.y_val.shape == (30, 10) and len(data.val_texts) == 30
    assert data.x_train.dtype == torch.long and int(data.y_train.max()) <= 10
    v = data.vocab
    for k in range(50):
        human = v.decode_src(data.x_test[k])
        assert human == data.test_texts[k]
        iso = v.decode_tgt(data.y_test[k])
        assert dt.datetime.strptime(human, STRPTIME[data.test_formats[k]]).date().isoformat() == iso
    again = date_tensors(n_train=200, n_val=30, n_test=50, seed=0)
    assert torch.equal(again.x_train, data.x_train) and torch.equal(again.y_test, data.y_test)
    assert torch.equal(again.x_val, data.x_val)
    train_days, val_days, test_days = split_days(seed=0)
    val_isos = {v.decode_tgt(row) for row in data.y_val}
    assert val_isos <= {d.isoformat() for d in val_days}, "validation examples lie on validation days"
    with pytest.raises(ValueError, match="n_val must be a positive int"):
        date_tensors(n_train=10, n_val=0, n_test=5)


def test_source_vocab_covers_every_character_and_pads_with_zero():
    v = DateVocab()
    assert v.src_chars[v.PAD] == "<pad>" and v.tgt_chars[v.BOS] == "<s>"
    text = "".join(format_date(d, f) for d in all_days()[::97] for f in FORMATS)
    assert set(text) <= set(v.src_chars)
    with pytest.raises(ValueError, match="padded length"):
        v.encode_src(["Wednesday, September 22, 2026"], 10)
