"""Chapter 05 checks: full-size AlexNet, VGG-11, ResNet-18 equal torchvision's; 3x3 and 1x1 arithmetic."""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def conv_relu(c_in, c_out, k, *, stride=1, padding=0, norm=False):
    bn = [nn.BatchNorm2d(c_out)] if norm else []
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding), *bn, nn.ReLU()]


def alexnet(*, in_ch=3, n_classes=1000, widths=(64, 192, 384, 256, 256), stem=(11, 4, 2),
            fc=4096, pooled=6, dropout=0.5, norm=False):
    c1, c2, c3, c4, c5 = widths
    k, s, p = stem
    return nn.Sequential(
        *conv_relu(in_ch, c1, k, stride=s, padding=p, norm=norm), nn.MaxPool2d(3, stride=2),
        *conv_relu(c1, c2, 5, padding=2, norm=norm), nn.MaxPool2d(3, stride=2),
        *conv_relu(c2, c3, 3, padding=1, norm=norm),
        *conv_relu(c3, c4, 3, padding=1, norm=norm),
        *conv_relu(c4, c5, 3, padding=1, norm=norm), nn.MaxPool2d(3, stride=2),
        nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(c5 * pooled * pooled, fc), nn.ReLU(),
        nn.Dropout(dropout), nn.Linear(fc, fc), nn.ReLU(),
        nn.Linear(fc, n_classes),
    )


def vgg(*, in_ch=3, n_classes=1000, stages=((64,), (128,), (256, 256), (512, 512), (512, 512)),
        fc=4096, pooled=7, dropout=0.5, norm=False):
    layers, c = [], in_ch
    for stage in stages:
        for width in stage:
            layers += conv_relu(c, width, 3, padding=1, norm=norm)
            c = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
        nn.Linear(c * pooled * pooled, fc), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(fc, fc), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(fc, n_classes),
    )


def nin_block(c_in, c_out, k, *, c_hidden=None, stride=1, padding=0, last_relu=True, norm=False):
    c_hidden = c_hidden or c_out
    layers = [*conv_relu(c_in, c_hidden, k, stride=stride, padding=padding, norm=norm),
              *conv_relu(c_hidden, c_hidden, 1, norm=norm), nn.Conv2d(c_hidden, c_out, 1)]
    return nn.Sequential(*layers, *([nn.ReLU()] if last_relu else []))


def nin(*, in_ch=1, n_classes=10, widths=(16, 32, 64), stem=(5, 2, 2), dropout=0.5, norm=False):
    c1, c2, c3 = widths
    k, s, p = stem
    return nn.Sequential(
        nin_block(in_ch, c1, k, stride=s, padding=p, norm=norm), nn.MaxPool2d(3, stride=2, padding=1),
        nin_block(c1, c2, 3, padding=1, norm=norm), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Dropout(dropout),
        nin_block(c2, n_classes, 3, c_hidden=c3, padding=1, last_relu=False, norm=norm),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, *, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        f = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(f + self.shortcut(x))


def resnet(*, in_ch=3, n_classes=1000, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2),
           stem=(7, 2, 3)):
    k, s, p = stem
    layers = [nn.Conv2d(in_ch, widths[0], k, stride=s, padding=p, bias=False), nn.BatchNorm2d(widths[0]),
              nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    c = widths[0]
    for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
        for j in range(n):
            layers.append(BasicBlock(c, width, stride=2 if i > 0 and j == 0 else 1))
            c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes))


def _n(model):
    return sum(p.numel() for p in model.parameters())


def _same_as_torchvision(build, reference, published):
    with torch.device("meta"):
        ours, ref = build(), reference(weights=None)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    assert _n(ours) == _n(ref) == published, (
        f"expected {published:,} parameters; ours {_n(ours):,}, torchvision {_n(ref):,}")


def test_alexnet_equals_torchvision():
    _same_as_torchvision(alexnet, torchvision.models.alexnet, 61_100_840)


def test_vgg11_equals_torchvision():
    _same_as_torchvision(vgg, torchvision.models.vgg11, 132_863_336)


def test_resnet18_equals_torchvision():
    _same_as_torchvision(resnet, torchvision.models.resnet18, 11_689_512)


def test_resnet18_computes_torchvisions_function():
    torch.manual_seed(0)
    ref, ours = torchvision.models.resnet18(weights=None).eval(), resnet().eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for p, q in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
            p.copy_(q)
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(ours(x), ref(x))


def _minis():
    return {
        "AlexNet": alexnet(in_ch=1, n_classes=10, widths=(16, 32, 48, 48, 32), stem=(5, 2, 3), fc=128,
                           pooled=1, norm=True),
        "VGG": vgg(in_ch=1, n_classes=10, stages=((8,), (16,), (32, 32)), fc=64, pooled=3, norm=True),
        "NiN": nin(in_ch=1, n_classes=10, widths=(16, 32, 64), stem=(5, 2, 2), norm=True),
        "ResNet": resnet(in_ch=1, n_classes=10, widths=(16, 32, 64), blocks=(1, 1, 1), stem=(3, 2, 1)),
    }


def test_scaled_down_models_fit_mnist():
    x = torch.zeros(2, 1, 28, 28)
    for name, model in _minis().items():
        assert model(x).shape == (2, 10), f"{name}: expected logits (2, 10), got {tuple(model(x).shape)}"


def test_scaled_down_map_sizes():
    x = torch.randn(2, 1, 28, 28)
    minis = {name: model.eval() for name, model in _minis().items()}
    alex = minis["AlexNet"]
    sizes = [alex[:i + 1](x).shape[-1] for i, m in enumerate(alex) if isinstance(m, nn.MaxPool2d)]
    assert alex[0](x).shape[-1] == 15 and sizes == [7, 3, 1], f"AlexNet maps 28->15->7->3->1; got {sizes}"
    nin_maps = minis["NiN"][:-2](x)
    assert nin_maps.shape == (2, 10, 4, 4), f"NiN class maps: expected (2, 10, 4, 4), got {nin_maps.shape}"
    torch.testing.assert_close(minis["NiN"](x), nin_maps.mean((2, 3)))   # GAP (5.3): logits = map averages


def test_3x3_stack_receptive_field_and_weights():
    for n in (2, 3):
        stack = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1, bias=False) for _ in range(n)])
        x = torch.randn(1, 4, 15, 15, requires_grad=True)
        (g,) = torch.autograd.grad(stack(x)[0, 0, 7, 7], x)
        seen = g.abs().sum((0, 1)).nonzero()
        assert int(seen[:, 0].max() - seen[:, 0].min()) + 1 == 2 * n + 1
        assert _n(stack) * (2 * n + 1) ** 2 == 9 * n * nn.Conv2d(4, 4, 2 * n + 1, bias=False).weight.numel()


def test_1x1_conv_is_per_pixel_linear():
    conv1x1, linear = nn.Conv2d(16, 8, 1), nn.Linear(16, 8)
    linear.weight.data = conv1x1.weight.data.view(8, 16)
    linear.bias.data = conv1x1.bias.data
    x = torch.randn(4, 16, 5, 5)
    torch.testing.assert_close(conv1x1(x), linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
