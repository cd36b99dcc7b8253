"""Chapter 18 checks, on the chapter's own definitions: the GAN losses and their gradients, the
optimal discriminator and the JSD identity, the DCGAN's two networks against a functional reading
of the chapter's shape table, the direction of one training step, the ring and judge metrics, and
the exercise."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from scipy import integrate, stats
from scipy.spatial.distance import jensenshannon
from torch import nn

from nnbook.exercises import check

ch = load_chapter("18")
F64 = dict(dtype=torch.float64)


# ---------------------------------------------------------------- losses (18.1), (18.6), (18.7)

@pytest.mark.parametrize("scale", [0.1, 3.0, 20.0])
def test_losses_equal_binary_cross_entropy_and_have_the_derived_gradients(scale):
    """Catches a swapped label or sign in a loss, and a gradient that is not (18.6)."""
    gen = torch.Generator().manual_seed(int(scale * 10))
    a_r = torch.randn(64, generator=gen, **F64) * scale
    a_f = (torch.randn(64, generator=gen, **F64) * scale).requires_grad_()
    ones, zeros = torch.ones(64, **F64), torch.zeros(64, **F64)
    bce = F.binary_cross_entropy_with_logits
    torch.testing.assert_close(ch.d_loss(a_r, a_f), bce(a_r, ones) + bce(a_f, zeros))
    torch.testing.assert_close(ch.g_loss_ns(a_f), bce(a_f, ones))
    torch.testing.assert_close(ch.g_loss_minimax(a_f), -bce(a_f, zeros))
    D_fake = torch.sigmoid(a_f.detach())
    (g_mm,) = torch.autograd.grad(ch.g_loss_minimax(a_f) * 64, a_f)
    (g_ns,) = torch.autograd.grad(ch.g_loss_ns(a_f) * 64, a_f)
    torch.testing.assert_close(g_mm, -D_fake)          # saturates where D(G(z)) -> 0
    torch.testing.assert_close(g_ns, -(1 - D_fake))    # non-saturating: largest there


def test_losses_stay_finite_where_the_discriminator_is_certain():
    """Catches log(sigmoid(a)) written naively: it gives inf and nan gradients at |a| ~ 100."""
    a = torch.tensor([-200.0, -100.0, 0.0, 100.0, 200.0], requires_grad=True)
    for loss in (ch.d_loss(a, a), ch.g_loss_ns(a), ch.g_loss_minimax(a)):
        (g,) = torch.autograd.grad(loss, a)
        assert torch.isfinite(loss) and torch.isfinite(g).all()
    (g,) = torch.autograd.grad(ch.g_loss_ns(a) * 5, a)
    # The worst fakes (a -> -inf, D -> 0) get the full gradient -1 from the non-saturating loss
    # and none from the minimax loss: the point of (18.6).
    torch.testing.assert_close(g[:2], torch.tensor([-1.0, -1.0]))
    (g_mm,) = torch.autograd.grad(ch.g_loss_minimax(a) * 5, a)
    torch.testing.assert_close(g_mm[:2], torch.tensor([0.0, 0.0]))


# ---------------------------------------------------------------- D* (18.3) and the JSD (18.5)

def test_d_loss_is_minimized_by_the_optimal_discriminator():
    """On a discrete x with densities p and q, d_loss over exact samples is the expected loss;
    its minimizer must be D* = p / (p + q) (18.3). Catches a d_loss whose optimum is q/(p+q)
    (labels swapped) or anything else."""
    p = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.35], **F64)
    q = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1], **F64)
    counts_p, counts_q = (p * 1000).round().long(), (q * 1000).round().long()
    x_real = torch.repeat_interleave(torch.arange(5), counts_p)   # 1,000 samples of p exactly
    x_fake = torch.repeat_interleave(torch.arange(5), counts_q)

    def loss(a):                                                   # a: one logit per value of x
        return ch.d_loss(a[x_real], a[x_fake])

    a_star = (p / q).log().requires_grad_()                        # sigmoid(a*) = p / (p + q)
    (g,) = torch.autograd.grad(loss(a_star), a_star)
    torch.testing.assert_close(g, torch.zeros(5, **F64), atol=1e-12, rtol=0)
    a = torch.zeros(5, **F64, requires_grad=True)
    opt = torch.optim.LBFGS([a], lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(a)
        value.backward()
        return value

    opt.step(closure)
    torch.testing.assert_close(torch.sigmoid(a.detach()), p / (p + q), atol=1e-6, rtol=0)
    # and the loss there is -V(D*, G) = log 4 - 2 JSD (18.5)
    m = (p + q) / 2
    jsd = 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    torch.testing.assert_close(loss(a.detach()), math.log(4) - 2 * jsd, atol=1e-9, rtol=0)


@pytest.mark.parametrize("mu, s", [(1.5, 0.7), (0.0, 2.0), (3.0, 1.0), (-0.5, 0.3)])
def test_value_at_the_optimal_discriminator_is_minus_log4_plus_twice_jsd(mu, s):
    p, q = stats.norm(0, 1), stats.norm(mu, s)
    grid = np.linspace(-14, 14, 280_001)
    jsd = jensenshannon(p.pdf(grid), q.pdf(grid)) ** 2
    assert abs(ch.V_star(p, q, lo=-14, hi=14) - (-math.log(4) + 2 * jsd)) < 1e-6
    assert 0 < jsd < math.log(2)


def test_identical_distributions_give_the_game_minimum():
    p = stats.norm(0.3, 1.2)
    assert abs(ch.V_star(p, p, lo=-15, hi=15) + math.log(4)) < 1e-8
    np.testing.assert_allclose(ch.d_star(np.linspace(-5, 5, 11), p, p), 0.5)


def test_d_star_is_p_over_p_plus_q_and_stable_in_the_tails():
    """Catches q/(p+q), and the 0/0 of pdf ratios far in the tails (x = 60: both pdfs are 0.0)."""
    p, q = stats.norm(0, 1), stats.norm(1.5, 0.7)
    xs = np.linspace(-3, 4, 50)
    np.testing.assert_allclose(ch.d_star(xs, p, q), p.pdf(xs) / (p.pdf(xs) + q.pdf(xs)), rtol=1e-10)
    far = ch.d_star(np.array([-60.0, 60.0]), p, q)
    np.testing.assert_allclose(far, 1.0)        # the narrower p_g has lighter tails on both sides


# ---------------------------------------------------------------- the DCGAN networks

def _reference_discriminator(D, x):
    """D of the section 2 table, written with torch.nn.functional and D's own weights."""
    conv1, conv2, bn, linear = D.net[0], D.net[2], D.net[3], D.net[6]
    h = F.leaky_relu(F.conv2d(x, conv1.weight, conv1.bias, stride=2, padding=1), 0.2)  # (B, c, 14, 14)
    h = F.conv2d(h, conv2.weight, conv2.bias, stride=2, padding=1)                     # (B, 2c, 7, 7)
    if D.training:                                # batch statistics (biased variance), as BN trains
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    h = (h - mean[:, None, None]) / torch.sqrt(var[:, None, None] + bn.eps)
    h = F.leaky_relu(h * bn.weight[:, None, None] + bn.bias[:, None, None], 0.2)
    return F.linear(h.flatten(1), linear.weight, linear.bias)[:, 0]


def _reference_generator_eval(G, z):
    """G of the section 2 table in evaluation mode (batch norm with running statistics)."""
    bn1, up1, bn2, up2 = G.net[0], G.net[2], G.net[3], G.net[5]

    def bn(h, m):
        return F.batch_norm(h, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.linear(z, G.fc.weight, G.fc.bias).view(len(z), 2 * G.c, 7, 7)
    h = F.relu(bn(h, bn1))
    h = F.relu(bn(F.conv_transpose2d(h, up1.weight, up1.bias, stride=2, padding=1), bn2))
    return torch.tanh(F.conv_transpose2d(h, up2.weight, up2.bias, stride=2, padding=1))


@pytest.mark.parametrize("c", [4, 8])
def test_discriminator_computes_the_table_of_section_2(c):
    """Catches a wrong stride, padding, slope, layer order (some keep every shape) or a batch norm
    in the wrong place, in training and in evaluation mode."""
    torch.manual_seed(c)
    D = ch.Discriminator(c=c)
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(D(x), _reference_discriminator(D, x))     # training mode
    with torch.no_grad():                       # give batch norm non-trivial running statistics
        for _ in range(3):
            D(torch.randn(16, 1, 28, 28) * 2 + 1)
    D.eval()
    torch.testing.assert_close(D(x), _reference_discriminator(D, x))
    torch.testing.assert_close(D(x[2:3]), D(x)[2:3])   # evaluation mode: each image on its own


@pytest.mark.parametrize("z_dim, c", [(8, 4), (64, 8)])
def test_generator_computes_the_table_of_section_2(z_dim, c):
    torch.manual_seed(z_dim)
    G = ch.Generator(z_dim=z_dim, c=c)
    with torch.no_grad():                       # give batch norm non-trivial running statistics
        for _ in range(3):
            G(torch.randn(32, z_dim) * 2 + 1)
    G.eval()
    z = torch.randn(6, z_dim)
    out = G(z)
    torch.testing.assert_close(out, _reference_generator_eval(G, z))
    assert out.abs().max() < 1                  # tanh: pixels in (-1, 1), like the scaled data
    torch.testing.assert_close(G(z[1:2]), out[1:2])    # evaluation mode: no batch dependence


def test_one_step_of_each_player_moves_the_game_the_right_way():
    """After D steps with d_loss the discriminator scores the real images higher than the fakes
    by more; after G steps with g_loss_ns it believes the fakes more. Catches swapped labels or a
    sign error in either loss, or the wrong optimizer stepping."""
    torch.manual_seed(0)
    G, D = ch.Generator(z_dim=16, c=4), ch.Discriminator(c=4)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    x, z = torch.rand(64, 1, 28, 28) * 2 - 1, torch.randn(64, 16)
    fake = G(z).detach()

    def margin():                                   # mean logit on real minus on fake
        with torch.no_grad():
            return (D(x).mean() - D(fake).mean()).item()

    before = margin()
    for _ in range(3):
        loss_D = ch.d_loss(D(x), D(fake))
        opt_D.zero_grad()
        loss_D.backward()
        opt_D.step()
    assert margin() > before + 0.01
    with torch.no_grad():                            # training mode: batch statistics of z
        belief = D(G(z)).mean().item()
    for _ in range(3):
        loss_G = ch.g_loss_ns(D(G(z)))
        opt_G.zero_grad()
        loss_G.backward()
        opt_G.step()
    with torch.no_grad():
        assert D(G(z)).mean().item() > belief


# ---------------------------------------------------------------- ring and judge metrics

def test_ring_metric_counts_modes_and_quality():
    gen = torch.Generator().manual_seed(0)
    modes, quality = ch.ring_quality(ch.sample_ring(2000, gen))
    assert modes == 8 and quality > 0.97
    collapsed = ch.CENTRES[3] + ch.SIGMA * torch.randn(2000, 2, generator=gen)
    assert ch.ring_quality(collapsed) == (1, pytest.approx(0.989, abs=0.01))
    assert ch.ring_quality(torch.zeros(2000, 2)) == (0, 0.0)     # the centre of the ring is no mode
    # 1.9% of the samples on mode 0 is below the 2% rule; 2.1% is not
    few = torch.cat([ch.CENTRES[:1].expand(19, 2), torch.zeros(981, 2)])
    assert ch.ring_quality(few)[0] == 0
    assert ch.ring_quality(torch.cat([ch.CENTRES[:1].expand(21, 2), torch.zeros(979, 2)]))[0] == 1


def test_train_ring_snapshots_count_generator_steps():
    cfg = ch.ToyConfig(batch=16, n_snapshots=2, n_eval=50)
    snaps = ch.train_ring(g_steps=3, steps=4, cfg=cfg, dev=torch.device("cpu"))
    assert [s[0] for s in snaps] == [6, 12]                      # G steps, not D steps
    assert snaps[-1][1].shape == (50, 2) and snaps[-1][1].device.type == "cpu"
    again = ch.train_ring(g_steps=3, steps=4, cfg=cfg, dev=torch.device("cpu"))
    torch.testing.assert_close(again[-1][1], snaps[-1][1])       # seeded: reruns repeat


def _fixed_judge(logits):
    """A stand-in judge: image i (pixel i set, the others 0) gets the logits of row i."""
    judge = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        judge[1].weight.zero_()
        judge[1].weight[:, : len(logits)] = logits.T
        judge[1].bias.zero_()
    images = torch.eye(784)[: len(logits)].view(-1, 1, 28, 28)
    return judge, images


def test_judge_samples_counts_only_confident_images():
    confident = torch.full((10,), -10.0)
    confident[3] = 10.0                                  # p(3) ~ 0.9999
    unsure = torch.zeros(10)
    unsure[7] = 2.0                                      # p(7) = e^2 / (e^2 + 9) ~ 0.45
    judge, images = _fixed_judge(torch.stack([confident, confident, confident, unsure]))
    share, counts = ch.judge_samples(judge, images)
    assert share == 0.75
    assert counts.tolist() == [0, 0, 0, 3, 0, 0, 0, 0, 0, 0]
    assert ch.judge_samples(judge, images, threshold=0.4)[0] == 1.0


def test_make_judge_maps_images_to_ten_logits_per_image():
    torch.manual_seed(0)
    judge = ch.make_judge().eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(judge(x)[1:2], judge(x[1:2]))
    assert judge(x).shape == (3, 10)


# ---------------------------------------------------------------- exercise 2

def solved_jsd_gaussians(mu1, s1, mu2, s2, *, window=None):
    """A reference solution of exercise 2: integrate the two halves of the JSD numerically
    over mu +- 12 sigma of both Gaussians (or a given ``window``, to make a wrong answer)."""
    from scipy import stats

    p, q = stats.norm(mu1, s1), stats.norm(mu2, s2)
    lo, hi = min(mu1 - 12 * s1, mu2 - 12 * s2), max(mu1 + 12 * s1, mu2 + 12 * s2)
    lo, hi = window or (lo, hi)

    def halves_of_kl(x):
        log_p, log_q = p.logpdf(x), q.logpdf(x)
        log_m = np.logaddexp(log_p, log_q) - math.log(2)
        return 0.5 * np.exp(log_p) * (log_p - log_m) + 0.5 * np.exp(log_q) * (log_q - log_m)

    return integrate.quad(halves_of_kl, lo, hi, limit=400, points=sorted({mu1, mu2}))[0]


def test_exercise_jsd_stub_solution_and_wrong_answer(capsys):
    assert check("Exercise 2", ch.jsd_gaussians, ch.test_jsd) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_jsd_gaussians, ch.test_jsd) is True
    with pytest.raises(AssertionError, match="should be"):   # KL(p || q) instead of the JSD
        check("Exercise 2", lambda m1, s1, m2, s2: math.log(s2 / s1)
              + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5, ch.test_jsd)
    with pytest.raises(AssertionError, match="log 2"):       # a fixed window misses N(40, 1)
        check("Exercise 2", lambda *a: solved_jsd_gaussians(*a, window=(-12, 12)), ch.test_jsd)
