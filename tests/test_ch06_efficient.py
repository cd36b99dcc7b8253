"""Chapter 06 pushed further: the chapter's GoogLeNet, SqueezeNet, MobileNetV2 and Xception against
torchvision's and timm's models (counts, and the same outputs with the same weights, over more
sizes and width multipliers), MobileNet v1 against the paper's table for every width, the blocks
against the reference blocks, the FLOP helpers, the latency timer, the scaled-down networks, and
the exercise."""

from fractions import Fraction

import pytest
import timm
import torch
import torchvision
from chapters import load_chapter
from conftest import randomize_batch_norms
from torch import nn
from torchvision.models.googlenet import Inception as TvInception
from torchvision.models.squeezenet import Fire as TvFire

from nnbook.exercises import check

ch = load_chapter("06")


def same_function(ours_on_meta, ref, x):
    """Give our (meta) model ref's tensors, run both on x, compare."""
    ours = ch.copy_in_order(ours_on_meta, ref).eval()
    with torch.no_grad():
        y_ours, y_ref = ours(x), ref(x)
    assert float(y_ref.std()) > 0
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5 * float(y_ref.abs().max()))


def test_published_counts_are_torchvisions():
    """The numbers the chapter asserts are the ones torchvision publishes for its weights."""
    published = {"GoogLeNet": torchvision.models.GoogLeNet_Weights,
                 "SqueezeNet 1.0": torchvision.models.SqueezeNet1_0_Weights,
                 "MobileNetV2": torchvision.models.MobileNet_V2_Weights}
    for name, weights in published.items():
        assert ch.REFERENCE_COUNTS[name][2] == weights.IMAGENET1K_V1.meta["num_params"]


@pytest.mark.parametrize("name, build, reference, size", [
    ("googlenet", lambda: ch.googlenet(),
     lambda: torchvision.models.googlenet(weights=None, aux_logits=False), 64),
    ("googlenet 10 classes", lambda: ch.googlenet(n_classes=10),
     lambda: torchvision.models.googlenet(weights=None, aux_logits=False, num_classes=10), 96),
    ("squeezenet1_0", lambda: ch.squeezenet_v10(), torchvision.models.squeezenet1_0, 64),
    ("mobilenet_v2", lambda: ch.mobilenet_v2(), torchvision.models.mobilenet_v2, 64),
    ("mobilenet_v2 x0.5", lambda: ch.mobilenet_v2(alpha=0.5),
     lambda: torchvision.models.mobilenet_v2(width_mult=0.5), 64),
    ("mobilenet_v2 x1.4", lambda: ch.mobilenet_v2(alpha=1.4),
     lambda: torchvision.models.mobilenet_v2(width_mult=1.4), 48),
    ("mobilenet_v2 x0.35", lambda: ch.mobilenet_v2(alpha=0.35),
     lambda: torchvision.models.mobilenet_v2(width_mult=0.35), 48),
])
def test_full_size_models_compute_torchvisions_function(name, build, reference, size):
    """Catches what equal shapes hide: a pooling without ceil_mode (GoogLeNet, SqueezeNet), a
    padded SqueezeNet stem, a ReLU6 after MobileNetV2's projection, a skip on a strided block,
    the wrong rounding of widths for alpha != 1 (make_divisible), BN's eps."""
    gen = torch.Generator().manual_seed(size)
    ref = randomize_batch_norms(reference(), gen).eval()
    with torch.device("meta"):
        ours = build()
    assert ch.n_params(ours) == ch.n_params(ref)
    same_function(ours, ref, torch.randn(2, 3, size, size, generator=gen))


def test_xception_computes_timms_legacy_xception():
    """The count 22,855,952 and the function: catches a ReLU between depthwise and pointwise, a
    missing ReLU at a block's start, block 12's grow_first=False widths, a padded stem."""
    gen = torch.Generator().manual_seed(6)
    ref = randomize_batch_norms(timm.create_model("legacy_xception", pretrained=False), gen).eval()
    with torch.device("meta"):
        ours = ch.xception()
    assert ch.n_params(ours) == ch.n_params(ref) == 22_855_952
    same_function(ours, ref, torch.randn(1, 3, 96, 96, generator=gen))


@pytest.mark.parametrize("kw", [
    dict(reps=2, stride=2, start_relu=False), dict(reps=3), dict(reps=2, stride=2, grow_first=False),
    dict(reps=1, stride=1),
])
def test_xception_block_equals_timms_block(kw):
    """Block by block against timm's, including the projection shortcut's presence."""
    from timm.models.xception import Block
    c_in, c_out = (8, 8) if kw.get("reps") == 3 else (8, 12)
    ref_kw = dict(reps=kw["reps"], strides=kw.get("stride", 1),
                  start_with_relu=kw.get("start_relu", True), grow_first=kw.get("grow_first", True))
    gen = torch.Generator().manual_seed(kw["reps"])
    ref = Block(c_in, c_out, **ref_kw)
    for p in ref.parameters():
        with torch.no_grad():
            p.normal_(0, 0.3, generator=gen)
    ref = randomize_batch_norms(ref, gen).eval()
    with torch.device("meta"):
        ours = ch.XceptionBlock(c_in, c_out, **kw)
    same_function(ours, ref, torch.randn(2, c_in, 9, 9, generator=gen))


def test_inception_and_fire_equal_torchvisions_blocks():
    """Branch order, the pool branch's stride-1 ceil-mode pool, the concatenation order."""
    gen = torch.Generator().manual_seed(3)
    ref = randomize_batch_norms(TvInception(16, 8, 6, 10, 4, 6, 5), gen).eval()
    with torch.device("meta"):
        ours = ch.Inception(16, 8, 6, 10, 4, 6, 5, k_big=3, eps=1e-3)
    same_function(ours, ref, torch.randn(2, 16, 9, 9, generator=gen))
    ref = TvFire(16, 4, 8, 6).eval()
    with torch.device("meta"):
        ours = ch.Fire(16, 4, 8, 6)
    same_function(ours, ref, torch.randn(2, 16, 7, 7, generator=gen))


def test_papers_googlenet_has_5x5_kernels_and_more_parameters():
    """k_big=5 must change exactly the third branch: 16 r5 c5 more weights per module (6.2)."""
    with torch.device("meta"):
        paper = ch.googlenet(k_big=5)
    extra = sum(16 * m[3] * m[4] for m in ch.GOOGLENET if m not in ("pool", "pool2"))
    assert ch.n_params(paper) == 6_624_904 + extra
    kernels = {m.branch3[1][0].kernel_size for m in paper.modules() if isinstance(m, ch.Inception)}
    assert kernels == {(5, 5)}


@pytest.mark.parametrize("alpha, million_params, million_macs", [
    (1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149), (0.25, 0.5, 41)])
def test_mobilenet_v1_matches_the_papers_width_table(alpha, million_params, million_macs):
    """The paper's Table 6 (width multiplier at 224): catches a wrong layer list, a stride on the
    wrong layer (changes the multiply-adds), widths rounded the v2 way."""
    with torch.device("meta"):
        model = ch.mobilenet_v1(alpha=alpha)
    n = ch.n_params(model)
    assert n == sum(ch.mobilenet_v1_table_count(alpha))
    assert round(n / 1e5) / 10 == million_params
    assert round(ch.conv_macs(model, 224) / 1e6) == million_macs


@pytest.mark.parametrize("c, k", [(1, 3), (3, 3), (32, 5), (100, 7), (512, 3)])
def test_separable_ratio_is_1_over_n_plus_1_over_k2(c, k):
    """Catches a depthwise layer without groups (ratio > 1) or a counter convention change."""
    assert ch.separable_ratio(c, k, size=5) == Fraction(1, c) + Fraction(1, k * k)


def test_conv_macs_counts_multiply_adds_not_flops():
    """(6.1) by hand: 9 * 4 * 6 * 8 * 8 multiply-adds (the counter's FLOPs halved)."""
    with torch.device("meta"):
        layer = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    assert ch.conv_macs(layer, 8) == 9 * 4 * 6 * 8 * 8


def test_inverted_residual_is_linear_at_the_output_and_skips_only_when_shapes_agree():
    """Catches a ReLU6 on the narrow output and a skip on strided or widening blocks."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 6, 6, generator=gen)
    for c_out, stride, skip in ((8, 1, True), (8, 2, False), (12, 1, False)):
        block = randomize_batch_norms(ch.InvertedResidual(8, c_out, stride=stride, t=3), gen).eval()
        assert block.residual == skip
        with torch.no_grad():
            y, branch = block(x), block.conv(x)
        assert float(branch.min()) < 0                       # no activation after P
        torch.testing.assert_close(y, x + branch if skip else branch)
    assert len(ch.InvertedResidual(8, 8, stride=1, t=1).conv) == 2   # t = 1: no expansion


def test_relu_loses_information_in_narrow_layers_only():
    """The linear-bottleneck argument's numbers: catches a decoder or ReLU mix-up."""
    gen = torch.Generator().manual_seed(0)
    narrow, wide = ch.relu_recovery_error(2, generator=gen), ch.relu_recovery_error(30, generator=gen)
    assert narrow > 0.2 and wide < 0.05


def test_scaled_down_networks_reach_7x7_before_the_head():
    """The text's shapes: a stride-2 stem (28 -> 14), bodies ending at 7 x 7, 10 logits."""
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for name, build in ch.MINIS.items():
        model = build().eval()
        with torch.no_grad():
            assert model[0](x).shape[-1] == 14, name
            assert model[:-1](x).shape[-2:] == (7, 7), name
            assert model(x).shape == (2, 10), name


def test_the_baseline_is_chapter_04s_lenet_and_stays_out_of_the_result():
    """Catches a baseline that is not chapter 04's network (another size, its own copy) or one
    counted among the four networks the stated result is about."""
    lenet = ch.BUILDERS[ch.BASELINE]()
    assert type(lenet).__name__ == "LeNet5" and ch.n_params(lenet) == 61_706
    assert isinstance(lenet.c1, nn.Conv2d) and ch.BASELINE not in ch.MINIS
    assert list(ch.BUILDERS) == [*ch.MINIS, ch.BASELINE]
    assert ch.conv_macs(lenet, 28) < ch.conv_macs(ch.MINIS["SqueezeNet"](), 28) / 3


def test_latency_ms_refuses_bad_inputs_and_times():
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\); got \(3, 4\)"):
        ch.latency_ms(nn.Identity(), torch.zeros(3, 4), seconds=0.01)
    assert 0 < ch.latency_ms(nn.Conv2d(2, 2, 3), torch.zeros(1, 2, 5, 5), seconds=0.01) < 100


def test_copy_in_order_refuses_models_that_do_not_match():
    """Catches a silent partial copy (zip stops at the shorter list)."""
    with pytest.raises(ValueError, match="model has 2 tensors, reference 4"):
        ch.copy_in_order(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))


def solved_mobilenet_v1_params(alpha):
    """A reference solution of exercise 2: stem, 13 depthwise + pointwise pairs, each with BN
    (2 parameters per channel), the 1000-way classifier."""
    c = int(32 * alpha)
    n = 27 * c + 2 * c
    for width, _ in ch.MOBILENET_V1:
        w = int(width * alpha)
        n += 9 * c + 2 * c + c * w + 2 * w
        c = w
    return n + c * 1000 + 1000


def test_exercise_2_mobilenet_v1_by_width(capsys):
    name = "Exercise 2"
    assert check(name, ch.mobilenet_v1_params, ch.test_mobilenet_v1_params) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_mobilenet_v1_params, ch.test_mobilenet_v1_params) is True
    with pytest.raises(AssertionError, match="4,231,976"):           # BN forgotten
        check(name, lambda a: sum(ch.mobilenet_v1_table_count(a)[:1]), ch.test_mobilenet_v1_params)
    with pytest.raises(AssertionError, match="alpha = 0.75"):         # stem not thinned
        check(name, lambda a: solved_mobilenet_v1_params(a) + 29 * (32 - int(32 * a)),
              ch.test_mobilenet_v1_params)
    with pytest.raises(AssertionError, match="expected an int"):
        check(name, lambda a: float(solved_mobilenet_v1_params(a)), ch.test_mobilenet_v1_params)
