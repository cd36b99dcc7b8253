"""Chapter 19 checks, on the chapter's own definitions: the Gaussian KL in closed form against
torch.distributions and Monte Carlo, the reparameterized gradient, the ELBO's two pieces, the
IWAE bound between the ELBO and log p(x), the evaluation and training helpers, and the exercise."""

import math

import pytest
import torch
from chapters import load_chapter
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from nnbook.exercises import check

ch = load_chapter("19")
F64 = dict(dtype=torch.float64)


def _diag(mu, logvar):
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


# ---------------------------------------------------------------- KL (19.7), (19.8)

@pytest.mark.parametrize("seed, shape", [(0, (64, 16)), (1, (1, 1)), (2, (3, 7, 5)), (3, (2, 200))])
def test_kl_and_log_normal_match_torch_distributions(seed, shape):
    """The chapter's own check over other seeds and shapes (a single dimension; a batch of
    batches): catches a KL summed over the wrong dimension or a dropped term."""
    ch.check_kl(seed=seed, shape=shape)


def test_kl_is_zero_only_at_equality_and_positive_elsewhere():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(50, 4, generator=gen, **F64), torch.randn(50, 4, generator=gen, **F64)
    torch.testing.assert_close(ch.kl_diag_gaussians(mu, logvar, mu, logvar), torch.zeros(50, **F64))
    assert (ch.kl_diag_gaussians(mu, logvar, mu.flip(0), logvar.flip(0)) > 0).all()
    torch.testing.assert_close(ch.kl_std_normal(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(3))


def test_kl_gradient_by_hand_and_gradcheck():
    """(19.8)'s derivatives: dKL/dmu = mu, dKL/dv = (e^v - 1) / 2."""
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(5, 3, generator=gen, **F64, requires_grad=True)
    logvar = torch.randn(5, 3, generator=gen, **F64, requires_grad=True)
    g_mu, g_logvar = torch.autograd.grad(ch.kl_std_normal(mu, logvar).sum(), (mu, logvar))
    torch.testing.assert_close(g_mu, mu.detach())
    torch.testing.assert_close(g_logvar, 0.5 * (logvar.detach().exp() - 1))
    args = [torch.randn(2, 3, generator=gen, **F64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(ch.kl_diag_gaussians, args)
    assert torch.autograd.gradcheck(ch.log_normal, args[:3])


@pytest.mark.parametrize("seed", [4, 5])
def test_kl_agrees_with_monte_carlo(seed):
    gen = torch.Generator().manual_seed(seed)
    mu_q, logvar_q, mu_p, logvar_p = (torch.randn(3, generator=gen, **F64) for _ in range(4))
    z = ch.reparameterize(mu_q, logvar_q, torch.randn(200_000, 3, generator=gen, **F64))
    log_ratio = ch.log_normal(z, mu_q, logvar_q) - ch.log_normal(z, mu_p, logvar_p)
    se = log_ratio.std() / math.sqrt(len(z))
    assert abs(log_ratio.mean() - ch.kl_diag_gaussians(mu_q, logvar_q, mu_p, logvar_p)) < 4 * se


def test_bernoulli_log_likelihood_matches_torch_and_survives_confident_logits():
    """Catches log(sigmoid) written naively: -inf at logits of +-200."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 784, generator=gen, **F64) * 3
    x = torch.randint(0, 2, (6, 784), generator=gen).double()
    reference = Independent(Bernoulli(logits=logits), 1).log_prob(x)
    torch.testing.assert_close(ch.bernoulli_log_lik(logits, x), reference)
    sure = torch.tensor([[200.0, -200.0]])
    torch.testing.assert_close(ch.bernoulli_log_lik(sure, torch.tensor([[1.0, 0.0]])), torch.tensor([0.0]))
    torch.testing.assert_close(ch.bernoulli_log_lik(sure, torch.tensor([[0.0, 0.0]])), torch.tensor([-200.0]))


# ---------------------------------------------------------------- reparameterization (19.9)

def test_reparameterize_samples_the_gaussian_and_carries_the_gradient():
    mu = torch.tensor([0.3, -1.0], **F64, requires_grad=True)
    logvar = torch.tensor([0.2, -0.5], **F64, requires_grad=True)
    eps = torch.randn(400_000, 2, generator=torch.Generator().manual_seed(5), **F64)
    z = ch.reparameterize(mu, logvar, eps)
    torch.testing.assert_close(z.mean(0), mu.detach(), atol=0.01, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.detach().exp(), atol=0.01, rtol=0)  # sigma^2 = e^v
    loss = (z ** 2).sum(-1).mean()                              # E[z^2] = mu^2 + e^v
    g_mu, g_logvar = torch.autograd.grad(loss, (mu, logvar))
    torch.testing.assert_close(g_mu, 2 * mu.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(g_logvar, logvar.detach().exp(), atol=0.02, rtol=0)


@pytest.mark.parametrize("D", [1, 4, 16])
def test_gradient_estimator_variances(D):
    reparam, score = ch.gradient_samples(D, n=200_000, seed=D)
    assert abs(reparam.mean() - 2) < 0.05
    assert abs(score.mean() - 2) < 5 * score.std() / math.sqrt(len(score))
    assert abs(reparam.var() - 4) < 0.2
    predicted = 30 + 22 * (D - 1) + 4 * (D - 1) ** 2
    assert abs(score.var() / predicted - 1) < 0.1, f"score variance {score.var():.1f}, predicted {predicted}"


# ---------------------------------------------------------------- bounds (19.2), (19.11)

def test_toy_elbo_gap_is_the_posterior_kl():
    log_px = ch.p_joint.sum().log()
    posterior = ch.p_joint / ch.p_joint.sum()
    for q1 in (0.1, 0.5, 0.9):
        q = torch.tensor([1 - q1, q1])
        torch.testing.assert_close(log_px - ch.toy_elbo(torch.tensor(q1)), (q * (q / posterior).log()).sum())
    torch.testing.assert_close(ch.toy_elbo(posterior[1]), log_px)
    q1 = torch.linspace(0.01, 0.99, 99)
    assert (ch.toy_elbo(q1) <= log_px + 1e-6).all()
    assert abs(log_px.item() - math.log(0.55)) < 1e-6


@pytest.mark.parametrize("x, w, b, s", [(2.0, 2.0, 0.5, 0.5), (-1.0, 0.7, 0.0, 1.3)])
def test_linear_gaussian_elbo_exact_at_posterior_and_iwae_between(x, w, b, s):
    x = torch.tensor(x, **F64)
    log_px, elbo_at_post, _ = ch.linear_gaussian_bounds(
        x, q_mu=w * (x - b) / (w ** 2 + s ** 2), q_logvar=math.log(s ** 2 / (w ** 2 + s ** 2)),
        k=1, n=1000, w=w, b=b, s=s)
    torch.testing.assert_close(log_px, Normal(b, math.sqrt(w ** 2 + s ** 2)).log_prob(x))
    torch.testing.assert_close(elbo_at_post, log_px.expand(1000))   # zero gap, zero variance
    bounds = [ch.linear_gaussian_bounds(x, q_mu=0.0, q_logvar=0.0, k=k, n=5000, w=w, b=b, s=s)[2]
              for k in (1, 10, 100)]
    assert bounds[0] < bounds[1] < bounds[2] < log_px, f"expected L_1 < L_10 < L_100 < log p(x): {bounds}"


def test_neg_elbo_returns_reconstruction_and_kl_of_the_sampled_code():
    """Same noise, computed independently with torch.distributions: catches decoding mu
    instead of z, sigma taken as e^v, or a KL against the wrong prior."""
    torch.manual_seed(0)
    model = ch.VAE(d_x=30, d_hidden=(16,), d_z=3)
    x = torch.bernoulli(torch.full((8, 30), 0.4))
    torch.manual_seed(1)
    rec, kl = ch.neg_elbo(model, x)
    torch.manual_seed(1)
    with torch.no_grad():
        mu, logvar = model.encoder(x).chunk(2, dim=-1)
        q = Normal(mu, (0.5 * logvar).exp())
        z = mu + q.scale * torch.randn_like(mu)
        rec_ref = -Independent(Bernoulli(logits=model.decoder(z)), 1).log_prob(x)
        kl_ref = kl_divergence(Independent(q, 1), Independent(Normal(torch.zeros(3), torch.ones(3)), 1))
    torch.testing.assert_close(rec.detach(), rec_ref)
    torch.testing.assert_close(kl.detach(), kl_ref)


def test_vae_parameters_and_iwae_bound_between_elbo_and_log_px():
    assert sum(p.numel() for p in ch.VAE().parameters()) == 1_091_920
    torch.manual_seed(0)
    small = ch.VAE(d_x=20, d_hidden=(16,), d_z=2)
    xs = torch.bernoulli(torch.full((4, 20), 0.4))
    with torch.no_grad():                                 # 2,000 draws per image, batched
        elbo = -sum(ch.neg_elbo(small, xs.repeat(2000, 1))).view(2000, 4).mean(0)
    L_1 = ch.iwae_bound(small, xs.repeat(2000, 1), k=1).view(2000, 4).mean(0)
    L_50_draws = ch.iwae_bound(small, xs.repeat(200, 1), k=50).view(200, 4)
    L_50, se = L_50_draws.mean(0), L_50_draws.std(0) / math.sqrt(200)
    torch.testing.assert_close(L_1, elbo, atol=0.1, rtol=0)    # L_1 is the ELBO (19.11)
    assert (L_50 > elbo).all(), "L_k should be at least the ELBO"
    # Exact log p(x) for the 2-D latent by quadrature on a grid: L_50 must stay below it.
    t = torch.linspace(-6, 6, 241)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).view(-1, 2)
    with torch.no_grad():
        logits = small.decoder(grid)[:, None, :].expand(-1, 4, -1)             # (G, 4, 20)
        log_pxz = ch.bernoulli_log_lik(logits, xs.expand(len(grid), -1, -1))   # (G, 4)
        log_pz = ch.log_normal(grid, torch.zeros_like(grid), torch.zeros_like(grid))[:, None]
        log_px = torch.logsumexp(log_pxz + log_pz, 0) + 2 * math.log(t[1] - t[0])
    assert (L_50 <= log_px + 4 * se + 1e-3).all(), f"L_50 {L_50} should not exceed log p(x) {log_px}"


# ---------------------------------------------------------------- evaluation and training helpers

def _nearly_deterministic_vae():
    """A VAE whose encoder variance is e^-30: the sampled code is the mean, up to 3e-7."""
    torch.manual_seed(0)
    model = ch.VAE(d_x=30, d_hidden=(16,), d_z=3)
    with torch.no_grad():
        last = model.encoder[-1]
        last.weight[3:] = 0
        last.bias[3:] = -30.0
    return model


def test_mean_neg_elbo_is_a_per_image_average_whatever_the_batching():
    """Catches averaging over batches instead of images (the last batch is smaller)."""
    model = _nearly_deterministic_vae()
    x = torch.bernoulli(torch.full((23, 30), 0.3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rec, kl = ch.neg_elbo(model, x)
    whole = ch.mean_neg_elbo(model, x, batch_size=1000)
    assert whole == pytest.approx((rec.mean().item(), kl.mean().item()), rel=1e-5)
    assert ch.mean_neg_elbo(model, x, batch_size=7) == pytest.approx(whole, rel=1e-5)
    assert ch.mean_neg_elbo(model, x, batch_size=7, n_samples=3) == pytest.approx(whole, rel=1e-5)


def test_mean_neg_elbo_repeats_with_a_seed():
    torch.manual_seed(0)
    model = ch.VAE(d_x=30, d_hidden=(16,), d_z=3)
    x = torch.bernoulli(torch.full((10, 30), 0.3))
    assert ch.mean_neg_elbo(model, x, seed=3) == ch.mean_neg_elbo(model, x, seed=3)


def test_train_vae_lowers_the_validation_bound(capsys):
    """Two prototypes of 30 nearly binary pixels: without a code 30 log 2 = 20.8 nats per
    image, with a one-bit code about 3.6; a few epochs must go well below the first."""
    gen = torch.Generator().manual_seed(0)
    protos = torch.tensor([[0.98] * 15 + [0.02] * 15, [0.02] * 15 + [0.98] * 15])
    x_train = protos[torch.randint(0, 2, (256,), generator=gen)]       # gray, binarized in training
    x_val = torch.bernoulli(protos[torch.randint(0, 2, (64,), generator=gen)], generator=gen)
    torch.manual_seed(0)
    model = ch.VAE(d_x=30, d_hidden=(32,), d_z=2)
    history = ch.train_vae(model, x_train, x_val, epochs=6, lr=1e-2, batch_size=32)
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    assert history["val_loss"][-1] < 12, history["val_loss"]
    assert history.last("val_loss") == pytest.approx(sum(ch.mean_neg_elbo(model, x_val)), abs=0.5)
    assert capsys.readouterr().out.count("val -ELBO") == 6


def test_interpolation_ends_at_the_two_digits():
    torch.manual_seed(0)
    model = ch.VAE(d_x=30, d_hidden=(16,), d_z=3).eval()
    x_a, x_b = torch.bernoulli(torch.full((2, 30), 0.5))
    latent, blend = ch.interpolate(model, x_a, x_b, [0.0, 0.5, 1.0])
    with torch.no_grad():
        mu = model.encode(torch.stack([x_a, x_b]))[0]
        ends = torch.sigmoid(model.decoder(mu))
        middle = torch.sigmoid(model.decoder(mu.mean(0)))
    torch.testing.assert_close(latent[[0, 2]], ends)
    torch.testing.assert_close(latent[1], middle)                   # the path runs through mu space
    torch.testing.assert_close(blend, torch.stack([x_a, (x_a + x_b) / 2, x_b]))


# ---------------------------------------------------------------- exercise 2

def solved_kl_1d(mu1, var1, mu2, var2):
    return 0.5 * (math.log(var2) - math.log(var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1)


def test_exercise_kl_1d_stub_solution_and_wrong_answers(capsys):
    assert check("Exercise 2", ch.kl_1d, ch.test_kl_1d) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_kl_1d, ch.test_kl_1d) is True
    with pytest.raises(AssertionError, match="should be"):      # the reversed KL(p || q)
        check("Exercise 2", lambda m1, v1, m2, v2: solved_kl_1d(m2, v2, m1, v1), ch.test_kl_1d)
    with pytest.raises(AssertionError, match="should be"):      # standard deviations for variances
        check("Exercise 2", lambda m1, v1, m2, v2: solved_kl_1d(m1, v1 ** 0.5, m2, v2 ** 0.5),
              ch.test_kl_1d)
