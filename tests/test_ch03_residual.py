"""Chapter 03 checks: the residual layer, the Jacobian product (3.2) and the shrink rate (3.4)."""

import math

import numpy as np
import torch
import torch.nn.functional as F


def hidden_layer(h, W, b, *, residual):
    f = F.relu(h) @ W.T + b
    return h + f if residual else f


def jacobian_product(Ws, hs, *, residual):
    n = Ws[0].shape[0]
    P = torch.eye(n, dtype=Ws[0].dtype)
    for W, h in zip(Ws, hs, strict=True):
        J = W * (h > 0).to(W.dtype)
        P = ((torch.eye(n, dtype=W.dtype) + J) if residual else J) @ P
    return P


def _random_stack(n=6, depth=5, seed=2):
    gen = torch.Generator().manual_seed(seed)
    Ws = [torch.randn(n, n, dtype=torch.float64, generator=gen) / math.sqrt(n) for _ in range(depth)]
    bs = [torch.randn(n, dtype=torch.float64, generator=gen) * 0.1 for _ in range(depth)]
    return Ws, bs, torch.randn(n, dtype=torch.float64, generator=gen)


def test_jacobian_is_product_of_layer_jacobians():
    Ws, bs, h0 = _random_stack()
    for residual in (False, True):
        def run(h, residual=residual):
            for W, b in zip(Ws, bs, strict=True):
                h = hidden_layer(h, W, b, residual=residual)
            return h
        hs = [h0]
        for W, b in zip(Ws[:-1], bs[:-1], strict=True):
            hs.append(hidden_layer(hs[-1], W, b, residual=residual))
        torch.testing.assert_close(torch.autograd.functional.jacobian(run, h0),
                                   jacobian_product(Ws, hs, residual=residual))


def test_residual_layer_gradcheck():
    Ws, bs, _ = _random_stack(n=4, depth=1)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    W = Ws[0].clone().requires_grad_()
    b = bs[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda h, W, b: hidden_layer(h, W, b, residual=True), (h, W, b))


def _grad_norms_sq(*, residual, n=256, depth=12, seed=3):
    """Squared gradient norms ||dL/dh_l||^2, default nn.Linear init, zero biases."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(n, n).double() for _ in range(depth)]
    hs = [torch.randn(64, n, dtype=torch.float64, requires_grad=True)]
    for layer in layers:
        hs.append(hidden_layer(hs[-1], layer.weight, torch.zeros(n, dtype=torch.float64),
                               residual=residual))
    g = torch.autograd.grad(hs[-1], hs, grad_outputs=torch.randn_like(hs[-1]))
    return np.array([float((gl ** 2).sum()) for gl in g])


def test_plain_gradient_shrinks_by_six_per_layer():
    sq = _grad_norms_sq(residual=False)
    factor = float(np.exp(np.polyfit(np.arange(len(sq)), np.log(sq), 1)[0]))
    assert 5.0 < factor < 7.2, f"(3.4) predicts a factor near 6 per layer; measured {factor:.2f}"


def test_residual_gradient_does_not_vanish():
    sq = _grad_norms_sq(residual=True)
    ratio = sq[0] / sq[-1]  # grows toward the input by about (7/6) per layer
    assert 1.0 < ratio < 2 * (7 / 6) ** 12, f"expected mild growth up to (7/6)^12; got {ratio:.2f}"
