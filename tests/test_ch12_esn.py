"""Chapter 12 checks: reservoir construction, echo state property, ridge readout vs sklearn, NRMSE."""

import torch
from sklearn.linear_model import Ridge

from nnbook.sequences import mackey_glass

DT = torch.float64


def make_reservoir(n, *, density, spectral_radius, input_scaling, seed=0):
    g = torch.Generator().manual_seed(seed)
    W0 = (torch.rand(n, n, generator=g, dtype=DT) - 0.5) * (torch.rand(n, n, generator=g, dtype=DT) < density)
    W = W0 * (spectral_radius / torch.linalg.eigvals(W0).abs().max())
    W_in = (torch.rand(n, 2, generator=g, dtype=DT) * 2 - 1) * input_scaling
    return W, W_in


def run_reservoir(W, W_in, u, *, leak, x0=None):
    x = torch.zeros(W.shape[0], dtype=DT) if x0 is None else x0
    states = []
    for u_t in u:
        x = (1 - leak) * x + leak * torch.tanh(W_in @ torch.cat([torch.ones(1, dtype=DT), u_t]) + W @ x)
        states.append(x)
    return torch.stack(states)


def ridge_readout(Z, Y, lam):
    return torch.linalg.solve(Z.T @ Z + lam * torch.eye(Z.shape[1], dtype=DT), Z.T @ Y).T


def nrmse(pred, target):
    return float(torch.sqrt(((pred - target) ** 2).mean()) / target.std())


def _setup(n=150, n_train=900, n_test=300, washout=300):
    series = torch.from_numpy(mackey_glass(n_train + n_test + 1))
    u, y = series[:-1, None], series[1:, None]
    W, W_in = make_reservoir(n, density=0.1, spectral_radius=1.25, input_scaling=0.5)
    X = run_reservoir(W, W_in, u, leak=0.3)
    Z = torch.cat([torch.ones(len(u), 1, dtype=DT), u, X], dim=1)
    return W, W_in, u, y, X, Z, slice(washout, n_train), slice(n_train, n_train + n_test)


def test_spectral_radius_is_rescaled():
    W, _ = make_reservoir(200, density=0.1, spectral_radius=0.9, input_scaling=0.5)
    torch.testing.assert_close(torch.linalg.eigvals(W).abs().max(), torch.tensor(0.9, dtype=DT))
    assert 0.05 < float((W != 0).double().mean()) < 0.15, "W should be sparse with density ~0.1"


def test_echo_state_property_on_mackey_glass():
    W, W_in, u, *_ = _setup(n=100, n_train=500, n_test=1)
    a = run_reservoir(W, W_in, u, leak=0.3)
    b = run_reservoir(W, W_in, u, leak=0.3, x0=torch.ones(100, dtype=DT))
    assert (a[-1] - b[-1]).norm() < 1e-9 * (a[0] - b[0]).norm()


def test_chaotic_reservoir_loses_echo_state_property():
    W, W_in = make_reservoir(100, density=0.1, spectral_radius=3.0, input_scaling=0.5)
    u = torch.from_numpy(mackey_glass(300))[:, None]
    a = run_reservoir(W, W_in, u, leak=0.3)
    b = run_reservoir(W, W_in, u, leak=0.3, x0=torch.ones(100, dtype=DT) * 0.5)
    assert (a[-1] - b[-1]).norm() > 1e-2, "at rho=3 two starts should not merge"


def test_ridge_readout_equals_sklearn_and_predicts():
    *_, y, _, Z, train, test = _setup()
    W_out = ridge_readout(Z[train], y[train], 1e-6)
    sk = Ridge(alpha=1e-6, fit_intercept=False).fit(Z[train].numpy(), y[train, 0].numpy())
    torch.testing.assert_close(W_out[0], torch.from_numpy(sk.coef_), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((Z[train] @ W_out.T)[:, 0], torch.from_numpy(sk.predict(Z[train].numpy())),
                               rtol=0, atol=1e-8)
    error = nrmse(Z[test] @ W_out.T, y[test])
    assert error < 0.02, f"a 150-unit reservoir should predict one step with NRMSE < 0.02; got {error:.4f}"


def test_nrmse_definition():
    target = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=DT)
    assert nrmse(target, target) == 0.0
    torch.testing.assert_close(torch.tensor(nrmse(target + 0.5, target), dtype=DT), 0.5 / target.std())
