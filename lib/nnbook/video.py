"""Moving-digit clips: MNIST digits gliding and bouncing on a larger canvas, for video models.

One digit per clip moves with a constant integer velocity and bounces off the four walls of a
square canvas, in the spirit of the Moving MNIST data set of Srivastava, Mansimov and
Salakhutdinov (2015). Everything is vectorized (no Python loop over clips, frames or pixels)
and fully determined by a seed.

* :func:`bounce` gives the positions: a closed-form triangle wave, the reflection law.
* :func:`render` pastes the digits into empty canvases at those positions.
* :func:`direction_pairs` draws the book's order task: every clip comes with its time-reversed
  twin, and the label is the sign of the digit's net horizontal displacement, so the two clips
  of a pair hold the same frames and carry opposite labels.
* :func:`digit_clips` does the same from one of the book's MNIST splits.
"""

from __future__ import annotations

import torch

DIGIT = 28  # side of an MNIST digit, in pixels


def bounce(start: torch.Tensor, velocity: torch.Tensor, frames: int, limit: int) -> torch.Tensor:
    """Positions of points moving at constant velocity in ``[0, limit]``, reflected at both ends.

    Unfolding the reflections, a point at ``p + v t`` on the real line maps back into the
    interval by the triangle wave ``u = (p + v t) mod 2 limit``, ``x = limit - |u - limit|``:
    the position is exact for integer inputs (no time stepping).

    Args:
        start: starting positions, integers in ``[0, limit]``.
        velocity: integer velocities in pixels per frame, same shape as ``start``.
        frames: number of frames ``T`` (at least 1).
        limit: largest position (the canvas side minus the digit side; at least 1).

    Shapes:
        ``start`` and ``velocity`` ``(N,)``; returns ``(N, T)`` int64.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int; got {frames!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int; got {limit!r}")
    start, velocity = torch.as_tensor(start), torch.as_tensor(velocity)
    if start.dim() != 1 or velocity.shape != start.shape:
        raise ValueError(f"start and velocity must both be (N,); got {tuple(start.shape)} and "
                         f"{tuple(velocity.shape)}")
    if start.is_floating_point() or velocity.is_floating_point():
        raise ValueError("start and velocity must be integer tensors (positions in pixels)")
    if len(start) and (int(start.min()) < 0 or int(start.max()) > limit):
        raise ValueError(f"start must lie in [0, {limit}]; got values in "
                         f"[{int(start.min())}, {int(start.max())}]")
    t = torch.arange(frames)
    u = torch.remainder(start[:, None] + velocity[:, None] * t, 2 * limit)  # (N, T)
    return limit - (u - limit).abs()


def render(digits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, size: int) -> torch.Tensor:
    """Paste digit ``n`` into frame ``t`` of clip ``n`` with its top-left corner at
    ``(rows[n, t], cols[n, t])``, on a black canvas.

    Args:
        digits: the images, values in [0, 1].
        rows, cols: integer corner positions in ``[0, size - 28]``.
        size: side of the square canvas (at least 28).

    Shapes:
        ``digits`` ``(N, 28, 28)`` or ``(N, 1, 28, 28)``; ``rows``, ``cols`` ``(N, T)``;
        returns clips ``(N, T, 1, size, size)`` float32.
    """
    if digits.dim() == 4 and digits.shape[1] == 1:
        digits = digits[:, 0]
    if digits.dim() != 3 or tuple(digits.shape[1:]) != (DIGIT, DIGIT):
        raise ValueError(f"digits must be (N, 28, 28) or (N, 1, 28, 28); got {tuple(digits.shape)}")
    if rows.dim() != 2 or rows.shape != cols.shape or len(rows) != len(digits):
        raise ValueError(f"rows and cols must both be (N, T) with N = {len(digits)}; got "
                         f"{tuple(rows.shape)} and {tuple(cols.shape)}")
    if size < DIGIT:
        raise ValueError(f"size must be at least {DIGIT}; got {size}")
    limit = size - DIGIT
    for name, pos in (("rows", rows), ("cols", cols)):
        if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) > limit):
            raise ValueError(f"{name} must lie in [0, {limit}] for a {size}x{size} canvas")
    N, T = rows.shape
    clips = torch.zeros(N, T, size, size)
    k = torch.arange(DIGIT)
    n = torch.arange(N)[:, None, None, None]                  # (N, 1, 1, 1)
    t = torch.arange(T)[None, :, None, None]                  # (1, T, 1, 1)
    r = rows[:, :, None, None] + k[:, None]                   # (N, T, 28, 1)
    c = cols[:, :, None, None] + k                            # (N, T, 1, 28)
    clips[n, t, r, c] = digits[:, None].float().expand(N, T, DIGIT, DIGIT)
    return clips[:, :, None]                                  # (N, T, 1, size, size)


def direction_pairs(
    digits: torch.Tensor,
    n_pairs: int,
    *,
    seed: int,
    frames: int = 10,
    size: int = 48,
    max_speed: int = 3,
    min_shift: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of bouncing digits and their time-reversed twins, labelled by net direction.

    Each of ``n_pairs`` clips draws a digit from ``digits``, a start position uniform on the
    free square ``[0, size - 28]^2`` and a velocity with integer components uniform in
    ``[-max_speed, max_speed]``. Its label is 1 when the digit ends to the right of where it
    started (``x_T > x_1``) and 0 when it ends to the left; clips whose net horizontal shift
    ``|x_T - x_1|`` is below ``min_shift`` pixels are drawn again. The twin of clip ``i`` is clip
    ``i`` played backwards, ``clips[n_pairs + i] = clips[i].flip(0)``: the same frames, the
    opposite label.

    Args:
        digits: the images the clips draw from, values in [0, 1].
        n_pairs: number of original clips (the data set holds twice as many).
        seed: seed of the draw (same seed and digits, same clips).
        frames: frames per clip ``T`` (at least 2).
        size: side of the square canvas (more than 28).
        max_speed: largest speed per axis, in pixels per frame (at least 1).
        min_shift: smallest net horizontal displacement kept, in pixels (at least 1).

    Shapes:
        ``digits`` ``(M, 28, 28)`` or ``(M, 1, 28, 28)``; returns clips
        ``(2 n_pairs, T, 1, size, size)`` float32 and labels ``(2 n_pairs,)`` int64.

    Reference:
        N. Srivastava, E. Mansimov and R. Salakhutdinov, "Unsupervised learning of video
        representations using LSTMs", ICML 2015 (Moving MNIST).
    """
    for name, value, low in (("n_pairs", n_pairs, 1), ("frames", frames, 2),
                             ("size", size, DIGIT + 1), ("max_speed", max_speed, 1),
                             ("min_shift", min_shift, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if digits.dim() not in (3, 4) or len(digits) == 0:
        raise ValueError(f"digits must be (M, 28, 28) or (M, 1, 28, 28) with M >= 1; got "
                         f"{tuple(digits.shape)}")
    limit = size - DIGIT
    if min_shift > min(limit, max_speed * (frames - 1)):
        raise ValueError(f"min_shift={min_shift} is unreachable with size={size}, "
                         f"max_speed={max_speed} and frames={frames}")
    g = torch.Generator().manual_seed(seed)
    kept, count = [], 0
    while count < n_pairs:  # draw in blocks; a block keeps most of its clips
        m = 2 * (n_pairs - count) + 16
        start = torch.randint(0, limit + 1, (m, 2), generator=g)
        velocity = torch.randint(-max_speed, max_speed + 1, (m, 2), generator=g)
        which = torch.randint(0, len(digits), (m,), generator=g)
        cols = bounce(start[:, 1], velocity[:, 1], frames, limit)   # (m, T): x
        ok = (cols[:, -1] - cols[:, 0]).abs() >= min_shift
        rows = bounce(start[:, 0], velocity[:, 0], frames, limit)   # (m, T): y
        kept.append((which[ok], rows[ok], cols[ok]))
        count += int(ok.sum())
    which, rows, cols = (torch.cat(parts)[:n_pairs] for parts in zip(*kept))
    clips = render(digits[which], rows, cols, size)               # (n, T, 1, S, S)
    labels = (cols[:, -1] > cols[:, 0]).long()                    # 1: ends to the right
    return torch.cat([clips, clips.flip(1)]), torch.cat([labels, 1 - labels])


def digit_clips(split: str, n_pairs: int, *, seed: int, n_digits: int | None = None,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`direction_pairs` from the digits of one MNIST split (pixels in [0, 1]).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (see :func:`nnbook.mnist.mnist_split`):
            clips of one split never show a digit image of another.
        n_pairs: number of original clips; the data set holds them and their twins.
        seed: seed of the draw; give each split its own.
        n_digits: use only the first ``n_digits`` images of the split (smoke runs).
        **kwargs: ``frames``, ``size``, ``max_speed``, ``min_shift`` of :func:`direction_pairs`.
    """
    from .mnist import mnist_split

    digits, _ = mnist_split(split, n=n_digits, normalize=False)
    return direction_pairs(digits, n_pairs, seed=seed, **kwargs)
