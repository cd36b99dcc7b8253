"""Chapter 04 checks: conv2d via unfold + matmul and pooling equal PyTorch's, values and gradients."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn


def out_size(n, k, *, stride=1, padding=0, dilation=1):
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    B, C_in, H, W = x.shape
    C_out, C_g, k, _ = w.shape
    if C_in != C_g * groups or C_out % groups:
        raise ValueError(f"kernel {tuple(w.shape)} with groups={groups} does not fit {C_in} input channels")
    H_out = out_size(H, k, stride=stride, padding=padding, dilation=dilation)
    W_out = out_size(W, k, stride=stride, padding=padding, dilation=dilation)
    X_col = F.unfold(x, k, dilation=dilation, padding=padding, stride=stride)
    X_col = X_col.view(B, groups, C_g * k * k, H_out * W_out)
    Y = w.view(groups, C_out // groups, C_g * k * k) @ X_col
    y = Y.view(B, C_out, H_out, W_out)
    return y if b is None else y + b.view(1, C_out, 1, 1)


def _windows(x, k, *, stride, padding, dilation, pad_value):
    B, C, H, W = x.shape
    x = F.pad(x, (padding,) * 4, value=pad_value)
    H_out = out_size(H, k, stride=stride, padding=padding, dilation=dilation)
    W_out = out_size(W, k, stride=stride, padding=padding, dilation=dilation)
    cols = F.unfold(x.reshape(B * C, 1, *x.shape[2:]), k, dilation=dilation, stride=stride)
    return cols.view(B, C, k * k, H_out, W_out)


def max_pool2d(x, k, *, stride=None, padding=0, dilation=1):
    stride = stride or k
    return _windows(x, k, stride=stride, padding=padding, dilation=dilation,
                    pad_value=float("-inf")).amax(dim=2)


def avg_pool2d(x, k, *, stride=None, padding=0):
    stride = stride or k
    return _windows(x, k, stride=stride, padding=padding, dilation=1, pad_value=0.0).mean(dim=2)


CONV_CASES = [  # (B, C_in, H, W, C_out, k, stride, padding, dilation, groups)
    (2, 1, 28, 28, 6, 5, 1, 2, 1, 1),
    (2, 3, 11, 9, 4, 3, 1, 0, 1, 1),
    (2, 3, 12, 12, 6, 3, 2, 1, 1, 1),
    (1, 4, 13, 13, 6, 3, 3, 2, 1, 2),
    (2, 4, 15, 15, 8, 3, 1, 2, 2, 2),
    (2, 6, 10, 10, 6, 5, 2, 2, 1, 6),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    B, C_in, H, W, C_out, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(sum(case))
    x = torch.randn(B, C_in, H, W, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(C_out, C_in // g, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(C_out, dtype=torch.float64, generator=gen, requires_grad=True)
    ours = conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    ref = F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    assert ours.shape[-2:] == (out_size(H, k, stride=s, padding=p, dilation=d),
                               out_size(W, k, stride=s, padding=p, dilation=d))
    torch.testing.assert_close(ours, ref)
    G = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    for a, r in zip(torch.autograd.grad(ours, (x, w, b), G), torch.autograd.grad(ref, (x, w, b), G),
                    strict=True):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("case", [(8, 8, 2, 2, 0, 1), (9, 7, 3, 2, 1, 1), (10, 10, 3, 1, 1, 1),
                                  (11, 11, 2, 2, 1, 2)])
def test_pooling_matches_torch(case):
    H, W, k, s, p, d = case
    gen = torch.Generator().manual_seed(H * W + k)
    x = torch.randn(2, 3, H, W, dtype=torch.float64, generator=gen, requires_grad=True)
    pairs = [(max_pool2d(x, k, stride=s, padding=p, dilation=d),
              F.max_pool2d(x, k, stride=s, padding=p, dilation=d))]
    if d == 1:
        pairs.append((avg_pool2d(x, k, stride=s, padding=p), F.avg_pool2d(x, k, stride=s, padding=p)))
    for ours, ref in pairs:
        torch.testing.assert_close(ours, ref)
        G = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(torch.autograd.grad(ours, x, G)[0], torch.autograd.grad(ref, x, G)[0])


def test_gradcheck_conv_and_pool():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: conv2d(x, w, stride=2, padding=1, groups=2), (x, w))
    assert torch.autograd.gradcheck(lambda x: max_pool2d(x, 3, stride=2, padding=1), (x,))
    assert torch.autograd.gradcheck(lambda x: avg_pool2d(x, 2), (x,))


def test_conv2d_rejects_wrong_groups():
    with pytest.raises(ValueError, match="groups"):
        conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 2, 3, 3), groups=2)


def test_output_size_formula_examples():
    assert out_size(28, 5, padding=2) == 28
    assert out_size(14, 5) == 10
    assert out_size(224, 11, stride=4, padding=2) == 55
    assert out_size(55, 3, stride=2) == 27


def test_lenet5_shapes_params_and_receptive_field():
    torch.manual_seed(0)
    c1, c3 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
    fcs = [nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)]
    n_params = sum(p.numel() for m in (c1, c3, *fcs) for p in m.parameters())
    assert n_params == 61_706
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    z = c3(F.max_pool2d(F.relu(c1(x)), 2))
    assert z.shape == (1, 16, 10, 10)
    (g,) = torch.autograd.grad(z[0, 0, 5, 5], x)
    rows, cols = g[0, 0].abs().sum(1).nonzero(), g[0, 0].abs().sum(0).nonzero()
    assert (int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) == (14, 14)
