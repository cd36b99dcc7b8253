"""Chapter 14 checks: scaled dot-product attention, multi-head attention, positions, masks."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnbook.attention import MultiHeadAttention


def attention(Q, K, V, mask=None):
    scores = Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ V, weights


def causal_mask(T):
    return torch.ones(T, T, dtype=torch.bool).tril()


def padding_mask(key_is_pad):
    return ~key_is_pad[:, None, None, :]


class MultiHeadAttentionScratch(nn.Module):
    def __init__(self, *, d_model, n_heads):
        super().__init__()
        self.h, self.d_k = n_heads, d_model // n_heads
        self.W_q, self.W_k = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.W_v, self.W_o = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def split(self, x):
        return x.view(x.shape[0], x.shape[1], self.h, self.d_k).transpose(1, 2)

    def forward(self, x_q, x_kv, mask=None):
        Q, K, V = self.split(self.W_q(x_q)), self.split(self.W_k(x_kv)), self.split(self.W_v(x_kv))
        out, _ = attention(Q, K, V, mask)
        return self.W_o(out.transpose(1, 2).reshape(x_q.shape[0], x_q.shape[1], -1))


def sinusoidal_positions(T, d):
    p = torch.arange(T, dtype=torch.float32)[:, None]
    omega = 10000 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    pe = torch.zeros(T, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(p * omega), torch.cos(p * omega)
    return pe


def _grads(out, wrt, upstream):
    return torch.autograd.grad(out, wrt, upstream)


@pytest.mark.parametrize("which", ["none", "padding", "causal", "both"])
def test_attention_matches_fused_kernel_forward_and_backward(which):
    g = torch.Generator().manual_seed(0)
    B, h, S, dk = 3, 4, 9, 16
    Q, K, V = (torch.randn(B, h, S, dk, generator=g).requires_grad_() for _ in range(3))
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[1, -3:] = True
    mask = {"none": None, "padding": padding_mask(pad), "causal": causal_mask(S),
            "both": padding_mask(pad) & causal_mask(S)}[which]
    ours, ref = attention(Q, K, V, mask)[0], F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    up = torch.randn_like(ours)
    for a, b in zip(_grads(ours, [Q, K, V], up), _grads(ref, [Q, K, V], up), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _copied(d_model=32, n_heads=4):
    torch.manual_seed(0)
    scratch = MultiHeadAttentionScratch(d_model=d_model, n_heads=n_heads)
    torch_mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    lib = MultiHeadAttention(d_model=d_model, n_heads=n_heads)
    with torch.no_grad():
        w = torch.cat([scratch.W_q.weight, scratch.W_k.weight, scratch.W_v.weight])
        b = torch.cat([scratch.W_q.bias, scratch.W_k.bias, scratch.W_v.bias])
        torch_mha.in_proj_weight.copy_(w)
        torch_mha.in_proj_bias.copy_(b)
        lib.in_proj.weight.copy_(w)
        lib.in_proj.bias.copy_(b)
        for m in (torch_mha, lib):
            m.out_proj.weight.copy_(scratch.W_o.weight)
            m.out_proj.bias.copy_(scratch.W_o.bias)
    return scratch, torch_mha, lib


@pytest.mark.parametrize("cross", [False, True])
def test_scratch_mha_matches_torch_and_lib(cross):
    scratch, torch_mha, lib = _copied()
    g = torch.Generator().manual_seed(2)
    B, S, T, D = 3, 9, 7, 32
    x = torch.randn(B, S, D, generator=g).requires_grad_()
    mem = torch.randn(B, T, D, generator=g).requires_grad_()
    if cross:
        pad = torch.zeros(B, T, dtype=torch.bool)
        pad[0, -2:] = True
        outs = [scratch(x, mem, padding_mask(pad)),
                torch_mha(x, mem, mem, key_padding_mask=pad, need_weights=False)[0],
                lib(x, mem, key_padding_mask=pad)]
        inputs = [x, mem]
    else:
        pad = torch.zeros(B, S, dtype=torch.bool)
        pad[1, -3:] = True
        outs = [scratch(x, x, padding_mask(pad) & causal_mask(S)),
                torch_mha(x, x, x, key_padding_mask=pad, attn_mask=~causal_mask(S), need_weights=False)[0],
                lib(x, key_padding_mask=pad, causal=True)]
        inputs = [x]
    up = torch.randn(B, S, D, generator=g)
    ref_grads = _grads(outs[0], inputs + [scratch.W_o.weight], up)
    for out, w_o in [(outs[1], torch_mha.out_proj.weight), (outs[2], lib.out_proj.weight)]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-5)
        for a, b in zip(_grads(out, inputs + [w_o], up), ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sinusoidal_offset_is_a_rotation():
    d, k = 32, 5
    pe = sinusoidal_positions(80, d)
    omega = 10000 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    R = torch.zeros(d, d)
    for i, w in enumerate(omega):
        c, s = math.cos(k * w), math.sin(k * w)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]])
    torch.testing.assert_close(pe[:-k] @ R, pe[k:], atol=1e-4, rtol=1e-4)


def test_dot_product_variance_grows_like_d_k():
    g = torch.Generator().manual_seed(0)
    for d_k in [4, 64, 256]:
        dots = (torch.randn(20_000, d_k, generator=g) * torch.randn(20_000, d_k, generator=g)).sum(-1)
        assert abs(dots.var().item() / d_k - 1) < 0.05
        assert abs((dots / math.sqrt(d_k)).var().item() - 1) < 0.05
