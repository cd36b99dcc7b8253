"""Chapter 18 checks: the GAN losses and their gradients, D* and the JSD identity, the ring metric."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from scipy.spatial.distance import jensenshannon
from torch import nn


def d_loss(a_real, a_fake):
    return F.softplus(-a_real).mean() + F.softplus(a_fake).mean()


def g_loss_minimax(a_fake):
    return -F.softplus(a_fake).mean()


def g_loss_ns(a_fake):
    return F.softplus(-a_fake).mean()


def test_losses_equal_binary_cross_entropy_and_have_the_derived_gradients():
    gen = torch.Generator().manual_seed(0)
    a_r = torch.randn(64, dtype=torch.float64, generator=gen) * 3
    a_f = (torch.randn(64, dtype=torch.float64, generator=gen) * 3).requires_grad_()
    ones, zeros = torch.ones(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)
    torch.testing.assert_close(d_loss(a_r, a_f), F.binary_cross_entropy_with_logits(a_r, ones)
                               + F.binary_cross_entropy_with_logits(a_f, zeros))
    torch.testing.assert_close(g_loss_ns(a_f), F.binary_cross_entropy_with_logits(a_f, ones))
    torch.testing.assert_close(g_loss_minimax(a_f), -F.binary_cross_entropy_with_logits(a_f, zeros))
    D_fake = torch.sigmoid(a_f.detach())
    (g_mm,) = torch.autograd.grad(g_loss_minimax(a_f) * 64, a_f)
    (g_ns,) = torch.autograd.grad(g_loss_ns(a_f) * 64, a_f)
    torch.testing.assert_close(g_mm, -D_fake)          # (18.6): saturates where D(G(z)) -> 0
    torch.testing.assert_close(g_ns, -(1 - D_fake))    # non-saturating: largest there
    assert torch.autograd.gradcheck(lambda a: d_loss(a_r, a) + g_loss_ns(a), (a_f,))


def test_value_at_the_optimal_discriminator_is_minus_log4_plus_twice_jsd():
    p_d, p_q = stats.norm(0, 1), stats.norm(1.5, 0.7)

    def integrand(x):
        log_a, log_b = p_d.logpdf(x), p_q.logpdf(x)
        log_sum = np.logaddexp(log_a, log_b)
        return np.exp(log_a) * (log_a - log_sum) + np.exp(log_b) * (log_b - log_sum)

    v_star = integrate.quad(integrand, -12, 12, limit=200, points=[0, 1.5])[0]
    grid = np.linspace(-12, 12, 200_001)
    jsd = jensenshannon(p_d.pdf(grid), p_q.pdf(grid)) ** 2
    assert abs(v_star - (-math.log(4) + 2 * jsd)) < 1e-6
    assert 0 < jsd < math.log(2)


def test_identical_distributions_give_the_game_minimum():
    p = stats.norm(0.3, 1.2)
    v = integrate.quad(lambda x: p.pdf(x) * math.log(0.5) * 2, -15, 15)[0]  # D* = 1/2 everywhere
    assert abs(v + math.log(4)) < 1e-8


def test_a_trained_discriminator_approaches_d_star():
    torch.manual_seed(0)
    D1 = nn.Sequential(nn.Linear(1, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(D1.parameters(), lr=3e-3)
    for _ in range(1500):
        loss = d_loss(D1(torch.randn(512, 1)), D1(1.5 + 0.7 * torch.randn(512, 1)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    xs = np.linspace(-2, 3, 200)
    with torch.no_grad():
        learned = torch.sigmoid(D1(torch.tensor(xs, dtype=torch.float32)[:, None]))[:, 0].numpy()
    p_d, p_q = stats.norm(0, 1), stats.norm(1.5, 0.7)
    optimal = p_d.pdf(xs) / (p_d.pdf(xs) + p_q.pdf(xs))
    assert np.abs(learned - optimal).max() < 0.1


R, SIGMA = 2.0, 0.05
CENTRES = torch.tensor([[R * math.cos(2 * math.pi * k / 8), R * math.sin(2 * math.pi * k / 8)]
                        for k in range(8)])


def ring_quality(x):
    dist, k = torch.cdist(x, CENTRES).min(dim=1)
    good = dist < 3 * SIGMA
    counts = torch.bincount(k[good], minlength=8)
    return int((counts >= 0.02 * len(x)).sum()), float(good.float().mean())


def test_ring_metric_counts_modes_and_quality():
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 8, (2000,), generator=gen)
    perfect = CENTRES[k] + SIGMA * torch.randn(2000, 2, generator=gen)
    modes, quality = ring_quality(perfect)
    assert modes == 8 and quality > 0.97
    collapsed = CENTRES[3] + SIGMA * torch.randn(2000, 2, generator=gen)
    assert ring_quality(collapsed)[0] == 1
    assert ring_quality(torch.zeros(2000, 2)) == (0, 0.0)  # the centre of the ring is no mode
