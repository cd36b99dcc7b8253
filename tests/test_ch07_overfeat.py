"""Chapter 07 checks, on the chapter's own definitions: the digit-canvas generator of the lib
(nnbook.canvas), IoU and NMS against torchvision.ops over wide grids, average precision against
torchmetrics' MeanAveragePrecision (COCO's 101-point AP at IoU 0.5, through pycocotools) and
against hand-built cases, the fully convolutional identity (7.4) and offset pooling (7.7) over
image sizes, the training windows, bad inputs, and the coding exercise."""

import itertools

import pytest
import torch
import torchvision
from chapters import load_chapter

from nnbook.canvas import DIGIT, INK, digit_canvases, ink_boxes, place_digits, scale_digits
from nnbook.exercises import check

ch = load_chapter("07")


def _fake_digits(n, seed=0):
    """n random blobs shaped like MNIST digits: a solid block with noise, labels 0..9."""
    g = torch.Generator().manual_seed(seed)
    d = torch.zeros(n, DIGIT, DIGIT)
    d[:, 4:24, 8:20] = 0.5 + 0.5 * torch.rand(n, 20, 12, generator=g)
    return d, torch.arange(n) % 10


def _random_boxes(n, gen, spread=50.0, size=20.0):
    xy = torch.rand(n, 2, generator=gen) * spread
    wh = torch.rand(n, 2, generator=gen) * size + 0.5
    return torch.cat([xy, xy + wh], 1)


# ---------------------------------------------------------------- nnbook.canvas

def test_same_seed_same_canvases_other_seed_other_canvases():
    """Catches a generator drawn from the global RNG (not reproducible) or a seed ignored."""
    digits, labels = _fake_digits(30)
    a = place_digits(digits, labels, 6, seed=3)
    b = place_digits(digits, labels, 6, seed=3)
    c = place_digits(digits, labels, 6, seed=4)
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
    assert not torch.equal(a[0], c[0])


def test_ink_boxes_are_tight_on_real_canvases():
    """Every ink pixel lies in some box and every box edge touches ink: catches an off-by-one
    in x1 = last + 1, swapped x/y, or boxes of the 28 x 28 frame instead of the ink."""
    x, boxes, labels = digit_canvases("val", 40, seed=0, n_source=300)
    assert x.shape == (40, 1, 96, 96) and 0 <= float(x.min()) and float(x.max()) <= 1
    for img, bxs in zip(x[:, 0], boxes):
        ink = img >= INK
        covered = torch.zeros_like(ink)
        for x0, y0, x1, y1 in bxs.long().tolist():
            covered[y0:y1, x0:x1] = True
            inside = ink[y0:y1, x0:x1]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() \
                and inside[:, -1].any(), "a box edge without ink: the box is not tight"
        assert not (ink & ~covered).any(), "ink outside every box"


def test_counts_sizes_and_overlaps_follow_the_arguments():
    """Catches a wrong digit count, scale range or overlap rule."""
    digits, labels = _fake_digits(50)
    x, boxes, classes = place_digits(digits, labels, 40, seed=1, size=128, n_digits=(2, 4),
                                     scale=(0.8, 1.2), max_iou=0.0)
    side = round(28 * 1.2)
    for b, c in zip(boxes, classes):
        assert 2 <= len(b) <= 4 and b.shape == (len(c), 4) and c.dtype == torch.int64
        assert ((b[:, 2:] - b[:, :2]) <= side).all() and (b >= 0).all() and (b <= 128).all()
        iou = torchvision.ops.box_iou(b, b) - torch.eye(len(b))
        assert (iou <= 1e-6).all(), "ink boxes overlap although max_iou = 0"


def test_a_crowded_canvas_leaves_digits_out():
    """On a canvas barely larger than one big digit, later digits find no free place and are
    left out (not placed on top of the first)."""
    digits, labels = _fake_digits(10)
    _, boxes, _ = place_digits(digits, labels, 5, seed=0, size=40, n_digits=(5, 5),
                               scale=(1.35, 1.35), max_iou=0.05)
    assert all(1 <= len(b) < 5 for b in boxes)


def test_scale_digits_identity_and_half_size():
    """At side 28 the resampling returns the digit itself; at side 14 a constant image stays
    constant inside the 14 x 14 square and zero outside."""
    digits, _ = _fake_digits(3)
    same = scale_digits(digits, torch.tensor([28, 28, 28]), 40)
    torch.testing.assert_close(same[:, :28, :28], digits)
    assert same[:, 28:].abs().max() == 0 and same[:, :, 28:].abs().max() == 0
    half = scale_digits(torch.ones(1, 28, 28), torch.tensor([14]), 20)[0]
    torch.testing.assert_close(half[:14, :14], torch.ones(14, 14))
    assert half[14:].abs().max() == 0


def test_ink_boxes_by_hand():
    img = torch.zeros(2, 10, 12)
    img[0, 2:5, 5:10] = 1.0
    img[0, 3, 4] = INK / 2                       # faint: not ink
    assert ink_boxes(img).tolist() == [[5.0, 2.0, 10.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_digit_canvases_draw_from_the_named_split():
    """digit_canvases(split) = place_digits on mnist_split(split): catches a split mixed up
    (validation canvases built from training digits would leak into every choice)."""
    from nnbook.mnist import mnist_split

    for split in ("val", "test"):
        digits, labels = mnist_split(split, n=100, normalize=False)
        want = place_digits(digits, labels, 4, seed=9)
        got = digit_canvases(split, 4, seed=9, n_source=100)
        assert torch.equal(want[0], got[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(digits=torch.zeros(4, 27, 28)), r"digits must be \(M, 28, 28\)"),
    (dict(labels=torch.zeros(3)), r"labels must be \(4,\)"),
    (dict(size=30), r"round\(28 scale\[1\]\) <= size=30"),
    (dict(n_digits=(3, 2)), "n_digits"),
])
def test_bad_canvas_arguments_are_rejected(kwargs, message):
    digits, labels = _fake_digits(4)
    args = dict(digits=digits, labels=labels, n_canvases=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        place_digits(**args)


# ---------------------------------------------------------------- IoU and NMS

def test_box_iou_matches_torchvision_including_batches():
    """Catches a swapped corner, a missing clamp of empty intersections, or a broadcast
    along the wrong axis in the batched form."""
    gen = torch.Generator().manual_seed(0)
    for n, m in [(1, 1), (5, 3), (40, 60)]:
        a, b = _random_boxes(n, gen), _random_boxes(m, gen)
        torch.testing.assert_close(ch.box_iou(a, b), torchvision.ops.box_iou(a, b))
    a, b = _random_boxes(24, gen).view(2, 3, 4, 4), _random_boxes(30, gen).view(2, 3, 5, 4)
    batched = ch.box_iou(a, b)
    for i, j in itertools.product(range(2), range(3)):
        torch.testing.assert_close(batched[i, j], torchvision.ops.box_iou(a[i, j], b[i, j]))
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    inner = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    far = torch.tensor([[5.0, 5.0, 6.0, 6.0]])
    assert ch.box_iou(box, inner).item() == 0.25 and ch.box_iou(box, far).item() == 0


@pytest.mark.parametrize("seed", range(6))
def test_nms_keeps_what_torchvision_keeps(seed):
    """Clustered boxes (long suppression chains) and every threshold from 0 to 0.9: catches
    suppression by boxes that were themselves suppressed, '>=' for '>', or the wrong order."""
    gen = torch.Generator().manual_seed(seed)
    for n, threshold in itertools.product([1, 2, 7, 30, 150], [0.0, 0.1, 0.3, 0.5, 0.7, 0.9]):
        spread = 10.0 if n > 7 else 40.0               # clustered: many overlaps
        boxes = _random_boxes(n, gen, spread=spread)
        scores = torch.rand(n, generator=gen)
        assert torch.equal(ch.nms(boxes, scores, threshold),
                           torchvision.ops.nms(boxes, scores, threshold))


def test_batched_nms_keep_equals_one_set_at_a_time():
    """Padding (score -inf) neither survives nor suppresses; each set is its own NMS."""
    gen = torch.Generator().manual_seed(7)
    sizes = [0, 1, 5, 12]
    boxes, scores = torch.zeros(4, 12, 4), torch.full((4, 12), -torch.inf)
    for k, n in enumerate(sizes):
        boxes[k, :n], scores[k, :n] = _random_boxes(n, gen, spread=15), torch.rand(n, generator=gen)
    boxes[:, 11] = boxes[:, 0]                 # padding on top of a real box: must not suppress
    keep = ch.nms_keep(boxes, scores, 0.4)
    for k, n in enumerate(sizes):
        want = torch.zeros(12, dtype=torch.bool)
        want[torchvision.ops.nms(boxes[k, :n], scores[k, :n], 0.4)] = True
        assert torch.equal(keep[k], want)


def test_nms_chain_by_hand():
    """A suppresses B; B would suppress C, but B is gone, so C stays (greedy NMS, 7.9).
    Suppressing by every higher-scored box would drop C."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert ch.nms(boxes, scores, 0.3).tolist() == [0, 2]
    assert ch.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.parametrize("call, message", [
    (lambda: ch.box_iou(torch.zeros(5), torch.zeros(2, 4)), r"a must be \(\.\.\., N, 4\); got \(5,\)"),
    (lambda: ch.box_iou(torch.zeros(2, 4), [[0, 0, 1, 1]]), r"b must be \(\.\.\., N, 4\); got list"),
    (lambda: ch.nms_keep(torch.zeros(3, 4), torch.zeros(4), 0.5), r"scores must be \(3,\); got \(4,\)"),
    (lambda: ch.nms(torch.zeros(2, 3, 4), torch.zeros(2, 3), 0.5), r"boxes must be \(n, 4\)"),
])
def test_bad_boxes_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- average precision

def _scene(seed, n_images=12):
    """Random canvases with disjoint ground-truth boxes on a grid, and detections around them:
    jittered copies (some with the wrong class, some duplicated) and random false boxes."""
    g = torch.Generator().manual_seed(seed)
    gts_b, gts_l, dets = [], [], []
    for _ in range(n_images):
        k = int(torch.randint(1, 6, (1,), generator=g))
        cells = torch.randperm(16, generator=g)[:k]
        xy = torch.stack([cells % 4, cells // 4], 1).float() * 30 + torch.rand(k, 2, generator=g) * 5
        wh = 8 + torch.rand(k, 2, generator=g) * 14
        gb = torch.cat([xy, xy + wh], 1)
        gl = torch.randint(0, 4, (k,), generator=g)
        copies = torch.randint(0, 3, (k,), generator=g)                # 0, 1 or 2 detections
        src = torch.repeat_interleave(torch.arange(k), copies)
        db = gb[src] + torch.randn(len(src), 4, generator=g) * 3
        dl = torch.where(torch.rand(len(src), generator=g) < 0.15,
                         torch.randint(0, 4, (len(src),), generator=g), gl[src])
        n_false = int(torch.randint(0, 4, (1,), generator=g))
        fb = _random_boxes(n_false, g, spread=100)
        db, dl = torch.cat([db, fb]), torch.cat([dl, torch.randint(0, 4, (n_false,), generator=g)])
        db[:, 2:] = torch.maximum(db[:, 2:], db[:, :2] + 1)
        gts_b.append(gb)
        gts_l.append(gl)
        dets.append((db, torch.rand(len(db), generator=g), dl))
    return dets, gts_b, gts_l


@pytest.mark.parametrize("seed", range(5))
def test_101_point_ap_equals_torchmetrics_at_iou_half(seed):
    """Our COCO-convention AP (7.11) against torchmetrics' MeanAveragePrecision (pycocotools)
    with iou_thresholds=[0.5]: the mAP and every class's AP. Catches a wrong envelope, recall
    points off by one, an unmatched duplicate counted as a hit, or missed ground truths left
    out of recall."""
    from torchmetrics.detection import MeanAveragePrecision

    dets, gts_b, gts_l = _scene(seed)
    metric = MeanAveragePrecision(iou_thresholds=[0.5], class_metrics=True)
    metric.update([dict(boxes=b, scores=s, labels=lab) for b, s, lab in dets],
                  [dict(boxes=b, labels=lab) for b, lab in zip(gts_b, gts_l)])
    ref = metric.compute()
    ours, per_class = ch.mean_ap(dets, gts_b, gts_l, points=101)
    assert abs(ours - float(ref["map"])) < 1e-6
    for c, value in zip(ref["classes"].tolist(), ref["map_per_class"].tolist()):
        if value >= 0:                                   # -1: a class without ground truth
            assert abs(float(per_class[c]) - value) < 1e-6, f"class {c}"


def test_all_point_ap_by_hand():
    """Hand-built ranked lists (7.10): perfect, all wrong, late hit, missed ground truth, and
    a dip that the envelope fills."""
    ap = ch.average_precision
    t, f = True, False
    cases = [([t, t], 2, 1.0), ([f, f], 2, 0.0), ([f, t], 1, 0.5), ([t], 2, 0.5),
             ([t, f, f, t], 2, 0.75), ([t, f, t, f], 3, 5 / 9)]
    for tp, n_gt, want in cases:
        scores = torch.linspace(1, 0.1, len(tp))
        assert abs(ap(scores, torch.tensor(tp), n_gt) - want) < 1e-12, (tp, n_gt)
    assert ap(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 3) == 0.0


def test_all_point_ap_equals_the_sklearn_route_on_a_wide_grid():
    """Catches an envelope taken in the wrong direction (max over lower recalls)."""
    g = torch.Generator().manual_seed(11)
    for _ in range(300):
        m = int(torch.randint(1, 200, (1,), generator=g))
        is_tp = torch.rand(m, generator=g) < float(torch.rand(1, generator=g))
        scores = torch.rand(m, generator=g)
        n_gt = int(is_tp.sum()) + int(torch.randint(0, 10, (1,), generator=g)) + 1
        assert abs(ch.average_precision(scores, is_tp, n_gt)
                   - ch.ap_through_sklearn(scores, is_tp, n_gt)) < 1e-9


def test_match_names_duplicates_wrong_classes_and_background():
    """One canvas: a hit, its duplicate, a wrong class on the other digit, a poor box and a
    box on nothing; the error counts must name each once."""
    gt_b = [torch.tensor([[10.0, 10, 30, 30], [50, 10, 70, 30]])]
    gt_l = [torch.tensor([3, 5])]
    det_b = torch.tensor([[10.0, 10, 30, 30], [11, 10, 31, 30], [50, 10, 70, 31],
                          [10, 10, 20, 18], [80, 80, 90, 90]])
    dets = [(det_b, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]), torch.tensor([3, 3, 3, 3, 3]))]
    m = ch.match(dets, gt_b, gt_l)
    assert m["tp"].tolist() == [True, False, False, False, False]
    assert m["duplicate"].tolist() == [False, True, False, False, False]
    assert ch.error_counts(m, 2) == dict(true_positives=1, duplicates=1, wrong_class=1,
                                         poor_box=1, background=1, missed=1)


@pytest.mark.parametrize("call, message", [
    (lambda: ch.average_precision(torch.ones(3), torch.ones(3, dtype=torch.bool), 2, points=11),
     "points must be 'all' or 101"),
    (lambda: ch.pr_curve(torch.ones(3), torch.ones(2, dtype=torch.bool), 2),
     r"scores and is_tp must both be \(M,\); got \(3,\) and \(2,\)"),
    (lambda: ch.pr_curve(torch.ones(3), torch.ones(3, dtype=torch.bool), 0), "n_gt must be >= 1"),
])
def test_bad_ap_inputs_are_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------- the fully convolutional net

def test_tiny_example_for_any_signal():
    """Section 1's 1-D identity on random signals of several lengths, both pooling offsets."""
    g = torch.Generator().manual_seed(0)
    for length in (5, 6, 9, 14, 21):
        x = torch.randn(length, generator=g)
        windows = torch.stack([ch.tiny_window_classifier(x[i:i + 5]) for i in range(length - 4)])
        torch.testing.assert_close(ch.tiny_fully_convolutional(x), windows[0::2])
        if length > 5:
            torch.testing.assert_close(ch.tiny_fully_convolutional(x, 1), windows[1::2])


@pytest.mark.parametrize("size", [(34, 34), (35, 47), (64, 64), (71, 40)])
def test_score_map_equals_every_crop_for_odd_sizes(size):
    """(7.4) and (7.7) for sizes that are not multiples of the stride, and a non-square
    image: catches an interleave that assumes even maps or swaps rows and columns, and box
    maps converted with the wrong reshape."""
    torch.manual_seed(sum(size))
    clf = ch.WindowClassifier(c1=4, c2=8, hidden=16, box_hidden=8).eval()
    fcn = ch.FullyConvolutional(clf).eval()
    x = torch.rand(2, 1, *size)
    with torch.no_grad():
        for offsets, stride in ((False, 4), (True, 2)):
            logits, boxes = fcn(x, offsets=offsets)
            crops = ch.crops_of(x, 32, stride)
            ref_logits, ref_boxes = clf(crops)
            h, w = logits.shape[-2:]
            assert (h, w) == ((size[0] - 32) // stride + 1, (size[1] - 32) // stride + 1)
            torch.testing.assert_close(logits.permute(0, 2, 3, 1).reshape(-1, 11), ref_logits,
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(boxes.permute(0, 2, 3, 1).reshape(-1, 4), ref_boxes,
                                       atol=1e-5, rtol=1e-5)


def test_network_inputs_are_checked():
    clf = ch.WindowClassifier(c1=2, c2=2, hidden=4, box_hidden=2)
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 32, 32\); got \(1, 1, 28, 28\)"):
        clf(torch.zeros(1, 1, 28, 28))
    fcn = ch.FullyConvolutional(clf)
    with pytest.raises(ValueError, match=r"H, W >= 32"):
        fcn(torch.zeros(1, 1, 31, 40))
    with pytest.raises(ValueError, match=r"offset pooling needs H, W >= 34"):
        fcn(torch.zeros(1, 1, 33, 40), offsets=True)
    with pytest.raises(ValueError, match="linear must take 2 x 5 x 5 = 50 inputs; got 7"):
        ch.linear_to_conv(torch.nn.Linear(7, 3), 2, 5)


def test_training_windows_are_centred_or_far_and_boxes_decode():
    """Positives within `jitter` of a digit's centre, with targets that decode (c + W t) to
    its box; background windows at least `negative_gap` from every centre; the pixels are
    the canvas's. Catches x/y swapped in the crop or in the targets."""
    digits, labels = _fake_digits(20)
    x, boxes, classes = place_digits(digits, labels, 10, seed=2)
    cfg = ch.Config()
    data = ch.prepare_windows(x, boxes, classes)
    assert data[0].shape == (10, 128, 128) and torch.equal(data[0][:, 16:-16, 16:-16], x[:, 0])
    xb, y, t = ch.window_examples(data, 64, torch.Generator().manual_seed(0), cfg)
    assert xb.shape == (64, 1, 32, 32) and y.shape == (64,) and t.shape == (64, 4)
    assert (y[:32] < 10).all() and (y[32:] == 10).all() and (t[32:] == 0).all()
    all_boxes = torch.cat(boxes)
    assert all((xb[k, 0] >= INK).any() for k in range(32)), "a positive window without ink"
    decoded = t[:32] * 32                             # boxes relative to the window centre
    size = decoded[:, 2:] - decoded[:, :2]
    assert ((size > 0) & (size <= 38)).all()
    centre = (decoded[:, :2] + decoded[:, 2:]) / 2
    assert (centre.abs() <= cfg.jitter + 0.5).all(), "positives not centred on their digit"
    widths = (all_boxes[:, 2:] - all_boxes[:, :2])
    assert all((widths - s).abs().sum(1).min() < 1e-4 for s in size), "sizes of real boxes"


def test_select_per_class_and_across_classes():
    """Two equal boxes of different classes: per-class NMS keeps both, NMS across classes one."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]])
    scores = torch.tensor([[0.9, 0.8, 0.01]])
    labels = torch.tensor([[1, 2, 1]])
    per = ch.select((boxes, scores, labels), score_min=0.05, nms_iou=0.5)
    across = ch.select((boxes, scores, labels), score_min=0.05, nms_iou=0.5, per_class=False)
    assert per[0][2].tolist() == [1, 2] and across[0][2].tolist() == [1]


# ---------------------------------------------------------------- the exercise

def solved_ap_11_point(recall, precision):
    total = 0.0
    for r in torch.linspace(0, 1, 11, dtype=torch.float64):
        reached = recall >= r - 1e-12
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / 11


def test_exercise_ap_11_point():
    name = "Exercise 2 (11-point AP)"
    assert check(name, ch.ap_11_point, ch.test_ap_11_point) is None
    assert check(name, solved_ap_11_point, ch.test_ap_11_point) is True
    with pytest.raises(AssertionError, match="envelope"):       # precision at r, no envelope
        check(name, lambda r, p: sum(float(p[r >= x][0]) if (r >= x).any() else 0.0
                                     for x in torch.linspace(0, 1, 11).double()) / 11,
              ch.test_ap_11_point)
    with pytest.raises(AssertionError):                         # 101 points instead of 11
        check(name, lambda r, p: sum(float(p[r >= x].max()) if (r >= x).any() else 0.0
                                     for x in torch.linspace(0, 1, 101).double()) / 101,
              ch.test_ap_11_point)
