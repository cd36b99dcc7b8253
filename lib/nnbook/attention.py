"""Multi-head attention on PyTorch's fused kernel, the block the Transformer chapters share.

Chapter 14 derives scaled dot-product attention and multi-head attention from scratch and
asserts that its version agrees with :class:`MultiHeadAttention`; chapters 14 and 16 build
their models from it. The computation is that of Vaswani et al. (2017), "Attention is all you
need": ``softmax(Q K^T / sqrt(d_k) + mask) V`` per head, heads concatenated and projected.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(
    n_queries: int,
    n_keys: int,
    *,
    key_padding_mask: torch.Tensor | None = None,
    causal: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor | None:
    """The boolean mask ``F.scaled_dot_product_attention`` takes: True where a query may look.

    Args:
        n_queries, n_keys: the sequence lengths T and S.
        key_padding_mask: ``(B, S)``, True at padding keys (``nn.MultiheadAttention``'s convention).
        causal: query ``i`` may only look at keys ``j <= i`` (needs ``n_queries == n_keys``).
        device: where to build the causal part (default: that of ``key_padding_mask``).

    Shapes:
        Returns ``(B, 1, T, S)`` with padding, ``(T, S)`` causal only, or None for neither.
    """
    if causal and n_queries != n_keys:
        raise ValueError(f"a causal mask needs as many queries as keys; got {n_queries} and {n_keys}")
    allowed = None
    if causal:
        dev = device if device is not None or key_padding_mask is None else key_padding_mask.device
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=dev).tril()
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != n_keys:
            raise ValueError(f"key_padding_mask must be (B, {n_keys}); got {tuple(key_padding_mask.shape)}")
        keep = ~key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        allowed = keep if allowed is None else keep & allowed
    return allowed


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, self- or cross-, on the fused kernel.

    The projections are stored like ``nn.MultiheadAttention``'s (``in_proj`` holds the query,
    key and value weights stacked, ``out_proj`` the output), so weights copy one to one.

    Args:
        d_model: model width D (input and output size).
        n_heads: number of heads h; each has size ``D / h``.
        bias: whether the projections have biases.

    Shapes:
        ``query (B, T, D)``, ``key_value (B, S, D)`` (default: the query, i.e. self-attention),
        ``key_padding_mask (B, S)`` True at padding; output ``(B, T, D)``; with
        ``need_weights=True`` also the attention weights ``(B, h, T, S)``.
    """

    def __init__(self, *, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads; got {d_model} and {n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, h, T, d_head)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        *,
        key_padding_mask: torch.Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ):
        D = self.d_model
        if key_value is None:  # self-attention: one matmul for Q, K and V
            q, k, v = self.in_proj(query).split(D, dim=-1)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            q = F.linear(query, w[:D], None if b is None else b[:D])
            k, v = F.linear(key_value, w[D:], None if b is None else b[D:]).split(D, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)  # (B, h, T or S, d_head)
        T, S = q.shape[2], k.shape[2]
        if causal and key_padding_mask is None and not need_weights:
            mask, is_causal = None, True  # the kernel's own causal path
        else:
            mask = attention_mask(T, S, key_padding_mask=key_padding_mask, causal=causal, device=q.device)
            is_causal = False
        if need_weights:  # the fused kernel does not return weights: compute them explicitly
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, h, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(query.shape[0], T, D)  # (B, T, D): heads concatenated
        out = self.out_proj(out)
        return (out, weights) if need_weights else out
