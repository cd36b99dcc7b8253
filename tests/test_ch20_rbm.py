"""Chapter 20 checks, on the chapter's own definitions: the free energy, conditionals and
pseudo-likelihood against scikit-learn's BernoulliRBM over a grid of sizes and seeds, the exact
partition function and the gradient against brute force, Gibbs sampling against the exact
distribution, AIS against exact log Z, the baselines, the training loop, bad inputs and the
exercises."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from sklearn.neural_network import BernoulliRBM

from nnbook.exercises import check

ch = load_chapter("20")
F64 = dict(dtype=torch.float64)


def _rbm(D, H, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(D, H, generator=gen, **F64), torch.randn(D, generator=gen, **F64),
            torch.randn(H, generator=gen, **F64))


def _binary(n, D, seed, p=0.3):
    return torch.bernoulli(torch.full((n, D), p, **F64), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- against scikit-learn

@pytest.mark.parametrize("D, H, seed, random_state", [(784, 16, 0, 7), (20, 3, 1, 0), (50, 64, 2, 123),
                                                      (5, 1, 3, 9)])
def test_free_energy_hidden_probabilities_and_score_samples_match_sklearn(D, H, seed, random_state):
    """Weights copied into BernoulliRBM: catches a transposed W, visible and hidden biases swapped,
    a sign error in F(v), or a flip convention that differs from score_samples'."""
    W, a, b = _rbm(D, H, seed, scale=0.3)
    x = _binary(40, D, seed + 10)
    sk = ch.to_sklearn(W, a, b, x[:10].numpy(), random_state=random_state)
    assert isinstance(sk, BernoulliRBM) and sk.components_.shape == (H, D)
    x_np = x.numpy()
    torch.testing.assert_close(ch.free_energy(x, W, a, b), torch.from_numpy(sk._free_energy(x_np)),
                               rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ch.p_h_given_v(x, W, b), torch.from_numpy(sk.transform(x_np)))
    flips = ch.sklearn_flips(len(x), D, random_state)
    torch.testing.assert_close(ch.pseudo_log_likelihood(x, W, a, b, flips),
                               torch.from_numpy(sk.score_samples(x_np)), rtol=1e-12, atol=1e-9)


def test_score_samples_is_noisy_and_its_mean_over_all_flips_is_the_pseudo_likelihood():
    """(20.13): D log sigma(F(v~) - F(v)) averaged over every flipped pixel i is PL(v) = sum_i
    log p(v_i | v_-i); catches a missing factor D or log sigma of the wrong difference."""
    W, a, b = _rbm(6, 4, 5)
    V = ch.all_binary(6, **F64)
    estimates = torch.stack([ch.pseudo_log_likelihood(V, W, a, b, torch.full((len(V),), i))
                             for i in range(6)])                                      # (D, 2^D)
    log_p = torch.logsumexp(ch.joint_log_prob(W, a, b), 1)
    index = torch.arange(len(V))
    pl = sum(log_p - torch.logaddexp(log_p, log_p[index ^ (1 << i)]) for i in range(6))
    torch.testing.assert_close(estimates.mean(0), pl)
    assert (estimates.std(0) > 0.1).all()                 # one random flip: a noisy estimate


# ---------------------------------------------------------------- brute force

@pytest.mark.parametrize("D, H, seed", [(1, 1, 0), (4, 2, 1), (3, 6, 2), (7, 3, 3)])
def test_marginals_conditionals_and_log_partition_against_brute_force(D, H, seed):
    """Both conditionals (20.4) and the marginal (20.5) from the enumerated joint table."""
    W, a, b = _rbm(D, H, seed)
    log_joint = ch.joint_log_prob(W, a, b)                                 # (2^D, 2^H)
    V, Hs = ch.all_binary(D, **F64), ch.all_binary(H, **F64)
    log_z = ch.log_partition(W, a, b)
    torch.testing.assert_close(torch.logsumexp(log_joint, 1), ch.log_likelihood(V, W, a, b, log_z))
    p_v_given_h_table = (log_joint - torch.logsumexp(log_joint, 0, keepdim=True)).exp()  # cols sum to 1
    torch.testing.assert_close(V.T @ p_v_given_h_table, ch.p_v_given_h(Hs, W, a).T)   # E[v_i | h]
    p_h_given_v_table = (log_joint - torch.logsumexp(log_joint, 1, keepdim=True)).exp()
    torch.testing.assert_close(p_h_given_v_table @ Hs, ch.p_h_given_v(V, W, b))      # E[h_j | v]
    energies = ch.energy(V[:, None, :].expand(-1, len(Hs), -1).reshape(-1, D),
                         Hs.repeat(len(V), 1), W, a, b).view(len(V), len(Hs))
    torch.testing.assert_close(-energies - log_z, log_joint)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_log_partition_does_not_depend_on_the_chunk_size(chunk):
    """Catches chunks that drop or repeat hidden states at a boundary."""
    W, a, b = _rbm(30, 9, 4, scale=0.5)
    reference = torch.logsumexp(-ch.free_energy(ch.all_binary(9, **F64), W.T.contiguous(), b, a), 0)
    torch.testing.assert_close(ch.log_partition(W, a, b, chunk=chunk), reference)


def test_log_partition_survives_large_energies():
    """A trained RBM has log Z in the hundreds: summing exp directly would overflow."""
    W, a, b = _rbm(784, 4, 5)
    W = W * 3
    log_z = ch.log_partition(W.float(), a.float(), b.float())
    assert torch.isfinite(log_z) and log_z > 500
    torch.testing.assert_close(log_z.double(), ch.log_partition(W, a, b), rtol=1e-5, atol=0)


@pytest.mark.parametrize("D, H, seed", [(4, 3, 0), (5, 1, 1), (2, 5, 2)])
def test_gradient_is_data_term_minus_model_term(D, H, seed):
    """(20.8) with the exact model term equals autograd of the exact mean log-likelihood; with
    the data as its own model term it is zero (catches a sign or a missing 1/B)."""
    W, a, b = _rbm(D, H, seed)
    x = ch.all_binary(D, **F64)[torch.tensor([0, 1, 3, 3, -1])]
    theta = [t.clone().requires_grad_(True) for t in (W, a, b)]
    auto = torch.autograd.grad(ch.log_likelihood(x, *theta, ch.log_partition(*theta)).mean(), theta)
    p_v = torch.logsumexp(ch.joint_log_prob(W, a, b), 1).exp()
    hand = ch.rbm_gradient(x, ch.all_binary(D, **F64), W, a, b, model_weights=p_v)
    for g1, g2 in zip(auto, hand, strict=True):
        torch.testing.assert_close(g1, g2)
    for g in ch.rbm_gradient(x, x, W, a, b):
        torch.testing.assert_close(g, torch.zeros_like(g))


def test_general_boltzmann_machine_reduces_to_the_rbm_and_rejects_bad_couplings():
    W, a, b = _rbm(3, 2, 6)
    L = torch.zeros(5, 5, **F64)
    L[:3, 3:], L[3:, :3] = W, W.T
    k = torch.arange(32)
    torch.testing.assert_close(ch.bm_log_prob(L, torch.cat([a, b])),
                               ch.joint_log_prob(W, a, b)[k % 8, k // 8])
    asymmetric = L.clone()
    asymmetric[0, 3] += 1
    with pytest.raises(ValueError, match="symmetric"):
        ch.bm_log_prob(asymmetric, torch.cat([a, b]))
    self_loop = L.clone()
    self_loop[1, 1] = 1.0
    with pytest.raises(ValueError, match="zero diagonal"):
        ch.bm_log_prob(self_loop, torch.cat([a, b]))


def test_toy_machine_of_the_intuition_section():
    """Z = (1 + e^-1)^3 and p(h=1 | v=11) = sigmoid(1), as derived by hand."""
    states = ch.all_binary(3, **F64)
    E = ch.energy(states[:, :2], states[:, 2:], ch.toy_W, ch.toy_a, ch.toy_b)
    assert E.neg().exp().sum().item() == pytest.approx((1 + math.exp(-1)) ** 3, rel=1e-12)
    assert ch.log_partition(ch.toy_W, ch.toy_a, ch.toy_b).exp().item() == pytest.approx(
        (1 + math.exp(-1)) ** 3, rel=1e-12)
    p = ch.p_h_given_v(torch.ones(1, 2, **F64), ch.toy_W, ch.toy_b)
    assert p.item() == pytest.approx(1 / (1 + math.exp(-1)))


# ---------------------------------------------------------------- sampling and AIS

def test_gibbs_chains_reach_the_exact_distribution():
    """100,000 chains, 40 block Gibbs steps (20.4): the visited states' frequencies must match
    the exact p(v). Catches sampling h from p(v|h)'s logits, or W instead of W^T."""
    torch.manual_seed(0)
    W, a, b = (t.float() for t in _rbm(4, 3, 7))
    v = torch.bernoulli(torch.full((100_000, 4), 0.5))
    for _ in range(40):
        v, h = ch.gibbs_step(v, W, a, b)
    assert v.shape == (100_000, 4) and h.shape == (100_000, 3)
    index = (v @ torch.tensor([1.0, 2, 4, 8])).long()
    freq = torch.bincount(index, minlength=16).double() / len(v)
    exact = torch.logsumexp(ch.joint_log_prob(*(t.double() for t in (W, a, b))), 1).exp()
    assert (freq - exact).abs().sum() < 0.03, f"total variation {(freq - exact).abs().sum() / 2:.3f}"


def test_sample_bernoulli_keeps_dtype_and_frequency():
    torch.manual_seed(1)
    p = torch.tensor([0.0, 0.2, 0.9, 1.0], **F64).expand(50_000, 4)
    s = ch.sample_bernoulli(p)
    assert s.dtype == torch.float64 and set(s.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(s.mean(0), p[0], atol=0.01, rtol=0)


def test_ais_is_exact_without_visible_hidden_weights():
    """W = 0 and a = a_base: every log-weight increment is deterministic, so AIS must return
    log Z = sum softplus(a) + sum softplus(b) exactly (catches a missing H log 2 or a wrong
    softplus(beta x) term)."""
    _, a, b = _rbm(12, 5, 8)
    W = torch.zeros(12, 5, **F64)
    log_z, log_w = ch.ais_log_partition(W, a, b, a_base=a, n_runs=7, n_betas=20)
    torch.testing.assert_close(log_z, F.softplus(a).sum() + F.softplus(b).sum())
    assert log_w.std() < 1e-12


@pytest.mark.parametrize("seed", [0, 1])
def test_ais_estimates_the_exact_log_partition(seed):
    """A random RBM with moderate weights: AIS (M = 200, K = 300) within 0.1 nats."""
    torch.manual_seed(seed)
    W, a, b = _rbm(20, 8, seed + 20, scale=0.3)
    a_base = torch.randn(20, generator=torch.Generator().manual_seed(seed), **F64)
    log_z, log_w = ch.ais_log_partition(W, a, b, a_base=a_base, n_runs=200, n_betas=300)
    assert log_w.shape == (200,)
    assert abs(log_z - ch.log_partition(W, a, b)) < 0.1


def test_gibbs_snapshots_start_at_v0_and_follow_the_chain():
    torch.manual_seed(2)
    W, a, b = (t.float() for t in _rbm(6, 3, 9))
    v0 = torch.bernoulli(torch.full((5, 6), 0.5))
    snaps = ch.gibbs_snapshots(W, a, b, v0, [0, 1, 4])
    assert snaps.shape == (3, 5, 6)
    torch.testing.assert_close(snaps[0], v0)
    assert ((snaps[1:] > 0) & (snaps[1:] < 1)).all()          # probabilities p(v | h), not samples


# ---------------------------------------------------------------- baselines, evaluation, training

def test_mixture_log_likelihood_and_em():
    """The one-product form of the mixture likelihood against explicit logs; EM never lowers
    the training log-likelihood (catches an E step on the wrong axis)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((300, 10), 0.4), generator=gen)
    mu = torch.rand(4, 10, generator=gen) * 0.8 + 0.1
    log_pi = torch.log_softmax(torch.randn(4, generator=gen), 0)
    explicit = torch.logsumexp(log_pi + torch.stack(
        [(x * mu[k].log() + (1 - x) * (1 - mu[k]).log()).sum(1) for k in range(4)], 1), 1)
    torch.testing.assert_close(ch.mixture_log_lik(x, log_pi, mu), explicit)
    lls = []
    for iters in range(1, 6):
        fit = ch.fit_bernoulli_mixture(x, k=3, iters=iters, generator=torch.Generator().manual_seed(0))
        lls.append(ch.mixture_log_lik(x, *fit).mean().item())
    assert all(b >= a - 1e-4 for a, b in zip(lls, lls[1:])), lls
    p = torch.full((10,), 0.4)
    torch.testing.assert_close(ch.base_rate_log_lik(x, p),
                               torch.distributions.Bernoulli(p).log_prob(x).sum(1))


def _prototype_data(n, seed):
    """Two 16-pixel prototypes with 5% of the pixels flipped."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1.0] * 8 + [0.0] * 8, [0.0] * 8 + [1.0] * 8])
    x = protos[torch.randint(0, 2, (n,), generator=gen)]
    noise = torch.bernoulli(torch.full_like(x, 0.05), generator=gen)
    return (x + noise) % 2


def test_train_rbm_learns_and_returns_the_average(capsys):
    """PCD on two noisy prototypes: the exact validation log-likelihood must end far above the
    base-rate model (11.1 nats), which a flipped update sign or a CD/PCD mix-up would prevent."""
    x_train, x_val = _prototype_data(2_000, 0), _prototype_data(500, 1)
    base_rate = (x_train.sum(0) + 1) / (len(x_train) + 2)
    torch.manual_seed(0)
    rbm = ch.RBM(n_visible=16, n_hidden=4, base_rate=base_rate)
    avg, history = ch.train_rbm(rbm, x_train, x_val, method="pcd", epochs=3, batch_size=50, lr=0.02,
                                ema=0.9)
    base = ch.base_rate_log_lik(x_val, base_rate).mean().item()
    assert history["epoch"] == [1, 2, 3]
    assert max(history["val_ll"]) > base + 5, (history["val_ll"], base)
    # the kept model is the best epoch's average, not the last iterate
    assert max(history["val_ll"]) == pytest.approx(ch.evaluate_rbm(avg, x_val)["ll"], abs=1e-4)
    assert not torch.equal(avg.W, rbm.W)
    assert capsys.readouterr().out.count("PCD-1, H=4 epoch") == 3


def test_train_rbm_cd_k_without_average_or_exact_likelihood():
    """ema = 0 and exact=False return the last iterate itself (no likelihood recorded); CD-k
    with k = 2 improves the likelihood too."""
    x_train, x_val = _prototype_data(2_000, 2), _prototype_data(300, 3)
    base_rate = (x_train.sum(0) + 1) / (len(x_train) + 2)
    torch.manual_seed(1)
    rbm = ch.RBM(n_visible=16, n_hidden=4, base_rate=base_rate)
    before = ch.evaluate_rbm(rbm, x_val)["ll"]
    avg, history = ch.train_rbm(rbm, x_train, x_val, method="cd", k=2, epochs=3, batch_size=50,
                                lr=0.02, ema=0.0, exact=False)
    torch.testing.assert_close(avg.W, rbm.W)
    assert all(math.isnan(ll) for ll in history["val_ll"]) and len(history["val_rec"]) == 3
    assert ch.evaluate_rbm(avg, x_val)["ll"] > before + 3


def test_rbm_module_initialization():
    """Visible biases start at the base rates' log-odds, hidden biases at 0 (Hinton's guide)."""
    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.5, 0.9])
    rbm = ch.RBM(n_visible=3, n_hidden=2, base_rate=p)
    torch.testing.assert_close(torch.sigmoid(rbm.a.detach()), p)
    torch.testing.assert_close(rbm.b.detach(), torch.zeros(2))
    assert rbm.W.std() < 0.05 and ch.RBM(n_visible=3, n_hidden=2).a.abs().max() == 0
    assert sum(p.numel() for p in ch.RBM().parameters()) == 784 * 16 + 784 + 16


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_raise_with_the_expected_shapes():
    W, a, b = _rbm(5, 3, 0)
    v = _binary(4, 5, 0)
    with pytest.raises(ValueError, match=r"a must be \(3,\)"):
        ch.free_energy(v, W.T, a, b)                            # W transposed
    with pytest.raises(ValueError, match=r"b must be \(3,\)"):
        ch.free_energy(v, W, a, a)
    with pytest.raises(ValueError, match=r"v must be \(B, 5\); got \(5,\)"):
        ch.free_energy(v[0], W, a, b)
    with pytest.raises(ValueError, match=r"h must be \(B, 3\)"):
        ch.p_v_given_h(v, W, a)
    with pytest.raises(ValueError, match=r"W must be \(D, H\)"):
        ch.log_partition(W[0], a, b)
    with pytest.raises(ValueError, match="H must be <= 24"):
        ch.log_partition(torch.zeros(2, 30), torch.zeros(2), torch.zeros(30))
    with pytest.raises(ValueError, match="n <= 24"):
        ch.all_binary(25)
    with pytest.raises(ValueError, match=r"flip must be \(4,\)"):
        ch.pseudo_log_likelihood(v, W, a, b, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"a_base must be \(5,\)"):
        ch.ais_log_partition(W, a, b, a_base=b, n_runs=2, n_betas=2)
    with pytest.raises(ValueError, match=r"v_model must be \(B, 5\)"):
        ch.rbm_gradient(v, v[:, :4], W, a, b)
    with pytest.raises(ValueError, match="method must be"):
        ch.train_rbm(ch.RBM(n_visible=5, n_hidden=3), v.float(), v.float(), method="pc",
                     epochs=1, batch_size=2, lr=0.1)


# ---------------------------------------------------------------- exercises

def solved_log_z_visible(W, a, b):
    V = ch.all_binary(W.shape[0], dtype=W.dtype, device=W.device)
    return torch.logsumexp(-ch.free_energy(V, W, a, b), 0)


def solved_full_pseudo_ll(v, W, a, b):
    f_v = ch.free_energy(v, W, a, b)
    total = torch.zeros_like(f_v)
    for i in range(v.shape[1]):
        v_flip = v.clone()
        v_flip[:, i] = 1 - v_flip[:, i]
        total -= F.softplus(f_v - ch.free_energy(v_flip, W, a, b))
    return total


def test_exercise_log_z_visible_stub_solution_and_wrong_answers(capsys):
    assert check("Exercise 2", ch.log_z_visible, ch.test_log_z_visible) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_log_z_visible, ch.test_log_z_visible) is True
    with pytest.raises(AssertionError, match="log Z should be"):       # the hidden units forgotten
        check("Exercise 2", lambda W, a, b: torch.logsumexp(ch.all_binary(W.shape[0], **F64) @ a, 0),
              ch.test_log_z_visible)
    with pytest.raises(AssertionError, match="log Z should be"):       # a sum of exp instead of log
        check("Exercise 2", lambda W, a, b: solved_log_z_visible(W, a, b).exp(), ch.test_log_z_visible)


def test_exercise_full_pseudo_ll_stub_solution_and_wrong_answers(capsys):
    assert check("Exercise 3", ch.full_pseudo_ll, ch.test_full_pseudo_ll) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_full_pseudo_ll, ch.test_full_pseudo_ll) is True

    def one_random_flip(v, W, a, b):                                   # sklearn's estimate
        flips = torch.from_numpy(np.random.RandomState(0).randint(0, v.shape[1], len(v)))
        return ch.pseudo_log_likelihood(v, W, a, b, flips)

    with pytest.raises(AssertionError, match="brute-force conditionals"):
        check("Exercise 3", one_random_flip, ch.test_full_pseudo_ll)
    with pytest.raises(AssertionError, match="brute-force conditionals"):  # sigma of -(F~ - F)
        check("Exercise 3", lambda v, W, a, b: solved_full_pseudo_ll(1 - v, W, a, b), ch.test_full_pseudo_ll)
    with pytest.raises(AssertionError, match="expected shape"):
        check("Exercise 3", lambda v, W, a, b: solved_full_pseudo_ll(v, W, a, b)[:, None],
              ch.test_full_pseudo_ll)
