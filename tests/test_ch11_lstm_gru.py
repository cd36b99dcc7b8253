"""Chapter 11 checks: LSTM and GRU cells from scratch vs nn.LSTM / nn.GRU, outputs and gradients."""

import torch
from torch import nn

from nnbook.sequences import adding_problem

DT = torch.float64


def lstm_cell(x_t, h_prev, c_prev, W, U, b):
    i, f, c_tilde, o = (x_t @ W.T + h_prev @ U.T + b).chunk(4, dim=1)
    c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(c_tilde)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(x_t, h_prev, W, U, b_i, b_h):
    xr, xz, xn = (x_t @ W.T + b_i).chunk(3, dim=1)
    hr, hz, hn = (h_prev @ U.T + b_h).chunk(3, dim=1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    return (1 - z) * torch.tanh(xn + r * hn) + z * h_prev


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=DT) - 0.5).requires_grad_()


def test_lstm_equals_nn_lstm_outputs_and_gradients():
    torch.manual_seed(0)
    B, T, D, H = 3, 6, 4, 5
    W, U, b = _rand(4 * H, D, seed=1), _rand(4 * H, H, seed=2), _rand(4 * H, seed=3)
    ref = nn.LSTM(D, H, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(W)
        ref.weight_hh_l0.copy_(U)
        ref.bias_ih_l0.copy_(b)
        ref.bias_hh_l0.zero_()
    x = torch.randn(B, T, D, dtype=DT)
    h, c = torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT)
    out_ref, (_, c_ref) = ref(x, (h[None], c[None]))
    outs = []
    for t in range(T):
        h, c = lstm_cell(x[:, t], h, c, W, U, b)
        outs.append(h)
    out = torch.stack(outs, 1)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(c, c_ref[0])
    (out.sin().sum() + c.sum()).backward()
    (out_ref.sin().sum() + c_ref.sum()).backward()
    torch.testing.assert_close(W.grad, ref.weight_ih_l0.grad)
    torch.testing.assert_close(U.grad, ref.weight_hh_l0.grad)
    torch.testing.assert_close(b.grad, ref.bias_ih_l0.grad)
    torch.testing.assert_close(b.grad, ref.bias_hh_l0.grad)


def test_gru_equals_nn_gru_outputs_and_gradients():
    torch.manual_seed(0)
    B, T, D, H = 3, 6, 4, 5
    params = [_rand(3 * H, D, seed=1), _rand(3 * H, H, seed=2), _rand(3 * H, seed=3), _rand(3 * H, seed=4)]
    ref = nn.GRU(D, H, batch_first=True).double()
    ref_params = (ref.weight_ih_l0, ref.weight_hh_l0, ref.bias_ih_l0, ref.bias_hh_l0)
    with torch.no_grad():
        for mine, theirs in zip(params, ref_params, strict=True):
            theirs.copy_(mine)
    x, h = torch.randn(B, T, D, dtype=DT), torch.randn(B, H, dtype=DT)
    out_ref, _ = ref(x, h[None])
    outs = []
    for t in range(T):
        h = gru_cell(x[:, t], h, *params)
        outs.append(h)
    out = torch.stack(outs, 1)
    torch.testing.assert_close(out, out_ref)
    out.sin().sum().backward()
    out_ref.sin().sum().backward()
    for mine, theirs in zip(params, ref_params, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


def test_cells_gradcheck():
    x, h, c = (torch.randn(2, k, dtype=DT) for k in (3, 4, 4))
    assert torch.autograd.gradcheck(lambda *p: lstm_cell(x, h, c, *p),
                                    [_rand(16, 3, seed=5), _rand(16, 4, seed=6), _rand(16, seed=7)])
    assert torch.autograd.gradcheck(lambda *p: gru_cell(x, h, *p),
                                    [_rand(12, 3, seed=5), _rand(12, 4, seed=6), _rand(12, seed=7),
                                     _rand(12, seed=8)])


def test_forget_gate_is_soft_and_cell_path_derivative_is_f():
    x, h, c = (torch.randn(2, k, dtype=DT) for k in (3, 4, 4))
    W, U, b = (p.detach() * 20 for p in (_rand(16, 3, seed=5), _rand(16, 4, seed=6), _rand(16, seed=7)))
    f = torch.sigmoid((x @ W.T + h @ U.T + b).chunk(4, dim=1)[1])
    assert torch.all((f > 0) & (f < 1)), "a sigmoid gate lies strictly in (0, 1)"
    J = torch.autograd.functional.jacobian(lambda c0: lstm_cell(x, h, c0, W, U, b)[1], c)  # (2, 4, 2, 4)
    torch.testing.assert_close(torch.stack([J[k, :, k, :] for k in range(2)]), torch.diag_embed(f))


def test_lstm_learns_short_adding_problem_quickly():
    torch.manual_seed(0)
    lstm, head = nn.LSTM(2, 16, batch_first=True), nn.Linear(16, 1)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    x_val, y_val = adding_problem(500, 10, seed=1)
    for step in range(300):
        x, y = adding_problem(64, 10, seed=100 + step)
        loss = ((head(lstm(x)[0][:, -1]).squeeze(-1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse = float(((head(lstm(x_val)[0][:, -1]).squeeze(-1) - y_val) ** 2).mean())
    assert mse < 0.02, f"an LSTM should solve the T=10 adding problem in 300 steps; MSE {mse:.4f}"
