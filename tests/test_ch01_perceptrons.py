"""Chapter 01 pushed further: the perceptron against scikit-learn on many separable sets, the
activations and their hand-derived derivatives against PyTorch far out on the real line, bad
inputs, and the exercises' checks.
"""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from sklearn.datasets import load_iris
from sklearn.linear_model import Perceptron

from nnbook.exercises import check

ch = load_chapter("01")


def separable_set(*, n, d, margin, seed):
    """n points in [-3, 3]^d labelled by a random hyperplane, none closer than `margin` to it.

    Returns X (n, d) and y (n,) in float64, and the unit normal u (d + 1,) of the hyperplane in
    the augmented space (x, 1): every point has y * u.(x, 1) >= margin.
    """
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=d)
    u = np.append(normal / np.linalg.norm(normal), rng.uniform(-1, 1))  # offset: |b| <= 1
    u /= np.linalg.norm(u)
    X = rng.uniform(-3, 3, size=(20 * n, d))
    score = np.c_[X, np.ones(len(X))] @ u
    far = np.abs(score) >= margin
    X, y = X[far][:n], np.sign(score[far][:n])
    assert len(X) == n and set(y) == {-1.0, 1.0}, "the generator must give both classes"
    return torch.tensor(X), torch.tensor(y), torch.tensor(u)


@functools.cache
def iris_pair(a, b):
    """Two iris species on all four features, labelled -1 (species a) and +1 (species b)."""
    iris = load_iris()
    keep = np.isin(iris.target, [a, b])
    y = np.where(iris.target[keep] == b, 1.0, -1.0)
    return torch.tensor(iris.data[keep]), torch.tensor(y)


SETS = {  # name: (X, y); all linearly separable
    "2-d, wide margin": separable_set(n=20, d=2, margin=0.3, seed=0)[:2],
    "2-d, narrow margin": separable_set(n=60, d=2, margin=0.05, seed=1)[:2],
    "3-d": separable_set(n=80, d=3, margin=0.2, seed=2)[:2],
    "10-d": separable_set(n=120, d=10, margin=0.1, seed=3)[:2],
    "iris setosa vs versicolor": iris_pair(0, 1),
    "iris setosa vs virginica": iris_pair(0, 2),
}


def sklearn_perceptron(X, y, *, epochs, lr=1.0):
    """scikit-learn's Perceptron set up as (1.2): same order, no penalty, a fixed epoch count."""
    ref = Perceptron(max_iter=epochs, tol=None, shuffle=False, eta0=lr, penalty=None)
    return ref.fit(X.numpy(), y.numpy())


@pytest.mark.parametrize("name", SETS)
def test_perceptron_equals_sklearn_and_separates_exactly(name):
    """Catches any deviation from (1.2): a wrong sign, a missed bias update, `<` for `<=`."""
    X, y = SETS[name]
    ours = ch.perceptron_fit(X, y, epochs=1000)
    assert ours.mistakes[-1] == 0, f"{name}: no epoch without mistakes in 1000"
    assert (ch.perceptron_predict(X, ours.w, ours.b) == y).all(), f"{name}: not separated"
    ref = sklearn_perceptron(X, y, epochs=len(ours.mistakes))
    torch.testing.assert_close(ours.w, torch.tensor(ref.coef_[0]), rtol=1e-9, atol=1e-9)
    assert ours.b == pytest.approx(ref.intercept_[0], rel=1e-9, abs=1e-9)
    assert len(ours.history) - 1 == sum(ours.mistakes), "one history entry per update"


@pytest.mark.parametrize("name", ["2-d, narrow margin", "iris setosa vs versicolor"])
def test_perceptron_makes_the_same_updates_epoch_by_epoch(name):
    """Equal weights after every epoch, not only at the end (an error that cancels out later
    would pass the end-to-end test)."""
    X, y = SETS[name]
    n_epochs = len(ch.perceptron_fit(X, y, epochs=1000).mistakes)
    for epochs in range(1, min(n_epochs, 6) + 1):
        ours = ch.perceptron_fit(X, y, epochs=epochs)
        ref = sklearn_perceptron(X, y, epochs=epochs)
        torch.testing.assert_close(ours.w, torch.tensor(ref.coef_[0]), rtol=1e-9, atol=1e-9)
        assert ours.b == pytest.approx(ref.intercept_[0], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_updates_stay_within_novikoffs_bound(seed):
    """(1.5): at most (R / gamma)^2 updates, with gamma the margin the data were built with."""
    margin = 0.05 + 0.05 * seed
    X, y, u = separable_set(n=100, d=2 + seed, margin=margin, seed=10 + seed)
    X_aug = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
    gamma = float((y * (X_aug @ u)).min())
    R = float(X_aug.norm(dim=1).max())
    updates = len(ch.perceptron_fit(X, y, epochs=1000).history) - 1
    assert gamma >= margin and 0 < updates <= (R / gamma) ** 2


def test_learning_rate_only_rescales_the_weights():
    """Exercise 1's claim: from zero, eta scales w and b and changes no prediction. Catches a
    learning rate applied to w but not to b."""
    X, y = SETS["3-d"]
    one, small = ch.perceptron_fit(X, y), ch.perceptron_fit(X, y, lr=0.25)
    assert small.mistakes == one.mistakes
    torch.testing.assert_close(small.w, 0.25 * one.w)
    assert small.b == pytest.approx(0.25 * one.b)
    ref = sklearn_perceptron(X, y, epochs=len(small.mistakes), lr=0.25)
    torch.testing.assert_close(small.w, torch.tensor(ref.coef_[0]), rtol=1e-9, atol=1e-9)


def test_xor_never_settles_and_cycles_with_period_four():
    """The figure's claim: on XOR every epoch has mistakes and the weights repeat every 4
    updates."""
    X, y = ch.X_bool.double(), torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    run = ch.perceptron_fit(X, y, epochs=30)
    assert len(run.mistakes) == 30 and min(run.mistakes) > 0
    for k in range(len(run.history) - 4):
        (w_a, b_a), (w_b, b_b) = run.history[k], run.history[k + 4]
        assert torch.equal(w_a, w_b) and b_a == b_b, f"update {k} and {k + 4} differ"


def test_predict_agrees_with_sklearn_on_and_off_the_boundary():
    """A point exactly on the line counts as -1, as in scikit-learn (catches `>=` for `>`)."""
    X, y = SETS["2-d, wide margin"]
    ref = sklearn_perceptron(X, y, epochs=1)
    ref.coef_, ref.intercept_ = np.array([[1.0, -1.0]]), np.array([0.5])
    grid = torch.cartesian_prod(*[torch.arange(-2.0, 2.5, 0.5, dtype=torch.float64)] * 2)
    ours = ch.perceptron_predict(grid, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.5)
    assert (grid @ torch.tensor([1.0, -1.0], dtype=torch.float64) + 0.5 == 0).any()
    np.testing.assert_array_equal(ours.numpy(), ref.predict(grid.numpy()))


def test_perceptron_rejects_bad_inputs():
    X, y = SETS["2-d, wide margin"]
    with pytest.raises(ValueError, match=r"labels must be -1 or \+1; got \[0.0, 1.0\]"):
        ch.perceptron_fit(X, (y + 1) / 2)
    with pytest.raises(ValueError, match=r"X must be \(N, d\) and y \(N,\); got \(20,\)"):
        ch.perceptron_fit(X[:, 0], y)
    with pytest.raises(ValueError, match=r"got \(20, 2\) and \(19,\)"):
        ch.perceptron_fit(X, y[:-1])


def test_step_is_strict_and_keeps_the_dtype():
    z = torch.tensor([-1.0, 0.0, 1e-30, 2.0], dtype=torch.float64)
    out = ch.step(z)
    assert out.dtype == torch.float64 and out.tolist() == [0.0, 0.0, 1.0, 1.0]


def builtin(name):
    """The torch.nn.functional twin of an activation, with the chapter's leaky slope."""
    f = getattr(F, name)
    return functools.partial(f, negative_slope=ch.ALPHA) if name == "leaky_relu" else f


@pytest.mark.parametrize("name", sorted(ch.ACTIVATIONS))
def test_derivative_equals_autograd_of_phi(name):
    """The hand-derived phi' against autograd through the chapter's own phi, float64."""
    phi, dphi = ch.ACTIVATIONS[name]
    z = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    z = z[z.abs() > 1e-9].requires_grad_()
    (expected,) = torch.autograd.grad(phi(z).sum(), z)
    torch.testing.assert_close(dphi(z.detach()), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ch.ACTIVATIONS))
def test_activation_matches_pytorch_far_out_and_at_the_kink(name):
    """float32 up to |z| = 100 and z = 0 exactly: values equal PyTorch's (a naive softplus
    gives inf at z = 100), derivatives equal autograd of PyTorch's function (including the
    convention at the kink: relu'(0) = 0, leaky_relu'(0) = alpha)."""
    phi, dphi = ch.ACTIVATIONS[name]
    z = torch.cat([torch.linspace(-100, 100, 2001), torch.zeros(1)]).requires_grad_()
    value = builtin(name)(z)
    (slope,) = torch.autograd.grad(value.sum(), z)
    got = phi(z.detach())
    assert torch.isfinite(got).all(), f"{name}: non-finite values at {z[~torch.isfinite(got)]}"
    torch.testing.assert_close(got, value.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dphi(z.detach()), slope, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ch.ACTIVATIONS))
def test_activation_keeps_shape_and_dtype(name, dtype):
    """A derivative that returns float32 for float64 input would silently lose precision."""
    phi, dphi = ch.ACTIVATIONS[name]
    z = torch.randn(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(0))
    for f in (phi, dphi):
        out = f(z)
        assert out.shape == z.shape and out.dtype == dtype, (name, out.shape, out.dtype)


def solved_nand_weights():
    """A reference solution of exercise 2: NAND fires unless both inputs are 1, so
    -x_1 - x_2 + 1.5 > 0 except at (1, 1)."""
    return torch.tensor([-1.0, -1.0]), 1.5


def solved_softsign_derivative(z):
    """A reference solution of exercise 3: phi(z) = z / (1 + |z|) has
    phi'(z) = 1 / (1 + |z|)^2."""
    return 1 / (1 + z.abs()) ** 2


def test_exercise_2_nand(capsys):
    assert check("Exercise 2", ch.nand_weights, ch.test_nand) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_nand_weights, ch.test_nand)
    with pytest.raises(AssertionError, match=r"your neuron gives \[0.0, 0.0, 0.0, 1.0\]"):
        check("Exercise 2", lambda: (torch.tensor([1.0, 1.0]), -1.5), ch.test_nand)  # AND


def test_exercise_3_softsign(capsys):
    assert check("Exercise 3", ch.softsign_derivative, ch.test_softsign) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_softsign_derivative, ch.test_softsign)
    with pytest.raises(AssertionError, match="softsign'"):
        check("Exercise 3", lambda z: 1 / (1 + z.abs()), ch.test_softsign)
