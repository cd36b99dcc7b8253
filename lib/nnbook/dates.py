"""The date-format translation task: human-written dates to ISO 8601, generated from a seed.

Each example is a calendar date written in one of :data:`FORMATS` (``"Sunday, 22 November
2026"``, ``"11/22/26"``, ``"22 nov. 2026"``, ...) paired with its ISO form ``"2026-11-22"``.
Dates run from 1969-01-01 to 2068-12-31, so a two-digit year has one reading: Python's
``strptime`` rule (``69``-``99`` mean 1969-1999, ``00``-``68`` mean 2000-2068). The splits are
held out *by date*: a seeded fifth of all calendar days appears only in the test split and
another tenth only in the validation split, so a model cannot pass either by remembering
training pairs. Every format is also a
``strptime`` pattern (:data:`STRPTIME`), which the tests use to check the generator.

The task follows the date-normalisation exercise popular since Bahdanau, Cho and Bengio
(2015), "Neural machine translation by jointly learning to align and translate".
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

import torch

FIRST, LAST = dt.date(1969, 1, 1), dt.date(2068, 12, 31)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _parts(d: dt.date) -> dict:
    return dict(Y=d.year, y=d.year % 100, m=d.month, d=d.day, B=MONTHS[d.month - 1],
                b=MONTHS[d.month - 1][:3], A=WEEKDAYS[d.weekday()], a=WEEKDAYS[d.weekday()][:3])


# name -> (Python format template over _parts, the equivalent strptime pattern)
_FORMATS = {
    "weekday, day month year": ("{A}, {d} {B} {Y}", "%A, %d %B %Y"),
    "US short": ("{m:02d}/{d:02d}/{y:02d}", "%m/%d/%y"),
    "day abbr. year": ("{d} {b_lower}. {Y}", "%d %b. %Y"),
    "month day, year": ("{B} {d}, {Y}", "%B %d, %Y"),
    "abbr day, year": ("{b} {d}, {Y}", "%b %d, %Y"),
    "European dots": ("{d:02d}.{m:02d}.{Y}", "%d.%m.%Y"),
    "day month year": ("{d} {B} {Y}", "%d %B %Y"),
    "compact": ("{Y}{m:02d}{d:02d}", "%Y%m%d"),
    "Oracle": ("{d:02d}-{b_upper}-{Y}", "%d-%b-%Y"),
    "RFC-like": ("{a} {d} {b} {Y}", "%a %d %b %Y"),
    "year/month/day": ("{Y}/{m:02d}/{d:02d}", "%Y/%m/%d"),
    "US long": ("{m}/{d}/{Y}", "%m/%d/%Y"),
    "weekday, month day, year": ("{A}, {B} {d}, {Y}", "%A, %B %d, %Y"),
    "day abbr short year": ("{d} {b} {y:02d}", "%d %b %y"),
}
FORMATS: tuple[str, ...] = tuple(_FORMATS)
STRPTIME: dict[str, str] = {name: pattern for name, (_, pattern) in _FORMATS.items()}
TARGET_LEN = 10  # "YYYY-MM-DD"


def format_date(d: dt.date, fmt: str) -> str:
    """Write ``d`` in the named format, e.g. ``format_date(date(2026, 11, 22), "US short")``."""
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    p = _parts(d)
    return _FORMATS[fmt][0].format(**p, b_lower=p["b"].lower(), b_upper=p["b"].upper())


def all_days() -> list[dt.date]:
    """Every calendar day from :data:`FIRST` to :data:`LAST` (36,525 days)."""
    return [FIRST + dt.timedelta(days=k) for k in range((LAST - FIRST).days + 1)]


def split_days(
    *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dt.date], list[dt.date], list[dt.date]]:
    """Split the calendar days into train, validation and test days (one seeded permutation).

    The test days are the first ``test_fraction`` of the permutation, the validation days the
    next ``val_fraction``; the three sets share no day.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1); got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be below 1; got {val_fraction + test_fraction}")
    days = all_days()
    random.Random(seed).shuffle(days)
    n_test, n_val = int(len(days) * test_fraction), int(len(days) * val_fraction)
    test, val, train = days[:n_test], days[n_test:n_test + n_val], days[n_test + n_val:]
    return sorted(train), sorted(val), sorted(test)


def make_pairs(days: list[dt.date], n: int, *, seed: int) -> list[tuple[str, str, str]]:
    """``n`` examples ``(human, iso, format_name)``: a random day of ``days`` in a random format."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        d, fmt = rng.choice(days), rng.choice(FORMATS)
        out.append((format_date(d, fmt), d.isoformat(), fmt))
    return out


class DateVocab:
    """Character vocabularies of the task: source (human) and target (ISO) sides.

    Source ids: 0 is padding, then every character any format can produce, sorted.
    Target ids: ``0``-``9`` are the digits, 10 is ``"-"``, 11 is the start token ``<s>``.
    """

    PAD = 0
    BOS = 11

    def __init__(self):
        chars = set("0123456789 ,./-")
        for name in MONTHS + WEEKDAYS:
            chars |= set(name) | set(name[:3].lower()) | set(name[:3].upper())
        self.src_chars = ["<pad>"] + sorted(chars)
        self.src_index = {c: i for i, c in enumerate(self.src_chars)}
        self.tgt_chars = list("0123456789-") + ["<s>"]

    def encode_src(self, texts: list[str], length: int) -> torch.Tensor:
        """Source ids, right-padded with 0 to ``length``; shape ``(N, length)`` int64."""
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, s in enumerate(texts):
            if len(s) > length:
                raise ValueError(f"{s!r} has {len(s)} characters; the padded length is {length}")
            out[i, :len(s)] = torch.tensor([self.src_index[c] for c in s])
        return out

    def encode_tgt(self, isos: list[str]) -> torch.Tensor:
        """Target ids of ISO dates; shape ``(N, 10)`` int64."""
        return torch.tensor([[self.tgt_chars.index(c) for c in s] for s in isos], dtype=torch.long)

    def decode_src(self, ids) -> str:
        """The human string of a row of source ids (padding dropped)."""
        return "".join(self.src_chars[int(i)] for i in ids if int(i) != self.PAD)

    def decode_tgt(self, ids) -> str:
        """The ISO string of a row of target ids."""
        return "".join(self.tgt_chars[int(i)] for i in ids)


@dataclass
class DateData:
    """The task as tensors. ``x_*``: ``(N, S)`` source ids (0 = padding); ``y_*``: ``(N, 10)``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    val_texts: list[str]
    val_formats: list[str]
    test_texts: list[str]
    test_formats: list[str]
    vocab: DateVocab


def date_tensors(
    *, n_train: int, n_val: int, n_test: int, seed: int = 0, val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DateData:
    """Generate the task: pairs on training days, on validation days and on test days.

    Args:
        n_train: training examples (days may repeat, in different formats).
        n_val: validation examples, on days neither training nor test examples use: for curves
            and every choice.
        n_test: test examples, on days no other example uses: for the stated result, once.
        seed: fixes the day split and the examples (each split has its own stream).
        val_fraction, test_fraction: shares of calendar days held out for validation and test.

    Shapes:
        ``x_* (N, S)`` with ``S`` the longest string (29); ``y_* (N, 10)``.

    Returns:
        A :class:`DateData`.
    """
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}")
    train_days, val_days, test_days = split_days(val_fraction=val_fraction,
                                                 test_fraction=test_fraction, seed=seed)
    train = make_pairs(train_days, n_train, seed=seed + 1)
    test = make_pairs(test_days, n_test, seed=seed + 2)
    val = make_pairs(val_days, n_val, seed=seed + 3)
    vocab = DateVocab()
    length = max(len(h) for h, _, _ in train + val + test)
    length = max(length, 29)  # "Wednesday, September 22, 2026"

    def encode(pairs):
        return vocab.encode_src([h for h, _, _ in pairs], length), vocab.encode_tgt([t for _, t, _ in pairs])

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = encode(train), encode(val), encode(test)
    return DateData(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        val_texts=[h for h, _, _ in val], val_formats=[f for _, _, f in val],
        test_texts=[h for h, _, _ in test], test_formats=[f for _, _, f in test],
        vocab=vocab,
    )
