"""Chapter 11: the notebook's LSTM and GRU (cells and modules) against nn.LSTM / nn.GRU over a
grid of cases, the forget gate's path, the adding-problem model and loop, and the exercise."""

import pytest
import torch
from chapters import load_chapter
from torch import nn

from nnbook.exercises import check
from nnbook.sequences import adding_problem

ch = load_chapter("11")
DT = torch.float64


def _suffixes(ref: nn.RNNBase):
    """(layer, direction, parameter-name suffix) in nn's order for h_n: l0, l0_reverse, l1..."""
    directions = 2 if ref.bidirectional else 1
    return [(layer, d, f"_l{layer}" + ("_reverse" if d else ""))
            for layer in range(ref.num_layers) for d in range(directions)]


def _param(ref, name, suffix):
    return getattr(ref, name + suffix) if ref.bias or not name.startswith("bias") else None


def _scratch_lstms(ref: nn.LSTM) -> list:
    """One ScratchLSTM per layer and direction holding ref's weights (its two biases summed)."""
    cells = []
    for _, _, s in _suffixes(ref):
        W_ih = getattr(ref, "weight_ih" + s)
        cell = ch.ScratchLSTM(W_ih.shape[1], ref.hidden_size).double()
        with torch.no_grad():
            cell.W.copy_(W_ih)
            cell.U.copy_(getattr(ref, "weight_hh" + s))
            b_ih, b_hh = _param(ref, "bias_ih", s), _param(ref, "bias_hh", s)
            cell.b.copy_(b_ih + b_hh if ref.bias else torch.zeros_like(cell.b))
        cells.append(cell)
    return cells


def _scratch_grus(ref: nn.GRU) -> list:
    cells = []
    for _, _, s in _suffixes(ref):
        W_ih = getattr(ref, "weight_ih" + s)
        cell = ch.ScratchGRU(W_ih.shape[1], ref.hidden_size).double()
        with torch.no_grad():
            cell.W.copy_(W_ih)
            cell.U.copy_(getattr(ref, "weight_hh" + s))
            for mine, name in ((cell.b_i, "bias_ih"), (cell.b_h, "bias_hh")):
                theirs = _param(ref, name, s)
                mine.copy_(theirs if theirs is not None else torch.zeros_like(mine))
        cells.append(cell)
    return cells


def _run(ref, cells, x, state, step):
    """nn.LSTM / nn.GRU semantics with the chapter's modules: layer l reads layer l - 1's
    states (both directions concatenated); the reverse direction reads the sequence backwards.
    ``step(cell, seq, index)`` runs one module and returns (outputs, final states)."""
    directions = 2 if ref.bidirectional else 1
    finals, inp = [], x
    for layer in range(ref.num_layers):
        outs = []
        for d in range(directions):
            index = layer * directions + d
            seq = inp.flip(1) if d else inp
            out, final = step(cells[index], seq, None if state is None else index)
            outs.append(out.flip(1) if d else out)
            finals.append(final)
        inp = torch.cat(outs, dim=-1)
    return inp, finals


GRID = pytest.mark.parametrize("num_layers, bidirectional, batch_first, with_state, bias", [
    (1, False, True, True, True),
    (1, False, False, False, True),
    (1, True, True, False, True),
    (2, False, True, True, True),
    (2, True, False, True, True),
    (2, True, True, False, False),
    (3, False, False, True, False),
    (3, True, True, True, True),
])


@GRID
def test_scratch_lstm_equals_nn_lstm(num_layers, bidirectional, batch_first, with_state, bias):
    """Outputs, h_n, c_n and input gradients; catches a wrong gate order, a transposed
    weight, a bias counted once, or a state not carried (each changes the numbers)."""
    g = torch.Generator().manual_seed(num_layers * 10 + bidirectional)
    B, T, D, H = 3, 5, 4, 6
    torch.manual_seed(num_layers)
    ref = nn.LSTM(D, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                  bidirectional=bidirectional).double()
    cells = _scratch_lstms(ref)
    n = num_layers * (2 if bidirectional else 1)
    x = torch.randn(B, T, D, dtype=DT, generator=g, requires_grad=True)
    state = None
    if with_state:
        state = (torch.randn(n, B, H, dtype=DT, generator=g),
                 torch.randn(n, B, H, dtype=DT, generator=g))

    def step(cell, seq, index):
        out, (h, c), _ = cell(seq, None if index is None else (state[0][index], state[1][index]))
        return out, (h, c)

    out, finals = _run(ref, cells, x, state, step)
    h_n = torch.stack([h for h, _ in finals])
    c_n = torch.stack([c for _, c in finals])
    out_ref, (h_ref, c_ref) = ref(x if batch_first else x.transpose(0, 1), state)
    out_ref = out_ref if batch_first else out_ref.transpose(0, 1)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h_n, h_ref)
    torch.testing.assert_close(c_n, c_ref)
    weight = torch.randn(out.shape, dtype=DT, generator=g)
    grad = torch.autograd.grad((out * weight).sum() + c_n.sum(), [x])[0]
    grad_ref = torch.autograd.grad((out_ref * weight).sum() + c_ref.sum(), [x])[0]
    torch.testing.assert_close(grad, grad_ref)


@GRID
def test_scratch_gru_equals_nn_gru(num_layers, bidirectional, batch_first, with_state, bias):
    """Outputs, h_n and input gradients; catches the reset gate applied before U_n (Cho et
    al.'s form) instead of after (PyTorch's), swapped r and z, or a missing b_hn."""
    g = torch.Generator().manual_seed(num_layers * 10 + bidirectional)
    B, T, D, H = 3, 5, 4, 6
    torch.manual_seed(num_layers)
    ref = nn.GRU(D, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                 bidirectional=bidirectional).double()
    cells = _scratch_grus(ref)
    n = num_layers * (2 if bidirectional else 1)
    x = torch.randn(B, T, D, dtype=DT, generator=g, requires_grad=True)
    h0 = torch.randn(n, B, H, dtype=DT, generator=g) if with_state else None

    def step(cell, seq, index):
        return cell(seq, None if index is None else h0[index])

    out, finals = _run(ref, cells, x, h0, step)
    h_n = torch.stack(finals)
    out_ref, h_ref = ref(x if batch_first else x.transpose(0, 1), h0)
    out_ref = out_ref if batch_first else out_ref.transpose(0, 1)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h_n, h_ref)
    weight = torch.randn(out.shape, dtype=DT, generator=g)
    grad = torch.autograd.grad((out * weight).sum() + h_n.sum(), [x])[0]
    grad_ref = torch.autograd.grad((out_ref * weight).sum() + h_ref.sum(), [x])[0]
    torch.testing.assert_close(grad, grad_ref)


def test_scratch_weight_gradients_equal_nn_for_both_biases():
    """The LSTM's single b stands for PyTorch's two biases: both must get b's gradient."""
    torch.manual_seed(0)
    lstm, ref = ch.ScratchLSTM(3, 4).double(), nn.LSTM(3, 4, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(lstm.W)
        ref.weight_hh_l0.copy_(lstm.U)
        ref.bias_ih_l0.copy_(lstm.b)
        ref.bias_hh_l0.zero_()
    x = torch.randn(2, 5, 3, dtype=DT)
    out, (_, c), _ = lstm(x)
    out_ref, (_, c_ref) = ref(x)
    (out.sin().sum() + c.sum()).backward()
    (out_ref.sin().sum() + c_ref.sum()).backward()
    for mine, theirs in ((lstm.W, ref.weight_ih_l0), (lstm.U, ref.weight_hh_l0),
                         (lstm.b, ref.bias_ih_l0), (lstm.b, ref.bias_hh_l0)):
        torch.testing.assert_close(mine.grad, theirs.grad)


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=DT) - 0.5).requires_grad_()


def test_cells_gradcheck():
    g = torch.Generator().manual_seed(9)
    x, h, c = (torch.randn(2, k, dtype=DT, generator=g) for k in (3, 4, 4))
    lstm_params = [_rand(16, 3, seed=5), _rand(16, 4, seed=6), _rand(16, seed=7)]
    assert torch.autograd.gradcheck(lambda *p: ch.lstm_cell(x, h, c, *p)[:2], lstm_params)
    gru_params = [_rand(12, 3, seed=5), _rand(12, 4, seed=6), _rand(12, seed=7), _rand(12, seed=8)]
    assert torch.autograd.gradcheck(lambda *p: ch.gru_cell(x, h, *p), gru_params)


def test_forget_gate_is_soft_and_cell_path_derivative_is_f():
    """(11.5): with h_{t-1} held fixed, dc_t/dc_{t-1} = diag(f_t), f_t strictly in (0, 1),
    even for large pre-activations; a cell that mixed c_{t-1} into the gates would fail."""
    g = torch.Generator().manual_seed(10)
    x, h, c = (torch.randn(2, k, dtype=DT, generator=g) for k in (3, 4, 4))
    W, U, b = (p.detach() * 20 for p in (_rand(16, 3, seed=5), _rand(16, 4, seed=6),
                                         _rand(16, seed=7)))
    _, _, (_, f, _) = ch.lstm_cell(x, h, c, W, U, b)
    assert torch.all((f > 0) & (f < 1)), "a sigmoid gate lies strictly in (0, 1)"
    J = torch.autograd.functional.jacobian(lambda c0: ch.lstm_cell(x, h, c0, W, U, b)[1], c)
    torch.testing.assert_close(torch.stack([J[k, :, k, :] for k in range(2)]), torch.diag_embed(f))


def test_scratch_lstm_returns_the_gates_it_used():
    """The gates ScratchLSTM reports (for the chapter's plots) are the ones of each step."""
    torch.manual_seed(1)
    lstm = ch.ScratchLSTM(2, 3).double()
    x = torch.randn(2, 4, 2, dtype=DT)
    _, _, gates = lstm(x)  # (B, T, 3, H)
    h = c = torch.zeros(2, 3, dtype=DT)
    for t in range(4):
        h, c, (i, f, o) = ch.lstm_cell(x[:, t], h, c, lstm.W, lstm.U, lstm.b)
        torch.testing.assert_close(gates[:, t], torch.stack([i, f, o], dim=1))


def test_regressor_starts_the_lstm_forget_gates_at_sigmoid_of_b_plus_one():
    """With zero input and state every gate is sigmoid(bias); only the forget gate's
    recurrent bias is 1. A slice of the wrong gate (i, g or o) fails this."""
    torch.manual_seed(2)
    H = 5
    model = ch.Regressor("lstm", H)
    rnn = model.rnn
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    zero = torch.zeros(1, H)
    _, _, (_, f, _) = ch.lstm_cell(torch.zeros(1, 2), zero, zero, rnn.weight_ih_l0.detach(),
                                   rnn.weight_hh_l0.detach(), b)
    torch.testing.assert_close(f[0], torch.sigmoid(rnn.bias_ih_l0[H: 2 * H].detach() + 1.0))
    assert torch.all(rnn.bias_hh_l0[H: 2 * H] == 1.0)
    plain = ch.Regressor("rnn", H).rnn
    assert not torch.any(plain.bias_hh_l0 == 1.0), "only the LSTM gets the forget-gate bias"


def test_train_adding_learns_a_short_adding_problem_and_stops_when_solved(capsys):
    """The chapter's model and loop on T = 10 (a few seconds): a read-out of the wrong step,
    a target shifted, or an optimizer that never steps leaves the MSE near 1/6."""
    cfg = ch.Config(length=10, hidden=12, batch_size=32, lr=2e-2, eval_every=25, solved_mse=0.01)
    val = adding_problem(500, 10, seed=cfg.val_seed)
    model, history = ch.train_adding("lstm", cfg, steps=400, val=val, dev=torch.device("cpu"))
    assert history["val_mse"][-1] < 0.01, f"validation MSE {history['val_mse'][-1]:.4f}"
    assert history["step"][-1] < 400, "training should stop once validation is below solved_mse"
    x_test, y_test = adding_problem(500, 10, seed=cfg.test_seed)
    with torch.no_grad():
        mse = float(((model(x_test) - y_test) ** 2).mean())
    assert mse < 0.02, f"an LSTM should solve the T = 10 adding problem; test MSE {mse:.4f}"
    assert "lstm step" in capsys.readouterr().out


def test_forecaster_reads_the_last_step_of_its_window():
    """The forecast is the head applied to the LSTM's state after the window's last year
    (reading another step fails), for any window length, including 1."""
    torch.manual_seed(4)
    model = ch.Forecaster(8)
    x = torch.rand(3, 20)
    assert model(x).shape == (3,)
    assert model(x[:, -1:]).shape == (3,)
    with torch.no_grad():
        out_ref, _ = model.lstm(x[..., None])
        torch.testing.assert_close(model(x), model.head(out_ref[:, -1]).squeeze(-1))


def solved_lstm_param_count(D: int, H: int) -> int:
    """A reference solution of exercise 3: four gates, each with W_x (H x D), W_h (H x H) and
    PyTorch's two bias vectors."""
    return 4 * (H * D + H * H + 2 * H)


def test_exercise_lstm_param_count(capsys):
    assert check("Exercise 3", ch.lstm_param_count, ch.test_lstm_count) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_lstm_param_count, ch.test_lstm_count) is True
    with pytest.raises(AssertionError, match="parameters; you said"):  # one bias vector only
        check("Exercise 3", lambda D, H: 4 * (H * D + H * H + H), ch.test_lstm_count)
