"""Chapter 12: the notebook's reservoir, ridge readout (against scikit-learn's Ridge), echo
state network, its batched free runs, Gelfand's radius, the AR baseline, the free-run error
measures (12.8)-(12.9), and its exercise."""

import math

import pytest
import torch
from chapters import load_chapter
from sklearn.linear_model import Ridge

from nnbook.exercises import check
from nnbook.sequences import mackey_glass

ch = load_chapter("12")
DT = torch.float64


@pytest.fixture(scope="module")
def mg():
    """900 steps of Mackey-Glass as inputs u (T, 1) and next-step targets y (T, 1)."""
    series = torch.from_numpy(mackey_glass(901))
    return series[:-1, None], series[1:, None]


@pytest.mark.parametrize("n, density, rho, seed", [
    (50, 0.1, 0.5, 0), (200, 0.1, 0.9, 1), (200, 0.05, 1.25, 2), (120, 0.3, 3.0, 3),
])
def test_reservoir_has_the_requested_spectral_radius_density_and_input_scale(n, density, rho,
                                                                               seed):
    """Catches rescaling by the largest singular value instead of the largest |eigenvalue|,
    a dense W, or W_in drawn outside [-s, s]."""
    W, W_in = ch.make_reservoir(n, density=density, spectral_radius=rho, input_scaling=0.3,
                                seed=seed)
    assert W.dtype == W_in.dtype == DT
    assert float(torch.linalg.eigvals(W).abs().max()) == pytest.approx(rho, rel=1e-9)
    assert float((W != 0).double().mean()) == pytest.approx(density, rel=0.25)
    assert W_in.shape == (n, 2) and float(W_in.abs().max()) <= 0.3
    assert float(W_in.abs().max()) > 0.25, "W_in should fill [-s, s], not a narrower range"


def test_same_seed_gives_the_same_reservoir_rescaled():
    """The validation grid compares radii on one random W_0: W / rho must not depend on rho."""
    W1, W_in1 = ch.make_reservoir(80, density=0.1, spectral_radius=0.6, input_scaling=0.5)
    W2, W_in2 = ch.make_reservoir(80, density=0.1, spectral_radius=1.5, input_scaling=0.5)
    torch.testing.assert_close(W1 / 0.6, W2 / 1.5)
    torch.testing.assert_close(W_in1, W_in2)
    W3, _ = ch.make_reservoir(80, density=0.1, spectral_radius=0.6, input_scaling=0.5, seed=1)
    assert not torch.equal(W1, W3)
    _, W_in = ch.make_reservoir(30, n_inputs=3, density=0.1, spectral_radius=1.0,
                                input_scaling=0.5)
    assert W_in.shape == (30, 4)


def test_run_reservoir_by_hand():
    """With W = 0 the state is a leaky average of tanh(bias + w u_t): (12.2) by hand. Swapping
    a and 1 - a, or dropping the bias column, fails."""
    a = 0.3
    W = torch.zeros(2, 2, dtype=DT)
    W_in = torch.tensor([[0.5, 1.0], [-0.2, 2.0]], dtype=DT)  # columns: bias, input
    u = torch.tensor([[0.4], [-1.0]], dtype=DT)
    X = ch.run_reservoir(W, W_in, u, leak=a)
    x1 = a * torch.tanh(W_in[:, 0] + W_in[:, 1] * 0.4)
    x2 = (1 - a) * x1 + a * torch.tanh(W_in[:, 0] - W_in[:, 1])
    torch.testing.assert_close(X, torch.stack([x1, x2]))
    x0 = torch.tensor([1.0, -2.0], dtype=DT)
    X = ch.run_reservoir(W, torch.zeros(2, 2, dtype=DT), torch.zeros(5, 1, dtype=DT),
                         leak=a, x0=x0)
    torch.testing.assert_close(X[-1], (1 - a) ** 5 * x0)


def test_a_run_continues_from_its_last_state(mg):
    """The chapter splits one run in two (train, then the rest): the halves must join exactly."""
    u, _ = mg
    W, W_in = ch.make_reservoir(60, density=0.1, spectral_radius=1.25, input_scaling=0.5)
    whole = ch.run_reservoir(W, W_in, u[:200], leak=0.3)
    first = ch.run_reservoir(W, W_in, u[:120], leak=0.3)
    rest = ch.run_reservoir(W, W_in, u[120:200], leak=0.3, x0=first[-1])
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=0, atol=0)


@pytest.mark.parametrize("rho, merge", [(1.25, True), (3.0, False)])
def test_echo_state_property_holds_near_one_and_fails_in_chaos(mg, rho, merge):
    u, _ = mg
    W, W_in = ch.make_reservoir(100, density=0.1, spectral_radius=rho, input_scaling=0.5)
    a = ch.run_reservoir(W, W_in, u[:500], leak=0.3)
    b = ch.run_reservoir(W, W_in, u[:500], leak=0.3, x0=torch.full((100,), 0.5, dtype=DT))
    ratio = float((a[-1] - b[-1]).norm() / (a[0] - b[0]).norm())
    assert (ratio < 1e-9) if merge else (ratio > 1e-2), f"gap ratio {ratio:.2e} at rho={rho}"


@pytest.mark.parametrize("T, F, D_out", [(200, 30, 1), (200, 30, 3), (20, 60, 2)])
@pytest.mark.parametrize("lam", [1e-8, 1e-3, 10.0])
def test_ridge_readout_equals_sklearn_ridge(T, F, D_out, lam):
    """Catches a transposed W_out, a penalty missing or on the wrong side, or D_out mixed."""
    g = torch.Generator().manual_seed(T + F + D_out)
    Z = torch.randn(T, F, generator=g, dtype=DT)
    Y = torch.randn(T, D_out, generator=g, dtype=DT)
    W_out = ch.ridge_readout(Z, Y, lam)
    assert W_out.shape == (D_out, F)
    sk = Ridge(alpha=lam, fit_intercept=False, solver="cholesky").fit(Z.numpy(), Y.numpy())
    sk_coef = torch.from_numpy(sk.coef_).reshape(D_out, F)  # sklearn drops a single output
    torch.testing.assert_close(W_out, sk_coef, rtol=1e-5, atol=1e-6)


def test_esn_fit_forward_equal_sklearn_on_the_extended_states(mg):
    u, y = mg
    esn = ch.EchoStateNetwork(n_reservoir=80, density=0.1, spectral_radius=1.25,
                              input_scaling=0.5, leak=0.3, ridge=1e-6)
    X = esn.fit(u[:600], y[:600], washout=100)
    Z = ch.extended_states(u[:600], X)
    torch.testing.assert_close(Z[:, :2], torch.cat([torch.ones(600, 1, dtype=DT), u[:600]], 1))
    sk = Ridge(alpha=1e-6, fit_intercept=False).fit(Z[100:].numpy(), y[100:600, 0].numpy())
    torch.testing.assert_close(esn.W_out[0], torch.from_numpy(sk.coef_), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(esn(u[:600], X)[100:, 0],
                               torch.from_numpy(sk.predict(Z[100:].numpy())), rtol=0, atol=1e-6)
    error = ch.nrmse(esn(u, esn.states(u))[600:], y[600:])
    assert error < 0.05, f"an 80-unit reservoir should predict one step ahead; NRMSE {error:.4f}"


def test_generate_feeds_its_output_back(mg):
    """Teacher-forcing the generated outputs must reproduce them: a free run that updated the
    state with a stale input, or read out before updating, would not."""
    u, y = mg
    esn = ch.EchoStateNetwork(n_reservoir=60, density=0.1, spectral_radius=1.25,
                              input_scaling=0.5, leak=0.3, ridge=1e-6, seed=3)
    X = esn.fit(u[:400], y[:400], washout=100)
    free = esn.generate(X[-2:-1], u[399:400], 25)[0]  # one run, K = 1
    inputs = torch.cat([u[399:400], free[:-1, None]])  # the input of each free step
    forced = esn(inputs, esn.states(inputs, x0=X[-2]))[:, 0]
    torch.testing.assert_close(free, forced)
    torch.testing.assert_close(free[0], esn(u[:400], X)[-1, 0])  # the first step is one-step


def test_batched_free_runs_equal_the_runs_one_at_a_time(mg):
    """K runs in one batch must not mix: a transposed W or a state broadcast across the batch
    would make a row depend on the others."""
    u, y = mg
    esn = ch.EchoStateNetwork(n_reservoir=50, density=0.1, spectral_radius=1.1,
                              input_scaling=0.5, leak=0.3, ridge=1e-8, seed=4)
    X = esn.fit(u[:500], y[:500], washout=100)
    starts = torch.tensor([150, 230, 377, 499])
    batch = esn.generate(X[starts - 1], u[starts], 40)
    assert batch.shape == (4, 40)
    for k, t0 in enumerate(starts):
        alone = esn.generate(X[t0 - 1: t0], u[t0: t0 + 1], 40)[0]
        torch.testing.assert_close(batch[k], alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batch[0], batch[1])


def test_generate_rejects_bad_shapes():
    esn = ch.EchoStateNetwork(n_reservoir=20, density=0.2, spectral_radius=1.0,
                              input_scaling=0.5, leak=0.3, ridge=1e-6)
    with pytest.raises(ValueError, match=r"x must be \(K, 20\); got \(20,\)"):
        esn.generate(torch.zeros(20, dtype=DT), torch.zeros(1, 1, dtype=DT), 3)
    with pytest.raises(ValueError, match=r"u_t must be \(2, 1\); got \(1, 1\)"):
        esn.generate(torch.zeros(2, 20, dtype=DT), torch.zeros(1, 1, dtype=DT), 3)


def test_fit_esn_is_one_continuous_run_and_fits_on_training_steps_only(mg):
    """The chapter's fit: states of the whole series as one run, readout from the training
    steps alone (a readout that saw validation or test targets would differ)."""
    u, y = mg
    cfg = ch.Config(n_reservoir=40, n_train=400, washout=50)
    esn, X, _ = ch.fit_esn(cfg, u, y, spectral_radius=1.1, ridge=1e-6, seed=2)
    assert X.shape == (len(u), 40)
    torch.testing.assert_close(X, esn.states(u), rtol=0, atol=0)
    Z = ch.extended_states(u, X)
    torch.testing.assert_close(esn.W_out, ch.ridge_readout(Z[50:400], y[50:400], 1e-6))
    y_changed = y.clone()
    y_changed[400:] += 1.0  # targets after the training steps must not matter
    esn2, _, _ = ch.fit_esn(cfg, u, y_changed, spectral_radius=1.1, ridge=1e-6, seed=2)
    torch.testing.assert_close(esn2.W_out, esn.W_out, rtol=0, atol=0)


@pytest.mark.parametrize("n, density, rho, seed", [(60, 0.2, 0.7, 0), (300, 0.1, 1.25, 1),
                                                   (150, 0.05, 2.0, 2)])
def test_gelfand_radius_agrees_with_eigenvalues(n, density, rho, seed):
    """Gelfand's formula must find the |largest eigenvalue| of the chapter's reservoirs to 1%,
    and tell it from the largest singular value (the rescaling bug it is there to catch)."""
    W, _ = ch.make_reservoir(n, density=density, spectral_radius=rho, input_scaling=0.5,
                             seed=seed)
    assert ch.gelfand_radius(W) == pytest.approx(rho, rel=0.01)
    sigma = float(torch.linalg.matrix_norm(W, ord=2))
    assert ch.gelfand_radius(W * rho / sigma) < 0.8 * rho  # rescaled by sigma_max instead


def test_gelfand_radius_by_hand_and_its_guard():
    """A sheared rotation is far from normal (its norm is not its radius): the estimate must
    still converge to the |largest eigenvalue|; a non-square matrix is refused."""
    c, s_ = math.cos(0.3), math.sin(0.3)
    W = 0.5 * torch.tensor([[c, -s_], [s_, c]], dtype=DT) @ torch.tensor([[1.0, 5.0], [0, 1.0]],
                                                                          dtype=DT)
    expected = float(torch.linalg.eigvals(W).abs().max())
    assert ch.gelfand_radius(W) == pytest.approx(expected, rel=1e-3)
    assert ch.gelfand_radius(torch.diag(torch.tensor([0.3, -0.9], dtype=DT))) == pytest.approx(
        0.9, rel=1e-9)
    with pytest.raises(ValueError, match=r"W must be square \(N, N\); got \(3, 4\)"):
        ch.gelfand_radius(torch.zeros(3, 4, dtype=DT))


def test_nrmse_definition():
    target = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=DT)
    assert ch.nrmse(target, target) == 0.0
    assert ch.nrmse(target + 0.5, target) == pytest.approx(0.5 / float(target.std()))
    assert ch.nrmse(torch.full_like(target, 1.5), target) == pytest.approx(
        float(target.std(correction=0) / target.std()))


def test_delay_line_by_hand_and_its_guard():
    u = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=DT)
    expected = torch.tensor([[0, 0], [1, 0], [2, 1], [3, 2]], dtype=DT)  # u_{t-1}, u_{t-2}
    torch.testing.assert_close(ch.delay_line(u, 3), expected)
    with pytest.raises(ValueError, match="needs p >= 2; got p=1"):
        ch.delay_line(u, 1)


def test_ar_readout_recovers_a_linear_recurrence_and_its_free_run_continues_it():
    """A sampled sine plus a constant obeys x_{t+1} = c + 2 cos(w) x_t - x_{t-1}: the AR(2)
    readout finds these weights, and its free run continues the sine; reading the delay line
    in the wrong order (or feeding back a stale value) would not."""
    w = 0.3
    series = 0.7 + torch.sin(w * torch.arange(100, dtype=DT) + 0.4)
    u, y = series[:-1, None], series[1:, None]
    Z = ch.extended_states(u, ch.delay_line(u, 2))  # [1, u_t, u_{t-1}]
    W_out = ch.ridge_readout(Z[5:60], y[5:60], 1e-12)
    expected = torch.tensor([0.7 * (2 - 2 * math.cos(w)), 2 * math.cos(w), -1.0], dtype=DT)
    torch.testing.assert_close(W_out[0], expected, atol=1e-5, rtol=0)
    recent = torch.stack([u[58:60, 0], u[40:42, 0]])  # two runs, (K, p), oldest first
    free = ch.ar_generate(W_out, recent, 30)  # from (u_58, u_59): predicts y_59 = u_60 on
    torch.testing.assert_close(free[0], y[59:89, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(free[1], series[42:72], atol=1e-4, rtol=0)  # own start
    with pytest.raises(ValueError, match=r"recent must be \(K, p\) and W_out \(1, 1 \+ p\)"):
        ch.ar_generate(W_out, u[58:60, 0], 5)  # a single run must still be (1, p)


def test_horizon_counts_steps_before_the_first_miss():
    """(12.9) per row: a miss later in a row must not count, a row that never misses counts all
    its steps, a miss at the first step gives 0."""
    truth = torch.zeros(3, 6, dtype=DT)
    pred = torch.tensor([[0.0, 0.05, -0.09, 0.2, 0.0, 0.3],
                         [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                         [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=DT)
    assert ch.horizon(pred, truth, 0.1).tolist() == [3, 6, 0]
    assert ch.horizon(pred, truth, 0.6).tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match=r"must both be \(K, steps\)"):
        ch.horizon(pred[0], truth[0], 0.1)


def test_nrmse_ahead_by_hand():
    """(12.8): the root mean square over runs at each step, divided by the given scale; a mean
    over steps instead of runs, or a missing square root, fails."""
    truth = torch.zeros(2, 3, dtype=DT)
    pred = torch.tensor([[3.0, 0.0, 1.0], [4.0, 2.0, 1.0]], dtype=DT)
    got = ch.nrmse_ahead(pred, truth, 2.0)
    expected = torch.tensor([math.sqrt(12.5), math.sqrt(2.0), 1.0], dtype=DT) / 2.0
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"must both be \(K, steps\)"):
        ch.nrmse_ahead(pred, truth[:, :2], 1.0)


def solved_ridge_dual(Z, Y, lam):
    K = Z @ Z.T + lam * torch.eye(Z.shape[0], dtype=Z.dtype)  # (T, T)
    return (Z.T @ torch.linalg.solve(K, Y)).T  # (D_out, F)


def test_exercise_ridge_dual(capsys):
    assert check("Exercise 3", ch.ridge_dual, ch.test_ridge_dual) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_ridge_dual, ch.test_ridge_dual) is True
    with pytest.raises(AssertionError, match="dual form should equal"):  # penalty forgotten
        check("Exercise 3", lambda Z, Y, lam: solved_ridge_dual(Z, Y, 0.0), ch.test_ridge_dual)
    with pytest.raises(TypeError, match="must be a function"):  # a result is not an answer
        check("Exercise 3", solved_ridge_dual(torch.eye(2), torch.ones(2, 1), 1.0),
              ch.test_ridge_dual)
