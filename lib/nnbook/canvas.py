"""Digits on a canvas: MNIST digits pasted at random places and sizes, for detection.

Each canvas holds a few digits, each resampled to a random size and pasted at a random place
so that no two digits overlap much; its targets are the digits' classes and the tight boxes
of their ink. Everything is determined by a seed, and the digits of one canvas set come from
one MNIST split, so detectors can be trained, tuned and tested on disjoint digit images.

* :func:`scale_digits` resamples digits to given sizes (bilinear, one batched call).
* :func:`ink_boxes` finds the tight box of each image's ink.
* :func:`place_digits` draws the canvases from given digits.
* :func:`digit_canvases` does the same from one of the book's MNIST splits.

Boxes are ``(x0, y0, x1, y1)`` in pixel units with pixel ``(row i, column j)`` covering
``[j, j + 1] x [i, i + 1]``, so a box's width is ``x1 - x0`` (the convention of
``torchvision.ops``). The task follows the multi-digit scenes of Matan, Burges, LeCun and
Denker (1992) and the detection setting of Sermanet et al. (2014), "OverFeat".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DIGIT = 28  # side of an MNIST digit, in pixels
INK = 0.3   # a pixel is ink when its intensity (in [0, 1]) is at least this


def _check_digits(digits: torch.Tensor) -> torch.Tensor:
    if not isinstance(digits, torch.Tensor) or digits.dim() not in (3, 4) or (
            digits.dim() == 4 and digits.shape[1] != 1) or tuple(digits.shape[-2:]) != (DIGIT, DIGIT):
        got = tuple(digits.shape) if isinstance(digits, torch.Tensor) else type(digits).__name__
        raise ValueError(f"digits must be (M, 28, 28) or (M, 1, 28, 28); got {got}")
    return digits.reshape(-1, DIGIT, DIGIT).float()


def scale_digits(digits: torch.Tensor, sides: torch.Tensor, out: int) -> torch.Tensor:
    """Resample digit ``m`` to a ``sides[m] x sides[m]`` square in the top-left corner of an
    ``out x out`` patch (zeros elsewhere), by bilinear interpolation.

    Output pixel ``j`` (centre ``j + 1/2``) samples the digit at ``(j + 1/2) * 28 / side - 1/2``.

    Shapes:
        ``digits`` ``(M, 28, 28)`` or ``(M, 1, 28, 28)``, ``sides`` ``(M,)`` integers in
        ``[1, out]``; returns ``(M, out, out)`` float32.
    """
    digits = _check_digits(digits)
    sides = torch.as_tensor(sides)
    if sides.shape != (len(digits),) or sides.is_floating_point():
        raise ValueError(f"sides must be an integer tensor of shape ({len(digits)},); got "
                         f"{tuple(sides.shape)} {sides.dtype}")
    if len(sides) and (int(sides.min()) < 1 or int(sides.max()) > out):
        raise ValueError(f"sides must lie in [1, out={out}]")
    j = torch.arange(out, dtype=torch.float32) + 0.5                     # pixel centres
    u = 2 * j[None, :] / sides[:, None].float() - 1                       # (M, out), in [-1, 1]
    grid = torch.stack(torch.broadcast_tensors(u[:, None, :], u[:, :, None]), dim=-1)
    patches = F.grid_sample(digits[:, None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)[:, 0]                    # (M, out, out)
    inside = (torch.arange(out)[None, :] < sides[:, None])                # (M, out)
    return patches * (inside[:, :, None] & inside[:, None, :])


def ink_boxes(images: torch.Tensor, threshold: float = INK) -> torch.Tensor:
    """The tight box ``(x0, y0, x1, y1)`` of the pixels ``>= threshold`` of each image.

    Shapes:
        ``images`` ``(M, H, W)``; returns ``(M, 4)`` float32. An image without ink gets the
        box ``(0, 0, 0, 0)``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be (M, H, W); got {got}")
    ink = images >= threshold
    boxes = []
    for axis in (1, 2):                                    # columns (x), then rows (y)
        hit = ink.any(dim=axis)                            # (M, W) or (M, H)
        n = hit.shape[1]
        first = hit.float().argmax(1)
        last = n - 1 - hit.flip(1).float().argmax(1)
        boxes.append((first, last + 1))
    box = torch.stack([boxes[0][0], boxes[1][0], boxes[0][1], boxes[1][1]], 1).float()
    return box * ink.flatten(1).any(1, keepdim=True)


def _iou(a: tuple, b: tuple) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / max(area - inter, 1e-9)


def _place(inner: list, corners: list, counts: list, max_iou: float) -> tuple[list, list, list]:
    """Rejection sampling, canvas by canvas and digit by digit: the first candidate corner
    whose ink box has IoU <= max_iou with every box already on the canvas. Returns, per digit,
    whether it was placed, its box on the canvas and its corner (x, y)."""
    m = len(inner)
    kept, boxes, placed_xy = [False] * m, [[0.0] * 4] * m, [[0, 0]] * m
    first = 0
    for k_n in counts:
        on_canvas = []
        for i in range(first, first + k_n):
            b = inner[i]
            for x, y in corners[i]:
                box = [b[0] + x, b[1] + y, b[2] + x, b[3] + y]
                if all(_iou(box, other) <= max_iou for other in on_canvas):
                    on_canvas.append(box)
                    kept[i], boxes[i], placed_xy[i] = True, box, [x, y]
                    break
        first += k_n
    return kept, boxes, placed_xy


def place_digits(
    digits: torch.Tensor,
    labels: torch.Tensor,
    n_canvases: int,
    *,
    seed: int,
    size: int = 96,
    n_digits: tuple[int, int] = (2, 5),
    scale: tuple[float, float] = (0.75, 1.35),
    max_iou: float = 0.05,
    tries: int = 50,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Canvases with a few digits each, and their classes and ink boxes.

    Canvas ``n`` gets ``k_n`` digits, ``k_n`` uniform in ``n_digits`` (both ends included),
    drawn with replacement from ``digits``. Each is resampled to side ``round(28 s)`` with
    ``s`` uniform in ``scale`` and pasted at a uniform position inside the canvas; a position
    is kept when the digit's ink box has IoU at most ``max_iou`` with every ink box already on
    the canvas (digits may touch, not cover each other), and after ``tries`` rejected
    positions the digit is left out. Where two digits meet, the brighter pixel wins.

    Args:
        digits, labels: the images (values in [0, 1]) and their classes.
        n_canvases: number of canvases ``N``.
        seed: seed of the draw (same seed and digits, same canvases).
        size: side of the square canvas.
        n_digits: smallest and largest number of digits per canvas.
        scale: smallest and largest scale factor of a digit.
        max_iou: largest IoU allowed between the ink boxes of two digits of one canvas.
        tries: positions tried per digit before leaving it out.

    Shapes:
        ``digits`` ``(M, 28, 28)`` or ``(M, 1, 28, 28)``, ``labels`` ``(M,)``; returns
        canvases ``(N, 1, size, size)`` float32, and lists of ``N`` boxes ``(k_n, 4)`` float32
        and classes ``(k_n,)`` int64.
    """
    digits = _check_digits(digits)
    labels = torch.as_tensor(labels)
    if labels.shape != (len(digits),) or len(digits) == 0:
        raise ValueError(f"labels must be ({len(digits)},) and digits non-empty; got labels "
                         f"{tuple(labels.shape)}")
    lo, hi = n_digits
    if not (isinstance(n_canvases, int) and n_canvases >= 1 and 1 <= lo <= hi):
        raise ValueError(f"need n_canvases >= 1 and 1 <= n_digits[0] <= n_digits[1]; got "
                         f"{n_canvases!r} and {n_digits!r}")
    side_max = round(DIGIT * scale[1])
    if not (0 < scale[0] <= scale[1] and side_max <= size and 0 <= max_iou <= 1):
        raise ValueError(f"need 0 < scale[0] <= scale[1], round(28 scale[1]) <= size={size} "
                         f"and max_iou in [0, 1]; got scale={scale}, max_iou={max_iou}")
    g = torch.Generator().manual_seed(seed)
    count = torch.randint(lo, hi + 1, (n_canvases,), generator=g)        # (N,)
    m = int(count.sum())
    which = torch.randint(0, len(digits), (m,), generator=g)
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(m, generator=g)
    sides = (DIGIT * s).round().long().clamp(1, side_max)
    patches = scale_digits(digits[which], sides, side_max)               # (m, P, P)
    inner = ink_boxes(patches)                                           # (m, 4) in the patch
    u = torch.rand(m, tries, 2, generator=g)
    corner = (u * (size - sides + 1)[:, None, None]).long()              # (m, tries, 2): x, y
    canvas_of = torch.repeat_interleave(torch.arange(n_canvases), count)
    kept, boxes, placed_xy = (torch.tensor(v) for v in _place(
        inner.tolist(), corner.tolist(), count.tolist(), max_iou))
    canvases = torch.zeros(n_canvases * size * size)
    P = side_max
    k = torch.arange(P)
    idx = (canvas_of[kept, None, None] * size * size
           + (placed_xy[kept, 1, None, None] + k[:, None]).clamp(max=size - 1) * size
           + (placed_xy[kept, 0, None, None] + k).clamp(max=size - 1))    # (m', P, P)
    canvases.scatter_reduce_(0, idx.flatten(), patches[kept].flatten(), reduce="amax")
    canvases = canvases.view(n_canvases, 1, size, size)
    per_canvas = torch.bincount(canvas_of[kept], minlength=n_canvases).tolist()
    return (canvases, list(boxes[kept].split(per_canvas)),
            list(labels[which][kept].long().split(per_canvas)))


def digit_canvases(
    split: str, n_canvases: int, *, seed: int, n_source: int | None = None, **kwargs
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """:func:`place_digits` from the digits of one MNIST split (pixels in [0, 1]).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (see :func:`nnbook.mnist.mnist_split`):
            canvases of one split never show a digit image of another.
        n_canvases: number of canvases.
        seed: seed of the draw; give each split its own.
        n_source: use only the first ``n_source`` images of the split (smoke runs).
        **kwargs: ``size``, ``n_digits``, ``scale``, ``max_iou``, ``tries`` of
            :func:`place_digits`.
    """
    from .mnist import mnist_split

    digits, labels = mnist_split(split, n=n_source, normalize=False)
    return place_digits(digits, labels, n_canvases, seed=seed, **kwargs)
