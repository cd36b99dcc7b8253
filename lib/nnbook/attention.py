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
    for name, n in (("n_queries", n_queries), ("n_keys", n_keys)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int; got {n!r}")
    if causal and n_queries != n_keys:
        raise ValueError(f"a causal mask needs as many queries as keys; got {n_queries} and {n_keys}")
    allowed = None
    if causal:
        dev = device if device is not None or key_padding_mask is None else key_padding_mask.device
        allowed = torch.ones(n_queries, n_keys, dtype=torch.bool, device=dev).tril()
    if key_padding_mask is not None:
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != n_keys:
            raise ValueError(f"key_padding_mask must be (B, {n_keys}); got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.dtype != torch.bool:
            raise ValueError(f"key_padding_mask must be bool (True at padding); got {key_padding_mask.dtype}")
        keep = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
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
    if isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions < 1:
        raise ValueError(f"n_positions must be a positive int; got {n_positions!r}")
    if isinstance(d_head, bool) or not isinstance(d_head, int) or d_head < 2 or d_head % 2:
        raise ValueError(f"rotary embeddings rotate pairs of coordinates: d_head must be a positive even "
                         f"int; got {d_head!r}")
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float32, device=device) / d_head)  # (d_head/2,)
    angles = torch.arange(n_positions, dtype=torch.float32, device=device)[:, None] * theta  # (T, d_head/2)
    return torch.complex(angles.cos(), angles.sin())


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate each pair ``(x_2j, x_2j+1)`` of the last dimension of ``x`` by its angle.

    Read as the complex number ``x_2j + i x_2j+1``, the pair is rotated by multiplying it with
    ``rotation[..., j]`` (from :func:`rotary_angles`): one complex product instead of the 2 x 2
    rotation matrix written out. ``x`` is ``(..., T, d_head)``, ``rotation`` ``(T, d_head / 2)``.
    """
    if x.dim() < 1 or not x.is_floating_point() or x.shape[-1] % 2:
        raise ValueError(f"x must be a floating tensor (..., T, d_head) with an even d_head; got {x.dtype} "
                         f"of shape {tuple(x.shape)}")
    d_half = x.shape[-1] // 2
    lead = x.shape[x.dim() - rotation.dim():-1] if rotation.dim() <= x.dim() else None
    if not rotation.is_complex() or rotation.shape[-1] != d_half or lead != rotation.shape[:-1]:
        raise ValueError(f"x is {tuple(x.shape)}, so rotation must be complex (T, {d_half}) with T = "
                         f"x.shape[-2] (from rotary_angles); got {rotation.dtype} {tuple(rotation.shape)}")
    if rotation.device != x.device:
        raise ValueError(f"rotation is on {rotation.device} but x on {x.device}")
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
        for name, n in (("d_model", d_model), ("n_heads", n_heads)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name} must be a positive int; got {n!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model must be divisible by n_heads; got {d_model} and {n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.rotary = rotary
        if rotary and self.d_head % 2:
            raise ValueError(f"rotary embeddings need an even head size; got {self.d_head}")
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _check_inputs(self, query, key_value, key_padding_mask, causal) -> None:
        """Raise ValueError naming the expected and the received shape, dtype or device."""
        D, weight = self.d_model, self.in_proj.weight
        if not isinstance(query, torch.Tensor) or query.dim() != 3 or query.shape[-1] != D:
            got = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
            raise ValueError(f"query must be (B, T, {D}); got {got}")
        if query.dtype != weight.dtype:
            raise ValueError(f"query must have the module's dtype {weight.dtype}; got {query.dtype}")
        if query.device != weight.device:
            raise ValueError(f"query is on {query.device} but the module on {weight.device}; move one "
                             "of them (e.g. module.to(query.device))")
        B, T = query.shape[:2]
        S = T
        if key_value is not None:
            is_tensor = isinstance(key_value, torch.Tensor)
            if not is_tensor or key_value.dim() != 3 or key_value.shape[0] != B or key_value.shape[-1] != D:
                got = tuple(key_value.shape) if is_tensor else type(key_value).__name__
                raise ValueError(f"key_value must be ({B}, S, {D}) for a query of shape "
                                 f"{tuple(query.shape)}; got {got}")
            if key_value.dtype != query.dtype or key_value.device != query.device:
                raise ValueError(f"key_value must match the query's dtype and device ({query.dtype}, "
                                 f"{query.device}); got {key_value.dtype} on {key_value.device}")
            S = key_value.shape[1]
        if causal and S != T:
            raise ValueError(f"causal attention needs as many queries as keys; got {T} queries over {S} keys")
        if key_padding_mask is not None:
            if key_padding_mask.shape != (B, S) or key_padding_mask.dtype != torch.bool:
                raise ValueError(f"key_padding_mask must be bool ({B}, {S}), True at padding; got "
                                 f"{key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}")
            if key_padding_mask.device != query.device:
                raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but the query on "
                                 f"{query.device}")

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
        self._check_inputs(query, key_value, key_padding_mask, causal)
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
