"""Chapter 13 checks: additive (Bahdanau) attention and the packed GRU encoder."""

import math

import pytest
import torch
from torch import nn

from nnbook.dates import date_tensors


def additive_attention(s, Uh, h, mask, W_a, v_a):
    """(13.3)-(13.5): context (B, 2H) and weights (B, S); as in the notebook."""
    e = torch.tanh(Uh + (s @ W_a.T)[:, None, :]) @ v_a
    e = e.masked_fill(~mask, float("-inf"))
    alpha = e.softmax(dim=-1)
    return (alpha[:, :, None] * h).sum(dim=1), alpha


def additive_attention_loop(s, Uh, h, mask, W_a, v_a):
    B, S, _ = h.shape
    c, alpha = torch.zeros(B, h.shape[2], dtype=h.dtype), torch.zeros(B, S, dtype=h.dtype)
    for b in range(B):
        real = [j for j in range(S) if mask[b, j]]
        e = torch.stack([v_a @ torch.tanh(W_a @ s[b] + Uh[b, j]) for j in real])
        a = torch.exp(e - e.max()) / torch.exp(e - e.max()).sum()
        for k, j in enumerate(real):
            alpha[b, j] = a[k]
            c[b] += a[k] * h[b, j]
    return c, alpha


@pytest.fixture
def args():
    g = torch.Generator().manual_seed(0)
    B, S, H2, A, Hd = 3, 6, 4, 5, 3
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4]).bool()
    f64 = dict(generator=g, dtype=torch.float64)
    return [torch.randn(B, Hd, **f64), torch.randn(B, S, A, **f64), torch.randn(B, S, H2, **f64), mask,
            torch.randn(A, Hd, **f64), torch.randn(A, **f64)]


def test_vectorized_equals_loop(args):
    for got, want in zip(additive_attention(*args), additive_attention_loop(*args), strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck(args):
    grad_args = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    assert torch.autograd.gradcheck(additive_attention, grad_args)


def test_padding_gets_zero_weight_and_cannot_change_the_context(args):
    c, alpha = additive_attention(*args)
    mask = args[3]
    assert torch.all(alpha[~mask] == 0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(3, dtype=torch.float64))
    h = args[2].clone()
    h[~mask] = 99.0
    torch.testing.assert_close(additive_attention(args[0], args[1], h, *args[3:])[0], c)


def test_hand_example_from_the_intuition():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    alpha = torch.tensor([math.log(2.0), 0.0, 0.0]).softmax(0)
    torch.testing.assert_close(alpha, torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(alpha @ h, torch.tensor([0.75, 0.5]))


def test_packed_bidirectional_gru_ignores_padding():
    torch.manual_seed(0)
    data = date_tensors(8, 4, seed=1)
    embed, gru = nn.Embedding(len(data.vocab.src_chars), 8, padding_idx=0), nn.GRU(8, 6, batch_first=True,
                                                                                   bidirectional=True)

    def summary(x):
        lengths = (x != 0).sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(embed(x), lengths, batch_first=True, enforce_sorted=False)
        _, h_last = gru(packed)
        return torch.cat([h_last[0], h_last[1]], -1)

    with torch.no_grad():
        x = data.x_train[:4]
        batch = summary(x)
        for b in range(4):
            n = int((x[b] != 0).sum())
            torch.testing.assert_close(batch[b:b + 1], summary(x[b:b + 1, :n]))
