"""Chapter 25 checks, on the chapter's own definitions: the one-class SVM dual solver against
scikit-learn's OneClassSVM (libsvm) over a grid of nu, gamma and data sets (decision signs,
dual objective, offset, the nu-property), the capped-simplex projection, the ROC AUC and ROC
curve against scikit-learn, the Deep SVDD network's missing biases, bad inputs, and the two
coding exercises."""

import numpy as np
import pytest
import torch
from chapters import load_chapter
from sklearn.datasets import make_moons
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.svm import OneClassSVM

from nnbook.exercises import check

ch = load_chapter("25")
F64 = dict(dtype=torch.float64)


def _data(name, seed):
    gen = torch.Generator().manual_seed(seed)
    if name == "toy":
        return ch.toy_data(200, gen)
    if name == "moons":
        return torch.tensor(make_moons(200, noise=0.1, random_state=seed)[0], dtype=torch.float32)
    return torch.randn(150, 5, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])


# ---------------------------------------------------------------- the solver against libsvm

@pytest.mark.parametrize("data", ["toy", "moons", "gauss5d"])
@pytest.mark.parametrize("nu", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("gamma", [0.1, 1.0])
def test_solver_matches_sklearn(data, nu, gamma):
    """Signs on fresh points, the dual objective, rho and the training-outlier fraction. Catches
    a wrong cap (1/n instead of 1/(nu n)), rho from the wrong points, a step that overshoots,
    or a projection that leaves the constraint set."""
    X = _data(data, 0)
    X_new = _data(data, 1) * 1.3
    n = len(X)
    K = ch.rbf_kernel(X, X, gamma)
    fit = ch.ocsvm_dual(K, nu)
    sk = OneClassSVM(nu=nu, gamma=gamma).fit(X.numpy())
    f_new = ch.decision_function(ch.rbf_kernel(X_new, X, gamma), fit)
    agree = ((f_new > 0).numpy() == (sk.decision_function(X_new.numpy()) > 0)).mean()
    assert agree >= 0.99, f"sign agreement {agree:.3f}"
    K64 = ch.rbf_kernel(X.double(), X.double(), gamma)
    D_ours = ch.dual_objective(K64, fit.alpha[0].double()).item()
    D_sk = ch.dual_objective(K64, ch.sklearn_alpha(sk, n, nu)).item()
    assert D_ours <= D_sk * (1 + 2e-4), (D_ours, D_sk)      # never clearly worse than libsvm
    assert D_ours >= D_sk * (1 - 2e-4), (D_ours, D_sk)      # and libsvm agrees it is optimal
    assert fit.rho.item() == pytest.approx(sk.offset_[0] / (nu * n), rel=2e-3, abs=1e-5)
    assert fit.gap.item() <= 1e-3
    f_train = ch.decision_function(K, fit)
    free = (fit.alpha[0] > 0) & (fit.alpha[0] < 1 / (nu * n))      # on the boundary: f = 0
    same = (f_train > 0).numpy() == (sk.predict(X.numpy()) > 0)
    assert same[~free.numpy()].mean() >= 0.99
    assert int((f_train < -1e-3 / (nu * n)).sum()) <= nu * n + 1e-9     # (25.8)


@pytest.mark.parametrize("gamma", [0.2, 2.0])
def test_nu_property_both_bounds_in_float64(gamma):
    """(25.8) for a batch of nu in one call: outliers <= nu <= support vectors, with outliers
    counted beyond the solver's tolerance. Catches a batch whose caps got mixed up."""
    X = _data("moons", 3).double()
    nus = torch.tensor([0.05, 0.3, 0.9], **F64)
    K = ch.rbf_kernel(X, X, gamma).expand(len(nus), -1, -1)
    fit = ch.ocsvm_dual(K, nus, tol=1e-5)
    n = X.shape[0]
    f = ch.decision_function(K, fit)                                   # (B, n)
    outliers = (f < -1e-5).double().mean(1)
    svs = (fit.alpha > 0).double().mean(1)
    assert (outliers <= nus + 1e-12).all(), outliers
    assert (svs >= nus - 1e-12).all(), svs
    torch.testing.assert_close(fit.alpha.sum(1), torch.ones(len(nus), **F64))
    assert (fit.alpha <= 1 / (nus[:, None] * n) + 1e-15).all()
    # and each batch entry equals its own single solve
    single = ch.ocsvm_dual(K[1], 0.3, tol=1e-5)
    torch.testing.assert_close(single.rho, fit.rho[1:2], rtol=1e-4, atol=1e-7)


def test_nu_one_gives_uniform_weights_and_parzen_window():
    """nu = 1 forces alpha = 1/n, so f is the kernel mean minus rho (exercise 1b)."""
    X = _data("toy", 5).double()
    K = ch.rbf_kernel(X, X, 0.7)
    fit = ch.ocsvm_dual(K, 1.0)
    torch.testing.assert_close(fit.alpha[0], torch.full((len(X),), 1 / len(X), **F64))
    torch.testing.assert_close(ch.decision_function(K, fit), K.mean(1) - fit.rho[0])


def test_hand_example_and_no_free_support_vector():
    """The intuition example; and nu = 2/3 on the same points, where no weight is free (both
    sit at the cap 1/2), so rho must come from the bracket of (25.6): between 3 and 4.5."""
    x = torch.tensor([[1.0], [2.0], [3.0]], **F64)
    K = ch.linear_kernel(x, x)
    fit = ch.ocsvm_dual(K, 0.5, tol=1e-10)
    torch.testing.assert_close(fit.alpha[0], torch.tensor([2 / 3, 1 / 3, 0.0], **F64))
    assert fit.rho.item() == pytest.approx(8 / 3)
    fit = ch.ocsvm_dual(K, 2 / 3, tol=1e-10)
    torch.testing.assert_close(fit.alpha[0], torch.tensor([0.5, 0.5, 0.0], **F64))
    assert 3 - 1e-9 <= fit.rho.item() <= 4.5 + 1e-9
    assert fit.rho.item() == pytest.approx(3.75)


# ---------------------------------------------------------------- the projection (25.12)

@pytest.mark.parametrize("seed, cap_factor", [(0, 1.0), (1, 1.2), (2, 3.0), (3, 50.0)])
def test_projection_is_the_closest_feasible_point(seed, cap_factor):
    """Feasible, of the form clip(v - tau, 0, C), and closer to v than random feasible points
    (catches an off-by-one in the kink search or the wrong interpolation slope)."""
    gen = torch.Generator().manual_seed(seed)
    B, n = 4, 40
    v = torch.randn(B, n, generator=gen, **F64) * 0.3
    C = torch.full((B, 1), cap_factor / n, **F64)
    a = ch.project_capped_simplex(v, C)
    torch.testing.assert_close(a.sum(1), torch.ones(B, **F64))
    assert (a >= 0).all() and (a <= C + 1e-15).all()
    for b in range(B):                           # a single tau explains every coordinate
        free = (a[b] > 0) & (a[b] < C[b])
        if free.any():
            tau = (v[b] - a[b])[free]
            assert tau.max() - tau.min() < 1e-12
            torch.testing.assert_close(a[b], (v[b] - tau[0]).clamp(0, C[b].item()))
    for _ in range(20):                          # random feasible points are farther away
        w = ch.project_capped_simplex(torch.randn(B, n, generator=gen, **F64), C)
        assert ((w - v).norm(dim=1) >= (a - v).norm(dim=1) - 1e-12).all()


def test_projection_keeps_feasible_points():
    C = torch.full((1, 5), 0.3, **F64)[:, :1]
    a = torch.tensor([[0.3, 0.3, 0.2, 0.2, 0.0]], **F64)
    torch.testing.assert_close(ch.project_capped_simplex(a, C), a)


# ---------------------------------------------------------------- ROC AUC and the ROC curve

@pytest.mark.parametrize("levels", [None, 3, 10])
def test_roc_auc_and_curve_match_sklearn(levels):
    """With and without ties: catches ranks instead of midranks, or a curve that splits a tie."""
    gen = torch.Generator().manual_seed(levels or 0)
    s = torch.randn(500, generator=gen)
    y = (torch.rand(500, generator=gen) < 0.4) ^ (s > 0.5)
    if levels:
        s = (s * levels).round()
    assert ch.roc_auc(s, y) == pytest.approx(roc_auc_score(y.numpy(), s.numpy()), abs=1e-12)
    fpr, tpr = ch.roc_curve(s, y)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y.numpy(), s.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr, atol=1e-12)


def test_auc_extremes():
    y = torch.tensor([1, 1, 0, 0])
    assert ch.roc_auc(torch.tensor([4.0, 3, 2, 1]), y) == 1.0
    assert ch.roc_auc(torch.tensor([1.0, 2, 3, 4]), y) == 0.0
    assert ch.roc_auc(torch.ones(4), y) == 0.5


# ---------------------------------------------------------------- Deep SVDD's network

def test_encoder_has_no_bias_and_collapse_needs_one():
    """Rule 2 of section 2: no bias parameter anywhere in the Deep SVDD network, so zero
    weights give the output 0, not c; with bias=True, zero weights and bias c give c."""
    enc = ch.Encoder(d_code=8)
    assert not [n for n, _ in enc.named_parameters() if "bias" in n]
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        enc.fc.weight.zero_()
    enc.eval()
    assert torch.equal(enc(x), torch.zeros(6, 8))
    biased = ch.Encoder(d_code=8, bias=True).eval()
    c = torch.linspace(-1, 1, 8)
    with torch.no_grad():
        biased.fc.weight.zero_()
        biased.fc.bias.copy_(c)
    assert torch.equal(ch.svdd_scores(biased, c, x), torch.zeros(6))


def test_autoencoder_shapes_and_centre_eps():
    enc, dec = ch.Encoder(d_code=4), ch.Decoder(d_code=4)
    x = torch.rand(3, 1, 28, 28)
    assert dec(enc(x)).shape == (3, 1, 28, 28)
    with torch.no_grad():
        enc.fc.weight.mul_(1e-6)                       # codes near 0
    c = ch.svdd_centre(enc, x, 0.1)
    assert (c.abs() == 0.1).all()


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"X must be \(N, D\); got \(5,\)"):
        ch.rbf_kernel(torch.zeros(5), torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match=r"Y must be \(M, 2\); got \(3, 4\)"):
        ch.sq_distances(torch.zeros(5, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="gamma must be > 0; got 0"):
        ch.rbf_kernel(torch.zeros(2, 2), torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match=r"K must be \(n, n\) or \(B, n, n\); got \(3, 4\)"):
        ch.ocsvm_dual(torch.zeros(3, 4), 0.5)
    with pytest.raises(ValueError, match=r"nu must be in \(0, 1\]"):
        ch.ocsvm_dual(torch.eye(3), 1.5)
    with pytest.raises(ValueError, match=r"scores and labels must both be \(N,\)"):
        ch.roc_auc(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="both classes present"):
        ch.roc_auc(torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 28, 28\)"):
        ch.Encoder()(torch.zeros(2, 784))
    with pytest.raises(ValueError, match=r"v must be \(B, n\) and C \(B, 1\)"):
        ch.project_capped_simplex(torch.zeros(2, 3), torch.zeros(3, 1))


# ---------------------------------------------------------------- exercises 2 and 3

def solved_auc_by_pairs(s_pos, s_neg):
    diff = s_pos[:, None] - s_neg[None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()


def solved_primal_objective(K, alpha, rho, nu):
    g = K @ alpha
    xi = (rho - g).clamp_min(0)
    return 0.5 * alpha @ g + xi.sum() / (nu * len(alpha)) - rho


def test_exercise_auc_by_pairs(capsys):
    name = "Exercise 2"
    assert check(name, ch.auc_by_pairs, ch.test_auc_by_pairs) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_auc_by_pairs, ch.test_auc_by_pairs) is True
    with pytest.raises(AssertionError, match="1 tie"):               # ties counted as 0
        check(name, lambda p, n: ((p[:, None] > n[None, :]).double()).mean().item(),
              ch.test_auc_by_pairs)


def test_exercise_primal_objective(capsys):
    name = "Exercise 3"
    assert check(name, ch.primal_objective, ch.test_primal_objective) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_primal_objective, ch.test_primal_objective) is True
    with pytest.raises(AssertionError, match="-8/9"):                # slack weight 1/n
        check(name, lambda K, a, r, nu: solved_primal_objective(K, a, r, 1.0),
              ch.test_primal_objective)
    with pytest.raises(AssertionError, match="-8/9"):                # slacks forgotten
        check(name, lambda K, a, r, nu: 0.5 * a @ K @ a - r, ch.test_primal_objective)
