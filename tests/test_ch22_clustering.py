"""Chapter 22 checks, on the chapter's own definitions: k-means (Lloyd, k-means++) against
scikit-learn over a grid of data and starts, fuzzy c-means against scikit-fuzzy, the Gaussian
mixture's densities and EM against torch.distributions and scikit-learn, the sigma -> 0 limit,
the helpers, bad inputs, and the two coding exercises."""

import warnings

import numpy as np
import pytest
import skfuzzy
import torch
from chapters import load_chapter
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, load_iris, make_blobs
from sklearn.mixture import GaussianMixture

from nnbook.exercises import check

ch = load_chapter("22")
F64 = dict(dtype=torch.float64)


def _blobs(seed, n=300, d=3, k=4):
    x, _ = make_blobs(n_samples=n, n_features=d, centers=k, cluster_std=1.5, random_state=seed)
    return torch.tensor(x)


# ---------------------------------------------------------------- distances and the two steps

def test_sq_distances_and_assign_match_cdist():
    """Catches a sign or transpose slip in the expansion ||x||^2 - 2 x.c + ||c||^2."""
    gen = torch.Generator().manual_seed(0)
    X, C = torch.randn(200, 7, generator=gen, **F64), torch.randn(9, 7, generator=gen, **F64)
    ref = torch.cdist(X, C) ** 2
    torch.testing.assert_close(ch.sq_distances(X, C), ref)
    labels, d2 = ch.assign(X, C)
    assert torch.equal(labels, ref.argmin(1))
    torch.testing.assert_close(d2, ref.min(1).values)
    assert (ch.sq_distances(C, C).diagonal() >= 0).all()     # rounding never goes negative


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(5), r"X must be \(N, D\); got \(5,\)"),
    ([[1.0, 2.0]], r"X must be \(N, D\); got list"),
])
def test_bad_points_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        ch.sq_distances(bad, torch.zeros(2, 2))


def test_centres_of_the_wrong_width_are_rejected():
    X = torch.zeros(10, 3)
    with pytest.raises(ValueError, match=r"C must be \(K, 3\); got \(2, 4\)"):
        ch.lloyd(X, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"k must be in \[1, N=10\]; got 11"):
        ch.kmeans_pp(X, 11, gen=torch.Generator())
    with pytest.raises(ValueError, match=r"U must be \(10, c\); got \(9, 2\)"):
        ch.fuzzy_cmeans(X, torch.ones(9, 2))
    with pytest.raises(ValueError, match="fuzzifier m must be > 1; got 1"):
        ch.fcm_memberships(torch.ones(3, 2), 1)


def test_update_centres_means_and_empty_cluster():
    """The mean of each cluster; a cluster with no points keeps its old centre (no NaN)."""
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    C = torch.tensor([[1.0, 1.0], [9.0, 9.0], [-5.0, -5.0]])
    new = ch.update_centres(X, torch.tensor([0, 0, 1]), C)
    torch.testing.assert_close(new, torch.tensor([[1.0, 0.0], [10.0, 10.0], [-5.0, -5.0]]))


# ---------------------------------------------------------------- Lloyd against scikit-learn

@pytest.mark.parametrize("seed, k", [(0, 2), (1, 4), (2, 6), (3, 8)])
def test_lloyd_follows_sklearn_from_the_same_centres(seed, k):
    """Same start, same path: catches a wrong update, a wrong stopping rule, or a missing
    final assignment (inertia computed with stale labels)."""
    X = _blobs(seed)
    C0 = ch.kmeans_pp(X, k, gen=torch.Generator().manual_seed(seed))
    ours = ch.lloyd(X, C0)
    sk = KMeans(n_clusters=k, init=C0.numpy(), n_init=1).fit(X.numpy())
    assert ours.history[-1] == pytest.approx(sk.inertia_, rel=1e-9)
    torch.testing.assert_close(ours.centres, torch.tensor(sk.cluster_centers_))
    assert torch.equal(ours.labels, torch.tensor(sk.labels_))


def test_lloyd_never_increases_the_objective_and_inertia_is_j():
    X = torch.tensor(load_digits().data)
    run = ch.lloyd(X, X[:10].clone())
    assert all(b <= a + 1e-6 for a, b in zip(run.history, run.history[1:], strict=False))
    J = ((X - run.centres[run.labels]) ** 2).sum().item()
    assert run.history[-1] == pytest.approx(J, rel=1e-12)


def test_kmeans_restarts_reach_sklearns_best_on_digits():
    X = torch.tensor(load_digits().data)
    ours = ch.kmeans(X, 10, n_init=10, gen=torch.Generator().manual_seed(5)).history[-1]
    sk = KMeans(n_clusters=10, n_init=10, random_state=5).fit(X.numpy()).inertia_
    assert abs(ours - sk) / sk < 0.01


# ---------------------------------------------------------------- k-means++ (22.4)

def test_kmeans_pp_draws_with_d_squared_probabilities():
    """On the rectangle with first seed a: P(b) = 4/80, P(c) = 36/80, P(d) = 40/80. A
    uniform second draw (1/3 each) or D instead of D^2 (2, 6, 6.3) fails this."""
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 0
    for _ in range(3000):
        seeds = ch.kmeans_pp(ch.RECTANGLE, 2, gen=gen)
        first = (ch.RECTANGLE == seeds[0]).all(1).nonzero()[0, 0]
        if first == 0:
            second = (ch.RECTANGLE == seeds[1]).all(1).nonzero()[0, 0]
            counts[second] += 1
            n += 1
    expected = torch.tensor([0.0, 4.0, 36.0, 40.0]) / 80
    assert counts[0] == 0, "a point already chosen has D = 0 and must never be drawn"
    se = (expected * (1 - expected) / n).sqrt()
    assert ((counts / n - expected).abs() <= 4 * se + 1e-9).all(), counts / n


def test_kmeans_pp_picks_every_distinct_point_when_k_equals_their_number():
    """Duplicates have D = 0 once their twin is chosen: k distinct seeds from k distinct points."""
    X = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 0.0]] * 5 + [[0.0, 3.0]] * 5)
    for seed in range(20):
        seeds = ch.kmeans_pp(X, 3, gen=torch.Generator().manual_seed(seed))
        assert len(torch.unique(seeds, dim=0)) == 3


def test_rectangle_trap_and_exercise_numbers():
    trap = torch.tensor([[3.0, 0.0], [3.0, 2.0]])
    run = ch.lloyd(ch.RECTANGLE, trap)
    assert run.history == [36.0, 36.0] and torch.equal(run.centres, trap)
    z, new, J = ch.one_lloyd_step(ch.RECTANGLE, ch.RECTANGLE[[0, 2]])
    assert z.tolist() == [0, 0, 1, 1] and J == 8.0   # seeds a, c: b and d at 4
    torch.testing.assert_close(new, torch.tensor([[0.0, 1.0], [6.0, 1.0]]))


# ---------------------------------------------------------------- fuzzy c-means

@pytest.mark.parametrize("m, c, seed", [(1.5, 2, 0), (2.0, 3, 1), (3.0, 4, 2), (2.0, 5, 3)])
def test_fuzzy_cmeans_follows_skfuzzy(m, c, seed):
    """The whole J_m history, the centres and the memberships: catches u^m forgotten in
    (22.7), the wrong power in (22.6), or J_m recorded at the wrong point of the loop."""
    X = _blobs(seed, n=200, d=2, k=c)
    U0 = torch.rand(len(X), c, generator=torch.Generator().manual_seed(seed), **F64)
    U0 = U0 / U0.sum(1, keepdim=True)
    V, U, hist = ch.fuzzy_cmeans(X, U0, m=m, tol=1e-6, max_iter=500)
    cntr, u, _, _, jm, p, fpc = skfuzzy.cmeans(X.numpy().T, c, m, error=1e-6, maxiter=500,
                                               init=U0.numpy().T)
    assert len(hist) == p
    np.testing.assert_allclose(hist, jm, rtol=1e-9)
    torch.testing.assert_close(V, torch.tensor(cntr))
    torch.testing.assert_close(U, torch.tensor(u).T)
    assert ch.partition_coefficient(U) == pytest.approx(fpc, rel=1e-9)


def test_fcm_on_iris_gives_the_classic_objective():
    X = torch.tensor(load_iris().data)
    U0 = torch.rand(150, 3, generator=torch.Generator().manual_seed(0), **F64)
    _, U, hist = ch.fuzzy_cmeans(X, U0, m=2.0, max_iter=1000)
    assert hist[-1] == pytest.approx(60.5057, abs=1e-3)
    assert 1 / 3 <= ch.partition_coefficient(U) <= 1


def test_fcm_memberships_limits_and_a_point_on_a_centre():
    d2 = torch.tensor([[1.0, 4.0, 9.0], [0.0, 2.0, 3.0]], **F64)
    U = ch.fcm_memberships(d2, 2.0)
    torch.testing.assert_close(U.sum(1), torch.ones(2, **F64))
    torch.testing.assert_close(U[0], torch.tensor([36.0, 9.0, 4.0], **F64) / 49)
    torch.testing.assert_close(U[1], torch.tensor([1.0, 0.0, 0.0], **F64), atol=1e-12, rtol=0)
    hard = ch.fcm_memberships(d2[:1], 1.001)                  # m -> 1: nearest centre
    assert hard[0, 0] > 0.999 and torch.isfinite(hard).all()
    flat = ch.fcm_memberships(d2[:1], 1000.0)                 # m -> infinity: uniform
    torch.testing.assert_close(flat[0], torch.full((3,), 1 / 3, **F64), atol=1e-2, rtol=0)


# ---------------------------------------------------------------- Gaussian mixtures

def test_log_gaussians_match_torch_distributions():
    """Catches a missing log-det term, a transposed Cholesky factor or a 2*pi slip."""
    gen = torch.Generator().manual_seed(0)
    K, D = 3, 4
    A = torch.randn(K, D, D, generator=gen, **F64)
    covs = A @ A.transpose(1, 2) + 0.5 * torch.eye(D, **F64)
    means = torch.randn(K, D, generator=gen, **F64)
    X = torch.randn(50, D, generator=gen, **F64) * 2
    ref = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    torch.testing.assert_close(ch.log_gaussians(X, means, covs), ref.log_prob(X[:, None]))


def test_gmm_shapes_are_checked():
    X = torch.zeros(5, 2, **F64)
    g = ch.GMM(torch.ones(2, **F64) / 2, torch.zeros(2, 3, **F64),
               torch.eye(2, **F64).expand(2, 2, 2))
    with pytest.raises(ValueError, match=r"GMM means must be \(2, 2\); got \(2, 3\)"):
        ch.e_step(X, g)


@pytest.mark.parametrize("seed, k", [(0, 2), (1, 3), (2, 5)])
def test_em_follows_sklearn_from_the_same_start(seed, k):
    """Same weights, means and precisions: the same fitted mixture and score. Catches
    responsibilities from stale parameters, N instead of N_k, or reg_covar forgotten."""
    X = _blobs(seed, n=400, d=3, k=k)
    gen = torch.Generator().manual_seed(seed)
    means0 = X[torch.randperm(len(X), generator=gen)[:k]].clone()
    covs0 = torch.cov(X.T).expand(k, 3, 3).clone()
    g0 = ch.GMM(torch.full((k,), 1 / k, **F64), means0, covs0)
    g, hist = ch.gmm_em(X, g0, reg_covar=1e-6, tol=1e-6, max_iter=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = GaussianMixture(k, reg_covar=1e-6, tol=1e-6, max_iter=300,
                             weights_init=g0.weights.numpy(), means_init=means0.numpy(),
                             precisions_init=torch.linalg.inv(covs0).numpy()).fit(X.numpy())
    assert len(hist) == sk.n_iter_
    assert ch.e_step(X, g)[0].mean().item() == pytest.approx(sk.score(X.numpy()), rel=1e-9)
    torch.testing.assert_close(g.weights, torch.tensor(sk.weights_))
    torch.testing.assert_close(g.means, torch.tensor(sk.means_))
    assert np.all(np.diff(hist) >= -1e-10), "EM's log-likelihood never decreases"


def test_responsibilities_are_posteriors():
    X = _blobs(4, n=100, d=2, k=3)
    g = ch.m_step(X, torch.softmax(torch.randn(100, 3, generator=torch.Generator().manual_seed(0),
                                                **F64), 1))
    log_px, R = ch.e_step(X, g)
    torch.testing.assert_close(R.sum(1), torch.ones(100, **F64))
    joint = g.weights * ch.log_gaussians(X, g.means, g.covs).exp()
    torch.testing.assert_close(R, joint / joint.sum(1, keepdim=True))
    torch.testing.assert_close(log_px, joint.sum(1).log())


def test_soft_kmeans_becomes_lloyd_as_sigma_shrinks_and_is_soft_when_large():
    X = _blobs(5, n=150, d=2, k=3)
    C0 = X[:3].clone() + 0.01
    hard = ch.lloyd(X, C0, max_iter=10, tol=0)
    C = C0.clone()
    for _ in range(10):
        C, R = ch.soft_kmeans_step(X, C, 1e-3)
    torch.testing.assert_close(C, hard.centres)
    _, R_big = ch.soft_kmeans_step(X, C0, 1e3)
    torch.testing.assert_close(R_big, torch.full_like(R_big, 1 / 3), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- helpers

def test_cluster_names_purity_and_expected_best_of():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    y = torch.tensor([3, 3, 5, 1, 1, 7])
    assert ch.cluster_names(labels, y, 4).tolist() == [3, 1, 7, 0]   # empty cluster 3 -> 0
    assert ch.purity(labels, y, 4) == pytest.approx(5 / 6)
    values = torch.tensor([4.0, 1.0, 3.0, 2.0])
    assert ch.expected_best_of(values, 1) == pytest.approx(2.5)      # the mean
    assert ch.expected_best_of(values, 4) == pytest.approx(1.0)      # the minimum
    pairs = [min(a, b) for i, a in enumerate(values.tolist()) for b in values.tolist()[i + 1:]]
    assert ch.expected_best_of(values, 2) == pytest.approx(sum(pairs) / len(pairs))


def test_pca_basis_is_orthonormal_and_ordered():
    X = torch.tensor(load_digits().data)
    mean, W = ch.pca_basis(X, 5)
    torch.testing.assert_close(W.T @ W, torch.eye(5, **F64))
    variances = ((X - mean) @ W).var(0)
    assert (variances[:-1] >= variances[1:]).all()
    top = torch.linalg.eigvalsh(torch.cov(X.T, correction=0)).flip(0)[:5]
    torch.testing.assert_close(variances * (len(X) - 1) / len(X), top)


def test_seconds_per_iter_subtracts_the_set_up_cost():
    calls = []

    def fake_fit(n):
        calls.append(n)

    assert ch.seconds_per_iter(fake_fit, 3) < 0.01
    assert calls == [1, 1, 4]


# ---------------------------------------------------------------- exercises 2 and 3

def solved_dsquared_probabilities(X, C):
    d2 = ((X[:, None] - C[None]) ** 2).sum(-1).min(1).values
    return d2 / d2.sum()


def solved_fcm_update(d2, m):
    ratios = d2[:, :, None] / d2[:, None, :]
    return 1 / (ratios ** (1 / (m - 1))).sum(-1)


def test_exercise_dsquared_probabilities(capsys):
    name = "Exercise 2"
    assert check(name, ch.dsquared_probabilities, ch.test_dsquared_probabilities) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_dsquared_probabilities, ch.test_dsquared_probabilities) is True
    with pytest.raises(AssertionError, match="with seed a"):     # D instead of D^2
        check(name, lambda X, C: solved_dsquared_probabilities(X, C).sqrt()
              / solved_dsquared_probabilities(X, C).sqrt().sum(),
              ch.test_dsquared_probabilities)
    with pytest.raises(AssertionError, match="NEAREST"):         # distance to the last seed only
        check(name, lambda X, C: solved_dsquared_probabilities(X, C[-1:]), ch.test_dsquared_probabilities)


def test_exercise_fcm_update(capsys):
    name = "Exercise 3"
    assert check(name, ch.fcm_update, ch.test_fcm_update) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_fcm_update, ch.test_fcm_update) is True
    with pytest.raises(AssertionError, match=r"u = \(0.8, 0.2\)"):  # power 2/(m-1) on d^2
        check(name, lambda d2, m: solved_fcm_update(d2 ** 2, m), ch.test_fcm_update)
    with pytest.raises(AssertionError, match="should be"):          # right only for m = 2
        check(name, lambda d2, m: solved_fcm_update(d2, 2.0), ch.test_fcm_update)

