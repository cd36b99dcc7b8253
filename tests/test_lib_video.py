"""nnbook.video: the reflection law, rendering, the twin-paired direction task, bad inputs."""

from __future__ import annotations

import time

import pytest
import torch

from nnbook.video import DIGIT, bounce, digit_clips, direction_pairs, render


def _unit_steps(start: int, velocity: int, frames: int, limit: int) -> list[int]:
    """A different algorithm for the same law: walk |v| single pixels per frame and turn
    around whenever the next pixel would leave [0, limit]."""
    p, d, out = start, (velocity > 0) - (velocity < 0), [start]
    for _ in range(frames - 1):
        for _ in range(abs(velocity)):
            if not 0 <= p + d <= limit:
                d = -d
            p += d
        out.append(p)
    return out


def _digits(n: int) -> torch.Tensor:
    """n distinguishable fake digits: digit k is a solid 10 x 10 square of value (k+1)/n
    at rows 4..13, columns 9..18, so its column centre of mass is 13.5."""
    d = torch.zeros(n, DIGIT, DIGIT)
    d[:, 4:14, 9:19] = (torch.arange(n, dtype=torch.float32)[:, None, None] + 1) / n
    return d


def test_bounce_by_hand():
    """The chapter's example (start 0, velocity 3, limit 4) and a resting point."""
    got = bounce(torch.tensor([0, 2]), torch.tensor([3, 0]), 5, 4)
    assert got.tolist() == [[0, 3, 2, 1, 4], [2, 2, 2, 2, 2]]
    assert got.dtype == torch.int64


@pytest.mark.parametrize("limit, speed", [(1, 1), (4, 3), (20, 3), (20, 7), (7, 30)])
def test_bounce_equals_walking_pixel_by_pixel(limit, speed):
    """Catches a wrong period (mod L instead of 2L), a reflection off by one at the walls,
    or speeds above the limit (several reflections per frame) handled wrongly."""
    g = torch.Generator().manual_seed(limit + speed)
    start = torch.randint(0, limit + 1, (300,), generator=g)
    velocity = torch.randint(-speed, speed + 1, (300,), generator=g)
    got = bounce(start, velocity, 15, limit)
    want = [_unit_steps(int(s), int(v), 15, limit) for s, v in zip(start, velocity)]
    assert got.tolist() == want
    assert int(got.min()) >= 0 and int(got.max()) <= limit


@pytest.mark.parametrize("kwargs, message", [
    (dict(start=torch.tensor([0.0]), velocity=torch.tensor([1.0])), "integer tensors"),
    (dict(start=torch.tensor([0, 1]), velocity=torch.tensor([1])), r"both be \(N,\)"),
    (dict(start=torch.tensor([[0]]), velocity=torch.tensor([[1]])), r"both be \(N,\)"),
    (dict(start=torch.tensor([5]), velocity=torch.tensor([1])), r"start must lie in \[0, 4\]"),
    (dict(frames=0), "frames must be a positive int"),
    (dict(limit=0), "limit must be a positive int"),
])
def test_bounce_rejects_bad_inputs(kwargs, message):
    args = dict(start=torch.tensor([0]), velocity=torch.tensor([1]), frames=3, limit=4)
    with pytest.raises(ValueError, match=message):
        bounce(**(args | kwargs))


def test_render_puts_each_digit_at_its_corner_and_nowhere_else():
    """Catches swapped rows and columns, a digit pasted into the wrong clip or frame, or
    pixels left over from another frame."""
    digits = torch.rand(3, 1, DIGIT, DIGIT, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([[0, 5], [12, 3], [7, 7]])
    cols = torch.tensor([[12, 1], [0, 9], [2, 11]])
    clips = render(digits, rows, cols, 40)
    assert clips.shape == (3, 2, 1, 40, 40) and clips.dtype == torch.float32
    for n in range(3):
        for t in range(2):
            r, c = int(rows[n, t]), int(cols[n, t])
            frame = clips[n, t, 0].clone()
            assert torch.equal(frame[r:r + DIGIT, c:c + DIGIT], digits[n, 0])
            frame[r:r + DIGIT, c:c + DIGIT] = 0
            assert not frame.any(), "pixels outside the digit's square must stay black"


@pytest.mark.parametrize("digits, rows, cols, size, message", [
    (torch.zeros(2, 27, 28), torch.zeros(2, 3, dtype=torch.long),
     torch.zeros(2, 3, dtype=torch.long), 48, r"digits must be \(N, 28, 28\)"),
    (torch.zeros(2, 28, 28), torch.zeros(3, 3, dtype=torch.long),
     torch.zeros(3, 3, dtype=torch.long), 48, r"rows and cols must both be \(N, T\) with N = 2"),
    (torch.zeros(1, 28, 28), torch.zeros(1, 3, dtype=torch.long),
     torch.full((1, 3), 21), 48, r"cols must lie in \[0, 20\]"),
    (torch.zeros(1, 28, 28), torch.zeros(1, 3, dtype=torch.long),
     torch.zeros(1, 3, dtype=torch.long), 20, "size must be at least 28"),
])
def test_render_rejects_bad_inputs(digits, rows, cols, size, message):
    with pytest.raises(ValueError, match=message):
        render(digits, rows, cols, size)


def test_direction_pairs_twins_labels_and_shifts():
    """Twins are the reversed clips with the opposite label; the label is the sign of the
    net horizontal shift (from the centre of mass), which is at least min_shift; every clip
    is one digit of the pool. Catches a label from the first velocity instead of the net
    shift (they differ after a bounce), or twins that are not exact reversals."""
    digits = _digits(7)
    clips, labels = direction_pairs(digits, 400, seed=3, frames=9, size=40, max_speed=4,
                                    min_shift=2)
    assert clips.shape == (800, 9, 1, 40, 40) and labels.shape == (800,)
    assert labels.dtype == torch.int64 and clips.dtype == torch.float32
    assert torch.equal(clips[400:], clips[:400].flip(1))
    assert torch.equal(labels[400:], 1 - labels[:400])
    mass = clips.sum((2, 3))                                       # (N, T, S)
    x = (mass * torch.arange(40.0)).sum(-1) / mass.sum(-1)         # centre of mass
    shift = x[:, -1] - x[:, 0]
    assert torch.equal(labels, (shift > 0).long())
    assert float(shift.abs().min()) >= 2 - 1e-4
    values = clips.amax((1, 2, 3, 4))                              # each clip's digit value
    assert torch.isin(values, digits.amax((1, 2))).all()
    assert 0.4 < float(labels[:400].float().mean()) < 0.6
    first_v = (x[:400, 1] - x[:400, 0]).sign()
    assert ((first_v > 0).long() != labels[:400]).any(), "some clips turn around"


def test_direction_pairs_are_determined_by_the_seed():
    digits = _digits(5)
    a = direction_pairs(digits, 50, seed=1)
    b = direction_pairs(digits, 50, seed=1)
    c = direction_pairs(digits, 50, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_direction_pairs_are_fast():
    """Thousands of clips in seconds: a loop over clips or pixels would take minutes."""
    digits = _digits(100)
    start = time.perf_counter()
    clips, _ = direction_pairs(digits, 1500, seed=0)
    assert clips.shape[0] == 3000
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_pairs=0), "n_pairs must be an int >= 1"),
    (dict(frames=1), "frames must be an int >= 2"),
    (dict(size=28), "size must be an int >= 29"),
    (dict(max_speed=0), "max_speed must be an int >= 1"),
    (dict(min_shift=21), "min_shift=21 is unreachable"),
    (dict(digits=torch.zeros(0, 28, 28)), "digits must be"),
])
def test_direction_pairs_rejects_bad_inputs(kwargs, message):
    args = dict(digits=_digits(3), n_pairs=4, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        direction_pairs(**args)


def test_digit_clips_draw_only_from_their_split():
    """The validation clips are direction_pairs on the validation digits, not on others."""
    from nnbook.mnist import mnist_split

    clips, labels = digit_clips("val", 20, seed=5, n_digits=30, frames=6)
    digits, _ = mnist_split("val", n=30, normalize=False)
    want_clips, want_labels = direction_pairs(digits, 20, seed=5, frames=6)
    assert torch.equal(clips, want_clips) and torch.equal(labels, want_labels)
    with pytest.raises(ValueError, match="split must be one of"):
        digit_clips("validation", 2, seed=0)
