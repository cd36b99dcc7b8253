"""Chapter 03 pushed further: the residual layer and DeepMLP against plain-torch references
(with and without batch norm), the Jacobian product (3.2) over a grid, the shrink rate (3.4),
the forward variance (3.5) with its bias floor, the activation and gradient measurements,
`make`'s common initialization, `make_normalized`'s He initialization, bad inputs and the
exercise's check.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter

from nnbook.exercises import check

ch = load_chapter("03")
CPU = torch.device("cpu")


def random_stack(*, n, depth, seed, dtype=torch.float64):
    """Weights (n, n), biases (n,) of `depth` layers and one input h_0 (n,)."""
    gen = torch.Generator().manual_seed(seed)
    Ws = [torch.randn(n, n, dtype=dtype, generator=gen) / math.sqrt(n) for _ in range(depth)]
    bs = [torch.randn(n, dtype=dtype, generator=gen) * 0.1 for _ in range(depth)]
    return Ws, bs, torch.randn(n, dtype=dtype, generator=gen)


def forward_stack(h, Ws, bs, *, residual):
    """h_L from h_0 through the chapter's hidden_layer, and the inputs h_0..h_{L-1}."""
    inputs = []
    for W, b in zip(Ws, bs, strict=True):
        inputs.append(h)
        h = ch.hidden_layer(h, W, b, residual=residual)
    return h, inputs


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(("n", "depth", "seed"), [(1, 1, 0), (3, 2, 1), (6, 5, 2), (10, 12, 3)])
def test_jacobian_is_the_product_of_layer_jacobians(n, depth, seed, residual):
    """(3.2) against autograd's full Jacobian: catches a product in the wrong order, a
    missing identity, or relu' taken at the output instead of the input."""
    Ws, bs, h0 = random_stack(n=n, depth=depth, seed=seed)
    _, inputs = forward_stack(h0, Ws, bs, residual=residual)
    expected = torch.autograd.functional.jacobian(
        lambda h: forward_stack(h, Ws, bs, residual=residual)[0], h0)
    torch.testing.assert_close(ch.jacobian_product(Ws, inputs, residual=residual), expected)


def test_jacobian_product_refuses_mismatched_lists():
    Ws, bs, h0 = random_stack(n=4, depth=3, seed=0)
    _, inputs = forward_stack(h0, Ws, bs, residual=True)
    with pytest.raises(ValueError, match="zip"):  # a silently shorter product is wrong
        ch.jacobian_product(Ws, inputs[:-1], residual=True)


@pytest.mark.parametrize("residual", [False, True])
def test_hidden_layer_passes_gradcheck(residual):
    Ws, bs, _ = random_stack(n=4, depth=1, seed=5)
    h = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    args = (h.requires_grad_(), Ws[0].requires_grad_(), bs[0].requires_grad_())
    assert torch.autograd.gradcheck(
        lambda h, W, b: ch.hidden_layer(h, W, b, residual=residual), args)


def reference_states(net, x):
    """[h_0, ..., h_L] of (3.1) with F.linear and F.batch_norm (batch statistics, as in
    training): the skip adds the un-normalized h_l."""
    hs = [F.linear(x.flatten(1), net.embed.weight, net.embed.bias)]
    for layer, norm in zip(net.layers, net.norms, strict=True):
        h = hs[-1]
        if isinstance(norm, torch.nn.BatchNorm1d):
            h = F.batch_norm(h, None, None, norm.weight, norm.bias, training=True)
        f = F.linear(F.relu(h), layer.weight, layer.bias)
        hs.append(hs[-1] + f if net.residual else f)
    return hs


@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_deep_mlp_computes_3_1(residual, norm):
    """Every hidden state and the logits against the reference, for all four variants; the
    batch-normalized residual net must carry h_l, not BN(h_l), on its skip."""
    torch.manual_seed(0)
    net = ch.DeepMLP(depth=4, width=8, residual=residual, norm=norm, d_in=12, n_classes=3)
    with torch.no_grad():  # make batch norm's affine part matter
        for bn in net.norms:
            if isinstance(bn, torch.nn.BatchNorm1d):
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
    net.train()
    x = torch.randn(16, 3, 2, 2)  # flattened to (16, 12)
    expected = reference_states(net, x)
    got = net.states(x)
    assert len(got) == 5
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(g, e, msg=lambda m, i=i: f"h_{i}: {m}")
    logits = F.linear(F.relu(expected[-1]), net.head.weight, net.head.bias)
    torch.testing.assert_close(net(x), logits)


def test_zero_branches_make_the_residual_net_the_identity():
    """With every hidden layer zeroed the residual net passes h_0 through untouched and the
    plain net outputs zeros: the skip is the only difference."""
    torch.manual_seed(1)
    for residual in (False, True):
        net = ch.DeepMLP(depth=6, width=5, residual=residual, d_in=7)
        with torch.no_grad():
            for layer in net.layers:
                layer.weight.zero_()
                layer.bias.zero_()
        hs = net.states(torch.randn(4, 7))
        for h in hs[1:]:
            torch.testing.assert_close(h, hs[0] if residual else torch.zeros_like(h))


def test_depth_zero_is_embed_then_head():
    torch.manual_seed(2)
    net = ch.DeepMLP(depth=0, width=5, residual=True, d_in=7, n_classes=3)
    x = torch.randn(4, 7)
    assert len(net.states(x)) == 1
    torch.testing.assert_close(net(x), net.head(F.relu(net.embed(x))))


SMALL = dataclasses.replace(ch.Config(), depth=5, width=16)


def test_make_starts_every_kind_from_the_same_weights():
    nets = {kind: ch.make(kind, cfg=SMALL, dev=CPU) for kind in ch.KINDS}
    for kind, net in nets.items():
        assert len(net.layers) == 5 and net.embed.out_features == 16
        assert net.residual == (kind == "residual")
        has_bn = any(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules())
        assert has_bn == (kind == "plain + BN"), kind
    plain = dict(nets["plain"].named_parameters())
    for kind in ("residual", "plain + BN"):
        for name, p in nets[kind].named_parameters():
            if not name.startswith("norms"):
                torch.testing.assert_close(p, plain[name], msg=f"{kind}: {name} differs")
    other = ch.make("plain", cfg=SMALL, dev=CPU, seed=1)
    assert not torch.equal(other.layers[0].weight, nets["plain"].layers[0].weight)


def test_make_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match=r"kind must be one of .*; got 'resnet'"):
        ch.make("resnet", cfg=SMALL, dev=CPU)


@pytest.mark.parametrize("kind", ["plain", "residual", "plain + BN"])
def test_gradient_norms_are_the_norms_autograd_computes(kind):
    """||dL/dW_l|| against loss.backward(), and dL/dW_l = g_{l+1}^T relu(h_l) for the nets
    without batch norm (the chapter's formula for the weight gradient)."""
    net = ch.make(kind, cfg=SMALL, dev=CPU)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(32, 784, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    g_h, g_W = ch.gradient_norms(net, x, y)
    assert g_h.shape == (6,) and g_W.shape == (5,)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    np.testing.assert_allclose(g_W, [float(layer.weight.grad.norm()) for layer in net.layers],
                               rtol=1e-5)
    if kind != "plain + BN":
        hs = net.states(x)
        g = torch.autograd.grad(F.cross_entropy(net.head(F.relu(hs[-1])), y), hs)
        for i, layer in enumerate(net.layers):  # layer l = i
            torch.testing.assert_close(g[i + 1].T @ F.relu(hs[i]), layer.weight.grad)
            assert float(g[i].norm()) == pytest.approx(g_h[i], rel=1e-5)


def squared_gradient_norms(*, residual, n=256, depth=12, seed=3):
    """||dL/dh_l||^2 for l = 0..depth at PyTorch's default init with zero biases, float64."""
    torch.manual_seed(seed)
    stack = ch.DeepMLP(depth=depth, width=n, residual=residual, d_in=n).double()
    with torch.no_grad():
        for layer in stack.layers:
            layer.bias.zero_()
    hs = stack.states(torch.randn(64, n, dtype=torch.float64))
    g = torch.autograd.grad(hs[-1], hs, grad_outputs=torch.randn_like(hs[-1]))
    return np.array([float((gl ** 2).sum()) for gl in g])


@pytest.mark.parametrize("seed", [3, 4])
def test_plain_gradient_shrinks_by_six_per_layer(seed):
    sq = squared_gradient_norms(residual=False, seed=seed)
    factor = float(np.exp(np.polyfit(np.arange(len(sq)), np.log(sq), 1)[0]))
    assert 5.0 < factor < 7.2, f"(3.4) predicts a factor near 6 per layer; measured {factor:.2f}"


@pytest.mark.parametrize("seed", [3, 4])
def test_residual_gradient_grows_mildly_toward_the_input(seed):
    sq = squared_gradient_norms(residual=True, seed=seed)
    ratio = sq[0] / sq[-1]  # (7/6) per layer in the squared norm
    assert 0.5 * (7 / 6) ** 12 < ratio < 2 * (7 / 6) ** 12, f"got {ratio:.2f} over 12 layers"


def forward_spreads(*, residual, n=256, depth=12, seed=3):
    """Squared spread across inputs s_l^2 (l = 0..depth) from the chapter's activation_stats,
    default init, zero biases, float64."""
    torch.manual_seed(seed)
    stack = ch.DeepMLP(depth=depth, width=n, residual=residual, d_in=n).double()
    with torch.no_grad():
        for layer in stack.layers:
            layer.bias.zero_()
    _, spread = ch.activation_stats(stack, torch.randn(64, n, dtype=torch.float64))
    return spread ** 2


@pytest.mark.parametrize("seed", [3, 4])
def test_forward_spread_shrinks_by_six_per_layer_like_the_gradient(seed):
    """(3.5): the plain net's forward variance falls by 6 per layer, the residual net's grows by
    7/6. Catches a wrong factor in the derivation (e.g. forgetting the ReLU's 1/2: factor 3)."""
    sq = forward_spreads(residual=False, seed=seed)
    factor = float(np.exp(-np.polyfit(np.arange(len(sq)), np.log(sq), 1)[0]))
    assert 5.0 < factor < 7.2, f"(3.5) predicts a factor near 6 per layer; measured {factor:.2f}"
    sq = forward_spreads(residual=True, seed=seed)
    ratio = sq[-1] / sq[0]
    assert 0.5 * (7 / 6) ** 12 < ratio < 2 * (7 / 6) ** 12, f"got {ratio:.2f} over 12 layers"


def test_plain_forward_variance_settles_at_the_bias_floor():
    """(3.5)'s fixed point Var(h) = 2 / (5n) with PyTorch's default biases, the same vector for
    every input. Catches a bias variance other than 1/(3n) in the derivation."""
    n = 512
    floors = []
    for seed in range(4):
        torch.manual_seed(seed)
        stack = ch.DeepMLP(depth=30, width=n, residual=False, d_in=n).double()
        rms, spread = ch.activation_stats(stack, torch.randn(32, n, dtype=torch.float64))
        floors.append(rms[-1] ** 2)
        assert spread[-1] < 1e-9 * rms[-1]       # the input is forgotten
    assert np.mean(floors) == pytest.approx(2 / (5 * n), rel=0.15)


def test_activation_stats_measures_spread_over_the_batch_not_the_units():
    """A net whose hidden layers output only their biases: h_l (l >= 1) is the same for every
    input, so the spread must be 0 while the size is the bias's RMS. Catches a std taken over
    units (dim 1) instead of over the batch."""
    torch.manual_seed(5)
    net = ch.DeepMLP(depth=3, width=6, residual=False, d_in=4)
    with torch.no_grad():
        for layer in net.layers:
            layer.weight.zero_()
    x = torch.randn(10, 4)
    rms, spread = ch.activation_stats(net, x)
    assert rms.shape == spread.shape == (4,)
    h0 = net.embed(x).detach()
    assert spread[0] == pytest.approx(float(h0.std(0, correction=0).pow(2).mean().sqrt()), rel=1e-5)
    for layer, r, s in zip(net.layers, rms[1:], spread[1:], strict=True):
        assert s == pytest.approx(0, abs=1e-7)
        assert r == pytest.approx(float(layer.bias.detach().pow(2).mean().sqrt()), rel=1e-5)


@pytest.mark.parametrize("residual", [False, True])
def test_make_normalized_is_he_initialized_and_batch_normalized(residual):
    """Catches a default (Var = 1/(3n)) init where He's 2/n is stated, leftover biases, missing
    BN, or different weights for the two kinds (then the skip would not be the only difference)."""
    net = ch.make_normalized(depth=8, width=256, residual=residual, dev=CPU, seed=0)
    assert net.residual == residual
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 8
    w = torch.cat([layer.weight.detach().flatten() for layer in net.layers])
    assert float(w.var()) == pytest.approx(2 / 256, rel=0.05)
    assert all(float(layer.bias.abs().max()) == 0 for layer in net.layers)
    other = ch.make_normalized(depth=8, width=256, residual=not residual, dev=CPU, seed=0)
    for a, b in zip(net.layers, other.layers, strict=True):
        torch.testing.assert_close(a.weight, b.weight)


def solved_he_bound(n):
    """A reference solution of exercise 2: U(-a, a) has variance a^2 / 3; setting it to
    He's 2 / n gives a = sqrt(6 / n)."""
    return math.sqrt(6 / n)


def test_exercise_2_he_bound(capsys):
    assert check("Exercise 2", ch.he_bound, ch.test_he_bound) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_he_bound, ch.test_he_bound)
    with pytest.raises(AssertionError, match="should be 1; got 0.5000"):  # Var = 2/n forgotten
        check("Exercise 2", lambda n: math.sqrt(3 / n), ch.test_he_bound)
    with pytest.raises(AssertionError, match="not None"):
        check("Exercise 2", lambda n: None, ch.test_he_bound)
