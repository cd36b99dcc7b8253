"""Multi-head attention on PyTorch's fused kernel, the block the Transformer chapters share.

Chapter 14 derives scaled dot-product attention and multi-head attention from scratch and
asserts that its version agrees with :class:`MultiHeadAttention`; chapters 14 and 16 build
their models from it. The computation is that of Vaswani et al. (2017), "Attention is all you
need": ``softmax(Q K^T / sqrt(d_k) + mask) V`` per head, heads concatenated and projected.
Optionally, queries and keys are rotated by their positions first (rotary position embedding,
Su et al., "RoFormer", 2021), which chapter 16 derives and uses.
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


def rotary_angles(
    n_positions: int, d_head: int, *, base: float = 10_000.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """The rotations of rotary position embedding as unit complex numbers ``exp(i m theta_j)``.

    ``theta_j = base^(-2j / d_head)``. Returns a complex ``(n_positions, d_head // 2)`` tensor: row
    ``m`` is position ``m``, column ``j`` the ``j``-th pair of coordinates, whose angle turns fastest
    for ``j = 0`` (one radian per position) and slowest for the last pair.
    """
    if d_head % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates: d_head must be even; got {d_head}")
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32, device=device) / d_head)  # (d_head/2,)
    angles = torch.arange(n_positions, dtype=torch.float32, device=device)[:, None] * theta  # (T, d_head/2)
    return torch.complex(angles.cos(), angles.sin())


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x_2j, x_2j+1)`` of the last dimension of ``x`` by its angle.

    Read as the complex number ``x_2j + i x_2j+1``, the pair is rotated by multiplying it with
    ``rotation[..., j]`` (from :func:`rotary_angles`): one complex product instead of the 2 x 2
    rotation matrix written out. ``x`` is ``(..., T, d_head)``, ``rotation`` ``(T, d_head / 2)``.
    """
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    pairs = (x.float() if low_precision else x).unflatten(-1, (-1, 2))  # (..., T, d_head/2, 2)
    try:
        pairs = torch.view_as_complex(pairs)
    except RuntimeError:  # a layout complex numbers cannot view: copy it first
        pairs = torch.view_as_complex(pairs.contiguous())
    out = torch.view_as_real(pairs * rotation.to(pairs.dtype)).flatten(-2)
    return out.to(x.dtype) if low_precision else out


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, self- or cross-, on the fused kernel.

    The projections are stored like ``nn.MultiheadAttention``'s (``in_proj`` holds the query,
    key and value weights stacked, ``out_proj`` the output), so weights copy one to one.

    Args:
        d_model: model width D (input and output size).
        n_heads: number of heads h; each has size ``D / h``.
        bias: whether the projections have biases.
        rotary: rotate queries and keys by their positions (:func:`apply_rotary`) before the
            scores, so that a score depends on the two positions only through their offset.
            Self-attention only; ``d_model / n_heads`` must be even.

    Shapes:
        ``query (B, T, D)``, ``key_value (B, S, D)`` (default: the query, i.e. self-attention),
        ``key_padding_mask (B, S)`` True at padding; output ``(B, T, D)``; with
        ``need_weights=True`` also the attention weights ``(B, h, T, S)``.
    """

    def __init__(self, *, d_model: int, n_heads: int, bias: bool = True, rotary: bool = False):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads; got {d_model} and {n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.rotary = rotary
        if rotary and self.d_head % 2:
            raise ValueError(f"rotary embeddings need an even head size; got {self.d_head}")
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
        if self.rotary:
            if key_value is not None:
                raise ValueError("rotary embeddings are for self-attention: queries and keys share positions")
            rotation = rotary_angles(T, self.d_head, device=q.device)
            q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
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
