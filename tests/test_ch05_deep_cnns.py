"""Chapter 05 pushed further: the chapter's own AlexNet, VGG, NiN and ResNet builders against
torchvision's models (parameter counts over more variants, and the same outputs when given the
same weights), the plain (skip=False) and pre-activation blocks against functional references,
the step timer, the scaled-down networks' shapes, and the exercise."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from chapters import load_chapter
from conftest import randomize_batch_norms
from torch import nn

from nnbook.exercises import check

ch = load_chapter("05")

VGG13 = ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))
VGG16 = ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3)
VGG19 = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)
VARIANTS = {  # name: (our builder, torchvision constructor, parameters in torchvision's docs)
    "alexnet": (ch.alexnet, torchvision.models.alexnet, 61_100_840),
    "vgg11": (ch.vgg, torchvision.models.vgg11, 132_863_336),
    "vgg11_bn": (lambda: ch.vgg(norm=True), torchvision.models.vgg11_bn, 132_868_840),
    "vgg13": (lambda: ch.vgg(stages=VGG13), torchvision.models.vgg13, 133_047_848),
    "vgg16": (lambda: ch.vgg(stages=VGG16), torchvision.models.vgg16, 138_357_544),
    "vgg19": (lambda: ch.vgg(stages=VGG19), torchvision.models.vgg19, 143_667_240),
    "resnet18": (ch.resnet, torchvision.models.resnet18, 11_689_512),
    "resnet34": (lambda: ch.resnet(blocks=(3, 4, 6, 3)), torchvision.models.resnet34, 21_797_672),
}


def test_the_chapters_table_holds_torchvisions_published_counts():
    for name, key in (("AlexNet", "alexnet"), ("VGG-11", "vgg11"), ("ResNet-18", "resnet18")):
        build, reference, published = ch.FULL_SIZE[name]
        assert (build, reference, published) == VARIANTS[key]


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_shapes_and_counts_equal_torchvisions(name):
    """Catches a missing or extra layer, a wrong width, a bias before BN (shapes, not wiring)."""
    build, reference, published = VARIANTS[name]
    with torch.device("meta"):                       # shapes only: nothing allocated
        ours, ref = build(), reference(weights=None)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    assert ch.n_params(ours) == ch.n_params(ref) == published, (
        f"{name}: expected {published:,} parameters; ours {ch.n_params(ours):,}, "
        f"torchvision {ch.n_params(ref):,}")


def given_the_same_tensors(build, ref):
    """Our model built on the meta device, then given ref's tensors in order (shared, not copied:
    the full-size VGG holds half a gigabyte)."""
    with torch.device("meta"):
        ours = build()
    return ch.copy_in_order(ours, ref).eval()


def noise_(tensor, block, std):
    """Fill tensor with std * block, tiled (drawing 100 M numbers would take seconds)."""
    flat = tensor.view(-1)
    for start in range(0, flat.numel(), block.numel()):
        piece = flat[start:start + block.numel()]
        piece.copy_(block[:piece.numel()] * std)


def torchvision_with_random_weights(reference, gen):
    """torchvision's model built on the meta device, then given random weights quickly: He-scaled
    noise for convolutions and linear layers (a block of 2**20 + 7 draws, tiled), random BN."""
    with torch.device("meta"):
        ref = reference(weights=None)
    ref.to_empty(device="cpu")
    block = torch.randn(2**20 + 7, generator=gen)   # its period divides no row length
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                noise_(m.weight, block, std=(2 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    noise_(m.bias, block, std=0.01)
    randomize_batch_norms(ref, gen)
    return ref.eval()


@pytest.mark.parametrize("name, size", [("alexnet", 224), ("vgg11", 64), ("vgg11_bn", 64),
                                        ("resnet18", 64), ("resnet34", 48)])
def test_full_size_models_compute_torchvisions_function_with_its_weights(name, size):
    """Copies the weights across: catches what equal shapes hide, e.g. a misplaced pooling or
    ReLU, BN after the ReLU (conv_relu(norm=True), which the scaled-down networks use), a
    stride on the wrong block, a missing shortcut, a wrong flattening order."""
    build, reference, _ = VARIANTS[name]
    gen = torch.Generator().manual_seed(0)
    ref = torchvision_with_random_weights(reference, gen)
    ours = given_the_same_tensors(build, ref)
    x = torch.randn(1, 3, size, size, generator=gen)  # 64: VGG's last map is 2 x 2, not 1 x 1
    with torch.no_grad():
        y_ours, y_ref = ours(x), ref(x)
    assert y_ref.shape == (1, 1000) and float(y_ref.std()) > 0
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5 * float(y_ref.abs().max()))


def test_scaled_down_networks_shrink_their_maps_as_the_text_says():
    """Catches a stem or pooling that breaks the sizes the text states (AlexNet 28 -> 15 -> 7 ->
    3 -> 1, VGG 28 -> 14 -> 7 -> 3, stride-2 stems) and a NiN whose logits are not GAP (5.3)."""
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    minis = {name: build(0.2).eval() for name, build in ch.MINIS.items()}
    with torch.no_grad():
        for name, model in minis.items():
            assert model(x).shape == (2, 10), name
        alexnet, vgg, nin, resnet = minis.values()
        pooled = [alexnet[:i + 1](x).shape[-1] for i, m in enumerate(alexnet) if isinstance(m, nn.MaxPool2d)]
        assert [alexnet[0](x).shape[-1], *pooled] == [15, 7, 3, 1]
        pooled = [vgg[:i + 1](x).shape[-1] for i, m in enumerate(vgg) if isinstance(m, nn.MaxPool2d)]
        assert pooled == [14, 7, 3]
        assert nin[0][0](x).shape[-1] == 14 and resnet[0](x).shape[-1] == 14
        maps = nin[:-2](x)                                # one map per class
        assert maps.shape == (2, 10, 4, 4)
        torch.testing.assert_close(nin(x), maps.mean((2, 3)))


def test_scaled_down_builders_use_the_configs_dropout():
    """Catches a builder that ignores cfg.dropout (ResNet has none)."""
    for name, build in ch.MINIS.items():
        rates = {m.p for m in build(0.3).modules() if isinstance(m, nn.Dropout)}
        assert rates == (set() if name == "ResNet" else {0.3}), name


@pytest.mark.parametrize("build, message", [
    (lambda: ch.resnet(widths=(16, 32), blocks=(1, 1, 1)), "zip"),
    (lambda: ch.alexnet(widths=(16, 32, 48, 48)), "not enough values to unpack"),
    (lambda: ch.nin(widths=(16, 32, 64, 128)), "too many values to unpack"),
], ids=["resnet stages", "alexnet widths", "nin widths"])
def test_inconsistent_sizes_are_refused(build, message):
    """A width list that does not match the architecture must not build a shorter network."""
    with pytest.raises(ValueError, match=message):
        build()


def test_copy_in_order_refuses_models_that_do_not_match():
    """Catches a silent partial copy (zip stops at the shorter list) and a copy across shapes."""
    with pytest.raises(ValueError, match="model has 2 tensors, reference 4"):
        ch.copy_in_order(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    with pytest.raises(RuntimeError, match="size mismatch"):
        ch.copy_in_order(nn.Linear(3, 2), nn.Linear(2, 3))


def functional_basic_block(block, x, *, skip):
    """(5.4) with functional ops and the block's own weights (BN in evaluation mode)."""
    def bn(m, h):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, training=False)
    f = F.conv2d(x, block.conv1.weight, stride=block.conv1.stride, padding=1)
    f = bn(block.bn2, F.conv2d(F.relu(bn(block.bn1, f)), block.conv2.weight, padding=1))
    if not skip:
        return F.relu(f)
    if isinstance(block.shortcut, nn.Identity):
        return F.relu(f + x)
    conv, norm = block.shortcut
    return F.relu(f + bn(norm, F.conv2d(x, conv.weight, stride=conv.stride)))


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(4, 4, 1), (4, 6, 2), (3, 5, 1)])
def test_basic_block_with_and_without_skip(c_in, c_out, stride, skip):
    """Catches a plain block that still adds x (or keeps a projection), and a residual block
    whose projection or ReLU-after-sum is misplaced."""
    gen = torch.Generator().manual_seed(c_in * 10 + c_out + stride)
    block = ch.BasicBlock(c_in, c_out, stride=stride, skip=skip)
    randomize_batch_norms(block, gen)
    block.eval()
    has_projection = any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                         for m in block.modules())
    assert has_projection == (skip and (stride != 1 or c_in != c_out))
    x = torch.randn(2, c_in, 8, 8, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(block(x), functional_basic_block(block, x, skip=skip))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_plain_resnet_has_6k_plus_2_weight_layers_and_no_shortcuts(k):
    """The depth comparison's claim: skip=False gives 6k + 2 weight layers on one path, the
    residual net the same plus 2 projections (the 1x1 convolutions of stages 2 and 3)."""
    kw = dict(in_ch=1, n_classes=10, widths=(8, 16, 32), blocks=(k, k, k), stem=(3, 2, 1))
    def weight_layers(m):
        return sum(isinstance(layer, nn.Conv2d | nn.Linear) for layer in m.modules())
    plain, res = ch.resnet(**kw, skip=False), ch.resnet(**kw)
    assert weight_layers(plain) == 6 * k + 2
    assert weight_layers(res) == 6 * k + 2 + 2
    assert plain(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def functional_preact_block(block, x):
    """(5.5) with functional ops: BN-ReLU-conv-BN-ReLU-conv, plus the shortcut, nothing after."""
    def bn(m, h):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, training=False)
    f = F.conv2d(F.relu(bn(block.bn1, x)), block.conv1.weight, stride=block.conv1.stride,
                 padding=1)
    f = F.conv2d(F.relu(bn(block.bn2, f)), block.conv2.weight, padding=1)
    if isinstance(block.shortcut, nn.Identity):
        return x + f
    return F.conv2d(x, block.shortcut.weight, stride=block.shortcut.stride) + f


@pytest.mark.parametrize(("c_in", "c_out", "stride"), [(4, 4, 1), (4, 6, 2)])
def test_preact_block_computes_5_5(c_in, c_out, stride):
    """Catches a ReLU after the sum (the original block), BN after the convolution instead of
    before, or a missing projection when the shape changes."""
    gen = torch.Generator().manual_seed(7 + stride)
    block = ch.PreActBlock(c_in, c_out, stride=stride)
    randomize_batch_norms(block, gen)
    block.eval()
    x = torch.randn(2, c_in, 8, 8, generator=gen)
    with torch.no_grad():
        y = block(x)
        torch.testing.assert_close(y, functional_preact_block(block, x))
    assert float(y.min()) < 0                    # no ReLU after the sum


def test_seconds_per_step_trains_and_times():
    """Catches a timer that forgets the optimizer step (weights unchanged) or returns the total
    instead of the mean (then more steps would take proportionally more 'per step')."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    before = model[1].weight.detach().clone()
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    t = ch.seconds_per_step(model, x, y, steps=3)
    assert 0 < t < 1
    assert not torch.equal(before, model[1].weight)


def solved_resnet18_params():
    """A reference solution of exercise 2: the stem, eight basic blocks (three with a projection
    shortcut), the classifier; 2 parameters (gamma, beta) per BN channel."""
    total, c = 3 * 64 * 7 * 7 + 2 * 64, 64
    for width in (64, 64, 128, 128, 256, 256, 512, 512):           # two blocks per stage
        total += 9 * c * width + 9 * width * width + 4 * width     # two 3x3 convs, two BNs
        if c != width:
            total += c * width + 2 * width                          # 1x1 projection and its BN
        c = width
    return total + 512 * 1000 + 1000


def test_exercise_2_resnet18_by_hand(capsys):
    assert check("Exercise 2", ch.resnet18_params, ch.test_resnet18_params) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_resnet18_params, ch.test_resnet18_params) is True
    without_projections = lambda: solved_resnet18_params() - (  # noqa: E731
        sum(c * 2 * c + 4 * c for c in (64, 128, 256)))
    with pytest.raises(AssertionError, match="11,689,512"):
        check("Exercise 2", without_projections, ch.test_resnet18_params)
    with pytest.raises(AssertionError, match="expected an int"):
        check("Exercise 2", lambda: float(solved_resnet18_params()), ch.test_resnet18_params)
