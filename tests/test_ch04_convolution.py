"""Chapter 04 pushed further: the chapter's own conv2d, pooling, Conv2d, LeNet5 and
receptive_field against PyTorch's built-ins, over wider grids, edge cases and bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn

import nnbook
from nnbook.exercises import check

ch = load_chapter("04")

# Configurations the notebook's grid does not cover, each for a reason.
MORE_CONV_CASES = [  # (B, C_in, H, W, C_out, k, stride, padding, dilation, groups)
    (2, 5, 7, 7, 3, 1, 1, 0, 1, 1),      # 1x1 kernel (chapter 05's per-pixel linear map)
    (1, 2, 9, 9, 3, 2, 3, 0, 1, 1),      # stride larger than the kernel: pixels skipped
    (2, 2, 6, 8, 4, 3, 1, 3, 1, 1),      # padding wider than half the kernel
    (1, 3, 17, 13, 6, 3, 2, 1, 3, 3),    # dilation 3 with stride 2 and 3 groups
    (2, 3, 9, 9, 6, 3, 1, 1, 1, 3),      # depthwise with 2 kernels per channel
    (1, 2, 5, 5, 4, 5, 1, 0, 1, 1),      # kernel as large as the input: one output pixel
    (3, 1, 12, 7, 2, 7, 2, 3, 1, 1),     # 7x7 kernel, stride 2, on a thin input
    (1, 8, 6, 6, 8, 3, 1, 1, 1, 4),      # 4 groups of 2 channels
]
MORE_POOL_CASES = [  # (H, W, k, stride, padding, dilation)
    (10, 10, 3, 3, 0, 1),    # non-overlapping, a leftover row and column dropped
    (9, 9, 2, 1, 1, 1),      # stride 1 with padding: border windows hold padding
    (12, 5, 4, 2, 2, 1),     # padding exactly half the window, non-square input
    (13, 13, 3, 2, 1, 2),    # dilated and padded (max pooling only)
    (7, 7, 7, 1, 0, 1),      # one window over the whole map: global pooling
]


@pytest.mark.parametrize("case", ch.CONV_CASES + MORE_CONV_CASES, ids=str)
def test_conv2d_matches_F_conv2d_in_values_and_gradients(case):
    """Catches a wrong unfold order, group split, stride, padding or dilation, and a wrong (4.2)."""
    B, C_in, H, W, C_out, k, s, p, d, g = case
    shape = ch.check_conv(case)
    assert shape == (B, C_out, ch.out_size(H, k, stride=s, padding=p, dilation=d),
                     ch.out_size(W, k, stride=s, padding=p, dilation=d))


def test_the_notebooks_conv_check_can_fail(monkeypatch):
    """Catches a vacuous check: a true (kernel-flipping) convolution must fail check_conv."""
    conv2d = ch.conv2d
    monkeypatch.setattr(ch, "conv2d", lambda x, w, b=None, **kw: conv2d(x, w.flip(-2, -1), b, **kw))
    with pytest.raises(AssertionError):
        ch.check_conv(ch.CONV_CASES[1])


@pytest.mark.parametrize("case", ch.CONV_CASES + MORE_CONV_CASES, ids=str)
def test_hand_derived_conv_gradients_equal_autograd(case):
    """Catches a transposed G X_col^T, a fold with the wrong stride/padding/dilation, a group
    mix-up in W_mat^T G, or a bias gradient summed over the wrong axes."""
    ch.check_conv_backward(case)


def test_the_notebooks_backward_check_can_fail(monkeypatch):
    """Catches a vacuous check: a wrong input gradient (here clipped) must fail it."""
    backward = ch.conv2d_backward

    def no_overlap(x, w, grad_y, **kw):
        grad_x, grad_w, grad_b = backward(x, w, grad_y, **kw)
        return grad_x.clamp(max=grad_x.mean()), grad_w, grad_b

    monkeypatch.setattr(ch, "conv2d_backward", no_overlap)
    with pytest.raises(AssertionError, match="dx"):
        ch.check_conv_backward(ch.CONV_CASES[2])


def test_conv2d_backward_rejects_a_gradient_of_the_wrong_shape():
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match=r"grad_y must be \(1, 3, 6, 6\)"):
        ch.conv2d_backward(x, w, torch.randn(1, 3, 8, 8))


def test_shift_moves_pixels_and_fills_the_background():
    """Catches a shift in the wrong direction or one that wraps pixels around."""
    x = torch.arange(16.0).view(1, 1, 4, 4)
    moved = ch.shift(x, 1, 2, fill=-1.0)
    assert moved[0, 0, 2:, 1:].equal(x[0, 0, :2, :3])
    assert (moved[0, 0, :2] == -1).all() and (moved[0, 0, :, 0] == -1).all()
    assert ch.shift(ch.shift(x, -2), 2)[..., 2:].equal(x[..., 2:])


def resample(x, degrees=0.0, scale=1.0, tx=0.0, ty=0.0, fill=0.0):
    """ch.affine_resample with the same map for every image of x."""
    B = len(x)
    return ch.affine_resample(x, torch.full((B,), degrees * torch.pi / 180),
                              torch.full((B,), scale), torch.full((B,), tx),
                              torch.full((B,), ty), fill=fill)


def test_affine_resample_is_exact_on_pixel_grid_maps():
    """Catches translations in PyTorch's [-1, 1] units instead of pixels, a rotation about the
    corner instead of the centre, or a map applied the wrong way round ((4.5) reads x at s R p + t,
    so the image moves by -t)."""
    x = torch.randn(3, 2, 10, 10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resample(x), x)
    torch.testing.assert_close(resample(x, tx=-2.0, ty=-1.0, fill=-0.5),
                               ch.shift(x, 2, 1, fill=-0.5))         # 2 right, 1 down
    torch.testing.assert_close(resample(x, tx=3.0, fill=-0.5), ch.shift(x, -3, fill=-0.5))
    torch.testing.assert_close(resample(x, degrees=90.0), torch.rot90(x, 1, dims=(-2, -1)),
                               atol=1e-5, rtol=0)                    # quarter turn: exact grid
    torch.testing.assert_close(resample(x, degrees=180.0), x.flip(-1, -2), atol=1e-5, rtol=0)
    far = resample(x, tx=30.0, fill=-0.5)                            # reads only outside x
    assert (far == -0.5).all()


def test_affine_resample_scales_about_the_centre():
    """A bright square of side 4 at the centre of a 12 x 12 image: reading at s p shrinks it by
    1/s, so s = 2 leaves a centred 2 x 2 square and s = 0.5 an 8 x 8 one."""
    x = torch.zeros(1, 1, 12, 12)
    x[..., 4:8, 4:8] = 1.0
    torch.testing.assert_close(resample(x, scale=2.0)[0, 0, 5:7, 5:7], torch.ones(2, 2))
    assert float(resample(x, scale=2.0).sum()) == pytest.approx(4.0, abs=1e-4)
    torch.testing.assert_close(resample(x, scale=0.5)[0, 0, 3:9, 3:9], torch.ones(6, 6))
    assert float(resample(x, scale=0.5).sum()) == pytest.approx(64.0, abs=2.0)  # blurred rim


def centre_of_mass(images):
    """(row, column) of each image's brightness centre, images (B, 1, H, W) >= 0."""
    H, W = images.shape[-2:]
    mass = images.sum((1, 2, 3))
    rows = (images.sum((1, 3)) * torch.arange(H)).sum(1) / mass
    cols = (images.sum((1, 2)) * torch.arange(W)).sum(1) / mass
    return torch.stack([rows, cols], 1)


def test_distort_draws_each_image_its_own_map_within_the_ranges():
    """Catches one map for the whole batch, ranges in the wrong units (a shift of 2 [-1, 1]-units
    is 28 pixels), or a generator that is not used."""
    x, _ = nnbook.mnist.mnist_split("val", n=64, normalize=False)      # pixels in [0, 1]
    moved = ch.distort(x, generator=torch.Generator().manual_seed(0), max_degrees=0.0,
                       max_scale=0.0)
    step = (centre_of_mass(moved) - centre_of_mass(x)).abs()
    assert float(step.max()) <= 2.0 + 0.05, "moved by more than max_shift pixels"
    assert float(step.max()) > 1.0 and len(step.unique()) > 60, "moves too small or shared"
    turned = ch.distort(x, generator=torch.Generator().manual_seed(0), max_shift=0.0)
    mass_ratio = turned.sum((1, 2, 3)) / x.sum((1, 2, 3))   # scaled by 1/s: mass by 1/s^2
    assert float(mass_ratio.min()) > 1 / 1.1**2 - 0.03 and float(mass_ratio.max()) < 1 / 0.9**2 + 0.03
    assert float((turned - x).abs().amax((1, 2, 3)).min()) > 0.1, "an image was left as it was"
    still = ch.distort(x, generator=torch.Generator().manual_seed(0), max_degrees=0.0,
                       max_scale=0.0, max_shift=0.0)
    torch.testing.assert_close(still, x)
    again = ch.distort(x, generator=torch.Generator().manual_seed(0), max_degrees=0.0,
                       max_scale=0.0)
    assert again.equal(moved), "the same generator state must give the same maps"


def test_distorted_loader_keeps_labels_and_draws_afresh_every_pass():
    x, y = nnbook.mnist.mnist_split("val", n=40)
    blank = float(x.min())
    loader = ch.Distorted(nnbook.TensorLoader(x, y, batch_size=16), fill=blank,
                          generator=torch.Generator().manual_seed(0))
    assert len(loader) == 3
    first, second = list(loader), list(loader)
    assert torch.cat([b[1] for b in first]).equal(y)
    assert not torch.cat([b[0] for b in first]).equal(x)
    assert not torch.cat([b[0] for b in first]).equal(torch.cat([b[0] for b in second]))
    assert float(torch.cat([b[0] for b in first]).min()) >= blank - 1e-5  # background stays blank


@pytest.mark.parametrize("case", ch.POOL_CASES + MORE_POOL_CASES, ids=str)
def test_pooling_matches_torch_in_values_and_gradients(case):
    """Catches padding that wins a max, a mean that skips padded zeros, a wrong window step."""
    assert ch.check_pool(case) == (1 if case[-1] > 1 else 2)


def test_pooling_stride_defaults_to_the_window():
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ch.max_pool2d(x, 3), F.max_pool2d(x, 3))
    torch.testing.assert_close(ch.avg_pool2d(x, 3), F.avg_pool2d(x, 3))


@pytest.mark.parametrize("k, s, p, d", [(2, 2, 0, 1), (3, 2, 1, 1), (3, 1, 1, 1), (2, 2, 1, 2)])
def test_a_tied_maximum_gets_the_whole_gradient_once_like_pytorch(k, s, p, d):
    """Catches amax-style pooling, which splits a tied maximum's gradient between the ties."""
    gen = torch.Generator().manual_seed(k + s + p + d)
    ints = torch.randint(-2, 3, (2, 3, 10, 10), generator=gen).double()
    x = F.relu(ints).requires_grad_()                  # a ReLU's output: ties everywhere
    ours = ch.max_pool2d(x, k, stride=s, padding=p, dilation=d)
    ref = F.max_pool2d(x, k, stride=s, padding=p, dilation=d)
    torch.testing.assert_close(ours, ref)
    G = torch.rand(ref.shape, dtype=torch.float64, generator=gen) + 0.5
    (g_ours,), (g_ref,) = torch.autograd.grad(ours, x, G), torch.autograd.grad(ref, x, G)
    torch.testing.assert_close(g_ours, g_ref)
    windows = ch._windows(x, k, stride=s, padding=p, dilation=d, pad_value=float("-inf"))
    (g_split,) = torch.autograd.grad(windows.amax(dim=2), x, G)
    assert not torch.allclose(g_split, g_ref), "these inputs must hold ties for the test to mean anything"


def test_gradcheck_dilated_grouped_strided():
    gen = torch.Generator().manual_seed(1)
    f64 = dict(dtype=torch.float64, generator=gen, requires_grad=True)
    x, w, b = torch.randn(1, 4, 7, 7, **f64), torch.randn(4, 2, 3, 3, **f64), torch.randn(4, **f64)
    conv = lambda x, w, b: ch.conv2d(x, w, b, stride=2, padding=2, dilation=2, groups=2)  # noqa: E731
    assert torch.autograd.gradcheck(conv, (x, w, b))
    assert torch.autograd.gradcheck(lambda x: ch.max_pool2d(x, 2, stride=1, padding=1, dilation=2), (x,))
    assert torch.autograd.gradcheck(lambda x: ch.avg_pool2d(x, 3, stride=2, padding=1), (x,))


@pytest.mark.parametrize("k, kwargs", [
    (3, {}), (3, dict(stride=2, padding=1)), (5, dict(padding=2, dilation=2)),
    (3, dict(padding=1, groups=2)), (1, {}),
], ids=str)
def test_Conv2d_equals_nn_Conv2d_with_the_same_weights(k, kwargs):
    """Catches a module that stores stride, padding, dilation or groups but does not use them."""
    torch.manual_seed(0)
    ours, ref = ch.Conv2d(4, 6, k, **kwargs), nn.Conv2d(4, 6, k, **kwargs)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 11, 11, requires_grad=True)
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref)
    G = torch.randn(y_ref.shape)
    for a, r in zip(torch.autograd.grad(y_ours, (x, *ours.parameters()), G),
                    torch.autograd.grad(y_ref, (x, *ref.parameters()), G), strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("c_in, c_out, k, groups", [(64, 32, 3, 1), (64, 64, 3, 4), (16, 8, 5, 1)])
def test_Conv2d_initializes_in_nn_Conv2ds_range(c_in, c_out, k, groups):
    """Catches a fan-in without k² or without the groups: the weights' range would differ."""
    torch.manual_seed(0)
    ours, ref = ch.Conv2d(c_in, c_out, k, groups=groups), nn.Conv2d(c_in, c_out, k, groups=groups)
    assert ours.weight.shape == ref.weight.shape and ours.bias.shape == ref.bias.shape
    bound = float(ref.weight.detach().abs().max())  # thousands of draws: ~ 1 / sqrt(fan-in)
    assert float(ours.weight.detach().abs().max()) == pytest.approx(bound, rel=0.01)
    assert float(ours.bias.detach().abs().max()) <= bound * 1.01


def lenet_as_layer_table():
    """The chapter's LeNet-5 table, written with built-in layers only."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )


def test_lenet5_scratch_builtin_and_layer_table_are_one_function():
    """Copies the weights across: catches a misplaced pooling, ReLU or padding that keeps the
    shapes, and from-scratch layers whose gradients differ inside the whole network."""
    torch.manual_seed(0)
    ours, fast, table = ch.LeNet5(), ch.LeNet5(conv=nn.Conv2d, pool=nn.MaxPool2d(2)), lenet_as_layer_table()
    fast.load_state_dict(ours.state_dict())
    with torch.no_grad():
        for p, q in zip(table.parameters(), ours.parameters(), strict=True):
            p.copy_(q)
    assert nnbook.count_parameters(ours) == nnbook.count_parameters(table) == 61_706
    x, labels = torch.randn(16, 1, 28, 28), torch.randint(10, (16,))
    a1, a3 = ours.features(x)
    torch.testing.assert_close(a1, table[:2](x))     # c1 maps after ReLU (B, 6, 28, 28)
    torch.testing.assert_close(a3, table[:5](x))     # c3 maps after ReLU (B, 16, 10, 10)
    grads = {}
    for name, model in (("ours", ours), ("fast", fast), ("table", table)):
        out = model(x)
        torch.testing.assert_close(out, table(x))
        grads[name] = torch.autograd.grad(F.cross_entropy(out, labels), list(model.parameters()))
    for g_ours, g_fast, g_table in zip(grads["ours"], grads["fast"], grads["table"], strict=True):
        torch.testing.assert_close(g_ours, g_table)
        torch.testing.assert_close(g_fast, g_table)


RF_STACKS = [  # lists of (kernel, stride, dilation)
    [(5, 1, 1), (2, 2, 1), (5, 1, 1)],              # LeNet up to c3
    [(5, 1, 1), (2, 2, 1), (5, 1, 1), (2, 2, 1)],   # LeNet's two stages
    [(3, 1, 1)] * 3,
    [(3, 1, 1), (3, 1, 2), (3, 1, 4)],              # dilations 1, 2, 4
    [(3, 2, 1), (3, 2, 1), (3, 1, 2)],              # strides, then a dilation
    [(7, 2, 1), (3, 2, 1), (3, 1, 1)],              # a ResNet-like stem
]


@pytest.mark.parametrize("layers", RF_STACKS, ids=str)
def test_receptive_field_and_jump_match_backpropagation(layers):
    """Catches (4.4) without the jump or without the dilation: both are measured here."""
    r, jump = ch.receptive_field(layers)
    stack = nn.Sequential(*[nn.Conv2d(1, 1, (1, k), stride=(1, s), dilation=(1, d), bias=False)
                            for k, s, d in layers])  # along the width only
    for conv in stack:
        nn.init.ones_(conv.weight)                    # positive weights: nothing cancels
    x = torch.zeros(1, 1, 1, 64, requires_grad=True)  # wide enough for every stack
    spans = []
    for j in (0, 1):                                # two neighbouring output units
        (g,) = torch.autograd.grad(stack(x)[0, 0, 0, j], x)
        seen = g[0, 0].sum(0).nonzero()
        spans.append((int(seen.min()), int(seen.max())))
    assert spans[0][1] - spans[0][0] + 1 == r, f"unit sees {spans[0]}, (4.4) says r={r}"
    assert spans[1][0] - spans[0][0] == jump, f"neighbours are {spans}, (4.4) says jump={jump}"


def test_output_size_examples_of_the_text():
    assert ch.out_size(28, 5, padding=2) == 28
    assert ch.out_size(14, 5) == 10
    assert ch.out_size(224, 11, stride=4, padding=2) == 55     # exercise 1
    assert ch.out_size(55, 3, stride=2) == 27


def test_hand_made_kernels():
    """Catches a typo in a kernel's weights, a flipped kernel or a shifted 'same' padding."""
    image = torch.rand(9, 12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ch.filtered(ch.KERNELS["identity"], image), image)
    flat = torch.full((9, 12), 0.5)
    for name, kernel in ch.KERNELS.items():
        k = kernel.shape[-1] // 2
        inner = ch.filtered(kernel, flat)[k:-k, k:-k]   # away from the zero padding
        level = 0.0 if name.startswith(("Sobel", "Laplacian")) else 0.5  # detectors see 0
        torch.testing.assert_close(inner, torch.full_like(inner, level), msg=name)
    ramp = torch.arange(12.0).expand(9, 12)             # brighter to the right, slope 1
    sobel_x = ch.filtered(ch.KERNELS["Sobel x"], ramp)[1:-1, 1:-1]
    assert (sobel_x == 8).all(), "Sobel x = (1 + 2 + 1) x (2 pixels of slope 1), positive"


BAD_INPUTS = [
    pytest.param(lambda: ch.conv2d(torch.randn(3, 5, 5), torch.randn(4, 3, 3, 3)),
                 r"x \(B, C_in, H, W\)", id="3-d input"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 2)),
                 "square kernel", id="non-square kernel"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3), groups=2),
                 "groups=2 does not fit 3 input channels", id="channels not divisible"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 4, 5, 5), torch.randn(3, 2, 3, 3), groups=2),
                 "groups=2 does not fit", id="outputs not divisible"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(3)),
                 r"bias must have shape \(4,\)", id="bias"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 3, 4, 4), torch.randn(4, 3, 5, 5)),
                 "does not fit the 4x4 input", id="kernel larger than input"),
    pytest.param(lambda: ch.conv2d(torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), dilation=3),
                 "dilation 3 does not fit the 6x6 input", id="dilated kernel larger than input"),
    pytest.param(lambda: ch.Conv2d(3, 4, 3)(torch.randn(1, 2, 8, 8)),
                 "does not fit 2 input channels", id="module gets wrong channels"),
    pytest.param(lambda: ch.max_pool2d(torch.randn(3, 8, 8), 2),
                 r"pooling expects x \(B, C, H, W\)", id="3-d pooling input"),
    pytest.param(lambda: ch.max_pool2d(torch.randn(1, 3, 8, 8), 3, padding=2),
                 "padding must be at most half the window 3; got 2", id="max pool padding"),
    pytest.param(lambda: ch.avg_pool2d(torch.randn(1, 3, 8, 8), 2, padding=2),
                 "at most half the window", id="avg pool padding"),
    pytest.param(lambda: resample(torch.randn(1, 1, 8, 6)),
                 r"square images \(B, C, H, H\); got \(1, 1, 8, 6\)", id="non-square image"),
    pytest.param(lambda: ch.affine_resample(torch.randn(2, 1, 8, 8), *[torch.zeros(3)] * 4),
                 r"angle must have shape \(2,\); got \(3,\)", id="one map per image"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS)
def test_bad_inputs_raise_value_errors_that_say_what_was_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def solved_rf(layers):
    """A reference solution of exercise 2: each kernel adds (k - 1) d input pixels per step of
    the product of the strides before it."""
    r, spread = 1, 1
    for k, s, d in layers:
        r += (k - 1) * d * spread
        spread *= s
    return r


def test_exercise_2_receptive_field(capsys):
    assert check("Exercise 2", ch.rf, ch.test_rf) is None          # the stub: not attempted
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_rf, ch.test_rf) is True
    assert [solved_rf(layers) for layers in RF_STACKS] == [ch.receptive_field(x)[0] for x in RF_STACKS]
    without_jump = lambda layers: 1 + sum((k - 1) * d for k, s, d in layers)  # noqa: E731
    with pytest.raises(AssertionError, match="16 pixels"):
        check("Exercise 2", without_jump, ch.test_rf)
    without_dilation = lambda layers: solved_rf([(k, s, 1) for k, s, d in layers])  # noqa: E731
    with pytest.raises(AssertionError, match="15 pixels"):
        check("Exercise 2", without_dilation, ch.test_rf)
