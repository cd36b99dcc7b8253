"""Chapter 19 checks: Gaussian KL in closed form, the ELBO and IWAE bounds, reparameterized gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence


def reparameterize(mu, logvar, eps):
    return mu + (0.5 * logvar).exp() * eps


def kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p):
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def kl_std_normal(mu, logvar):
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)


def bernoulli_log_lik(logits, x):
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def log_normal(z, mu, logvar):
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp()).sum(-1)


def mlp(sizes):
    layers = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class VAE(nn.Module):
    def __init__(self, *, d_x=784, d_hidden=(512, 256), d_z=32):
        super().__init__()
        self.encoder = mlp([d_x, *d_hidden, 2 * d_z])
        self.decoder = mlp([d_z, *reversed(d_hidden), d_x])

    def encode(self, x):
        return self.encoder(x).chunk(2, dim=-1)

    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decoder(reparameterize(mu, logvar, torch.randn_like(mu))), mu, logvar


@torch.no_grad()
def iwae_bound(model, x, *, k):
    mu, logvar = model.encode(x)
    z = reparameterize(mu, logvar, torch.randn(k, *mu.shape))
    logits = model.decoder(z)
    log_w = (bernoulli_log_lik(logits, x.expand_as(logits))
             + log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - log_normal(z, mu, logvar))
    return torch.logsumexp(log_w, dim=0) - math.log(k)


def _diag(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_matches_torch_distributions(seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (32, 8)
    mu_q, mu_p = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 for _ in range(2))
    logvar_q, logvar_p = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    zeros = torch.zeros(shape, dtype=torch.float64)
    torch.testing.assert_close(kl_std_normal(mu_q, logvar_q),
                               kl_divergence(_diag(mu_q, logvar_q), _diag(zeros, zeros)))
    torch.testing.assert_close(kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p),
                               kl_divergence(_diag(mu_q, logvar_q), _diag(mu_p, logvar_p)))
    assert (kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p) >= 0).all()
    torch.testing.assert_close(kl_diag_gaussians(mu_q, logvar_q, mu_q, logvar_q),
                               torch.zeros(32, dtype=torch.float64))


def test_log_densities_match_torch_distributions():
    gen = torch.Generator().manual_seed(3)
    mu, logvar, z = (torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(log_normal(z, mu, logvar), _diag(mu, logvar).log_prob(z))
    logits = torch.randn(6, 784, generator=gen, dtype=torch.float64)
    x = torch.randint(0, 2, (6, 784), generator=gen).double()
    torch.testing.assert_close(bernoulli_log_lik(logits, x),
                               Independent(Bernoulli(logits=logits), 1).log_prob(x))


def test_kl_gradient_by_hand_and_gradcheck():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    logvar = torch.randn(5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    g_mu, g_logvar = torch.autograd.grad(kl_std_normal(mu, logvar).sum(), (mu, logvar))
    torch.testing.assert_close(g_mu, mu.detach())
    torch.testing.assert_close(g_logvar, 0.5 * (logvar.detach().exp() - 1))
    args = [torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(kl_diag_gaussians, args)


def test_kl_agrees_with_monte_carlo():
    gen = torch.Generator().manual_seed(4)
    mu_q, logvar_q, mu_p, logvar_p = (torch.randn(3, generator=gen, dtype=torch.float64) for _ in range(4))
    z = reparameterize(mu_q, logvar_q, torch.randn(200_000, 3, generator=gen, dtype=torch.float64))
    log_ratio = log_normal(z, mu_q, logvar_q) - log_normal(z, mu_p, logvar_p)
    se = log_ratio.std() / math.sqrt(len(z))
    assert abs(log_ratio.mean() - kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p)) < 4 * se


def test_toy_elbo_gap_is_the_posterior_kl():
    p_joint = torch.tensor([0.5, 0.5], dtype=torch.float64) * torch.tensor([0.2, 0.9], dtype=torch.float64)
    log_px, posterior = p_joint.sum().log(), p_joint / p_joint.sum()
    for q1 in (0.1, 0.5, 0.9):
        q = torch.tensor([1 - q1, q1], dtype=torch.float64)
        elbo = (q * (p_joint.log() - q.log())).sum()
        torch.testing.assert_close(log_px - elbo, (q * (q / posterior).log()).sum())
    elbo_post = (posterior * (p_joint.log() - posterior.log())).sum()
    torch.testing.assert_close(elbo_post, log_px)
    assert abs(log_px.item() - math.log(0.55)) < 1e-12


def _linear_gaussian_log_w(x, q_mu, q_logvar, *, n, k, w=2.0, b=0.5, s=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    one = torch.ones((), dtype=torch.float64)
    z = reparameterize(q_mu * one, q_logvar * one, torch.randn(n, k, 1, generator=gen, dtype=torch.float64))
    return (log_normal(x.expand_as(z), w * z + b, math.log(s ** 2) * torch.ones_like(z))
            + log_normal(z, 0 * z, 0 * z) - log_normal(z, q_mu * one, q_logvar * one))


def test_linear_gaussian_elbo_exact_at_posterior_and_iwae_between():
    w, b, s, x = 2.0, 0.5, 0.5, torch.tensor(2.0, dtype=torch.float64)
    log_px = -0.5 * (math.log(2 * math.pi * (w ** 2 + s ** 2)) + (x.item() - b) ** 2 / (w ** 2 + s ** 2))
    post_mu, post_logvar = w * (x - b) / (w ** 2 + s ** 2), math.log(s ** 2 / (w ** 2 + s ** 2))
    log_w = _linear_gaussian_log_w(x, post_mu, post_logvar, n=1000, k=1)
    torch.testing.assert_close(log_w, torch.full_like(log_w, log_px))
    bounds = []
    for k in (1, 10, 100):
        log_w = _linear_gaussian_log_w(x, 0.0, 0.0, n=5000, k=k)
        bounds.append((torch.logsumexp(log_w, dim=1) - math.log(k)).mean().item())
    assert bounds[0] < bounds[1] < bounds[2] < log_px, f"expected L_1 < L_10 < L_100 < log p(x); got {bounds}"
    assert log_px - bounds[2] < 0.1


@pytest.mark.parametrize("D", [1, 4, 16])
def test_gradient_estimator_variances(D):
    gen = torch.Generator().manual_seed(D)
    eps = torch.randn(200_000, D, generator=gen, dtype=torch.float64)
    z = 1.0 + eps
    f = (z ** 2).sum(-1)
    reparam, score = 2 * z[:, 0], f * eps[:, 0]
    assert abs(reparam.mean() - 2) < 0.05
    assert abs(score.mean() - 2) < 5 * score.std() / math.sqrt(len(score))
    assert abs(reparam.var() - 4) < 0.2
    predicted = 30 + 22 * (D - 1) + 4 * (D - 1) ** 2
    assert abs(score.var() / predicted - 1) < 0.1, f"score variance {score.var():.1f}, predicted {predicted}"


def test_reparameterized_gradient_passes_through_sampling():
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.2, -0.5], dtype=torch.float64, requires_grad=True)
    eps = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = (reparameterize(mu, logvar, eps) ** 2).sum(-1).mean()   # E[z^2] = mu^2 + sigma^2
    g_mu, g_logvar = torch.autograd.grad(loss, (mu, logvar))
    torch.testing.assert_close(g_mu, 2 * mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(g_logvar, logvar.detach().exp(), atol=0.02, rtol=0)


def test_vae_shapes_params_and_bounds():
    torch.manual_seed(0)
    model = VAE()
    assert sum(p.numel() for p in model.parameters()) == 1_091_920
    x = torch.bernoulli(torch.rand(16, 784) * 0.3)
    logits, mu, logvar = model(x)
    assert logits.shape == (16, 784) and mu.shape == logvar.shape == (16, 32)
    small = VAE(d_x=20, d_hidden=(16,), d_z=2)
    xs = torch.bernoulli(torch.full((4, 20), 0.4))
    elbo = torch.stack([iwae_bound(small, xs, k=1) for _ in range(2000)]).mean(0)
    L_50 = torch.stack([iwae_bound(small, xs, k=50) for _ in range(40)]).mean(0)
    assert (L_50 >= elbo).all(), "L_k should be at least the ELBO"
    # Exact log p(x) for the 2-D latent by brute-force quadrature: L_50 must stay below it.
    t = torch.linspace(-6, 6, 241)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2)
    with torch.no_grad():
        logits = small.decoder(grid)[:, None, :].expand(-1, 4, -1)              # (G, 4, 20)
        log_pxz = bernoulli_log_lik(logits, xs.expand(len(grid), -1, -1))       # (G, 4)
        log_pz = log_normal(grid, torch.zeros_like(grid), torch.zeros_like(grid))[:, None]
        log_px = torch.logsumexp(log_pxz + log_pz, 0) + 2 * math.log(t[1] - t[0])
    assert (L_50 <= log_px + 0.01).all(), f"L_50 {L_50} should not exceed log p(x) {log_px}"
