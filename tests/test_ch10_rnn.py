"""Chapter 10 checks: RNN cell + unrolled loop vs nn.RNN (outputs and gradients), hand BPTT, Jacobians."""

import math

import torch
from torch import nn

from nnbook.text import CharVocab, shakespeare, train_val_split


def rnn_unroll(x, h0, W_xh, W_hh, b):
    h, states = h0, []
    for t in range(x.shape[1]):
        h = torch.tanh(h @ W_hh.T + x[:, t] @ W_xh.T + b)
        states.append(h)
    return torch.stack(states, dim=1)


def rnn_bptt(x, h0, states, W_hh, grad_out):
    B, T, H = states.shape
    dW_xh, dW_hh, db = 0.0, 0.0, 0.0
    delta_next = torch.zeros(B, H, dtype=x.dtype)
    for t in reversed(range(T)):
        g = (1 - states[:, t] ** 2) * (grad_out[:, t] + delta_next)
        h_prev = states[:, t - 1] if t > 0 else h0
        dW_hh, dW_xh, db = dW_hh + g.T @ h_prev, dW_xh + g.T @ x[:, t], db + g.sum(0)
        delta_next = g @ W_hh
    return dW_xh, dW_hh, db


def _params(D, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = 1 / math.sqrt(H)
    return [((torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * k).requires_grad_()
            for s in ((H, D), (H, H), (H,))]


def test_scratch_rnn_equals_nn_rnn_outputs_and_gradients():
    torch.manual_seed(0)
    B, T, D, H = 3, 7, 4, 5
    W_xh, W_hh, b = _params(D, H)
    ref = nn.RNN(D, H, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(W_xh)
        ref.weight_hh_l0.copy_(W_hh)
        ref.bias_ih_l0.copy_(b)
        ref.bias_hh_l0.zero_()
    x, h0 = torch.randn(B, T, D, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    target = torch.randn(B, T, H, dtype=torch.float64)
    out = rnn_unroll(x, h0, W_xh, W_hh, b)
    out_ref, h_ref = ref(x, h0[None])
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(out[:, -1], h_ref[0])
    ((out - target) ** 2).sum().backward()
    ((out_ref - target) ** 2).sum().backward()
    torch.testing.assert_close(W_xh.grad, ref.weight_ih_l0.grad)
    torch.testing.assert_close(W_hh.grad, ref.weight_hh_l0.grad)
    torch.testing.assert_close(b.grad, ref.bias_ih_l0.grad)
    torch.testing.assert_close(b.grad, ref.bias_hh_l0.grad)
    hand = rnn_bptt(x, h0, out.detach(), W_hh.detach(), 2 * (out.detach() - target))
    for mine, auto in zip(hand, (W_xh.grad, W_hh.grad, b.grad), strict=True):
        torch.testing.assert_close(mine, auto)


def test_unrolled_rnn_gradcheck():
    torch.manual_seed(1)
    x, h0 = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *p: rnn_unroll(x, h0, *p), _params(3, 3))


def test_jacobian_product_and_vanishing_bound():
    torch.manual_seed(2)
    H, T = 16, 30
    W_xh, W_hh, b = (p.detach() for p in _params(4, H))
    W_hh = W_hh * (0.8 / torch.linalg.matrix_norm(W_hh, ord=2))  # sigma_max = 0.8
    x = torch.randn(1, T, 4, dtype=torch.float64)
    h0 = torch.zeros(H, dtype=torch.float64)
    J_auto = torch.autograd.functional.jacobian(lambda h: rnn_unroll(x, h[None], W_xh, W_hh, b)[0, -1], h0)
    states = rnn_unroll(x, h0[None], W_xh, W_hh, b)[0]
    J = torch.eye(H, dtype=torch.float64)
    for k in reversed(range(T)):
        J = J @ torch.diag(1 - states[k] ** 2) @ W_hh
    torch.testing.assert_close(J, J_auto)
    assert torch.linalg.matrix_norm(J, ord=2) <= 0.8**T, "bound (10.6) violated"


def test_bigram_baseline_on_shakespeare():
    text = shakespeare()
    vocab = CharVocab(text)
    train, val = train_val_split(vocab.encode(text))
    V = len(vocab)
    counts = torch.ones(V, V)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1), accumulate=True)
    loss = float(-(counts / counts.sum(1, keepdim=True)).log()[val[:-1], val[1:]].mean())
    assert 2.5 < loss < 2.7, f"the bigram baseline of chapter 10 states 2.60 nats/char; got {loss:.3f}"
