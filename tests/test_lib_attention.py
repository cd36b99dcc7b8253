"""Tests of nnbook.attention: the shared multi-head attention block."""

import pytest
import torch
from torch import nn

from nnbook.attention import MultiHeadAttention, apply_rotary, attention_mask, rotary_angles


def _pair(d_model=16, n_heads=4, seed=0):
    torch.manual_seed(seed)
    ours = MultiHeadAttention(d_model=d_model, n_heads=n_heads).double()
    ref = nn.MultiheadAttention(d_model, n_heads, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, ref


@pytest.mark.parametrize("cross,causal,padding", [  # causal masks are for self-attention only
    (False, False, False), (False, False, True), (False, True, False), (False, True, True),
    (True, False, False), (True, False, True)])
def test_matches_nn_multiheadattention_forward_and_backward(cross, causal, padding):
    ours, ref = _pair()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 7, 16, dtype=torch.float64, generator=g, requires_grad=True)
    kv = torch.randn(3, 5, 16, dtype=torch.float64, generator=g, requires_grad=True) if cross else q
    S = kv.shape[1]
    pad = torch.zeros(3, S, dtype=torch.bool)
    if padding:
        pad[1, -2:] = True
        pad[2, -1:] = True
    kpm = pad if padding else None
    causal_mask = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else None  # True = blocked
    out = ours(q, None if not cross else kv, key_padding_mask=kpm, causal=causal)
    want, _ = ref(q, kv, kv, key_padding_mask=kpm, attn_mask=causal_mask, need_weights=False)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), [q, ours.in_proj.weight, ours.out_proj.weight])
    grads_ref = torch.autograd.grad(want.square().sum(), [q, ref.in_proj_weight, ref.out_proj.weight])
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_weights_path_equals_fused_path_and_rows_sum_to_one():
    ours, ref = _pair()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    fused = ours(x, key_padding_mask=pad, causal=True)
    explicit, w = ours(x, key_padding_mask=pad, causal=True, need_weights=True)
    torch.testing.assert_close(fused, explicit)
    assert w.shape == (2, 4, 6, 6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 6, dtype=torch.float64))
    assert torch.all(w.triu(1) == 0), "causal: no weight on future keys"
    assert torch.all(w[1, :, :, 4:] == 0), "no weight on padding keys"
    _, w_ref = ref(x, x, x, key_padding_mask=pad, attn_mask=torch.ones(6, 6).bool().triu(1),
                   average_attn_weights=False)
    torch.testing.assert_close(w, w_ref)


def test_causal_output_ignores_the_future():
    ours, _ = _pair()
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    y = x.clone()
    y[:, 5:] = 7.0
    torch.testing.assert_close(ours(x, causal=True)[:, :5], ours(y, causal=True)[:, :5])


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="key_padding_mask must be"):
        attention_mask(3, 3, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal mask"):
        attention_mask(3, 4, causal=True)
    assert attention_mask(3, 3) is None
    with pytest.raises(ValueError, match="even head size"):
        MultiHeadAttention(d_model=12, n_heads=4, rotary=True)
    with pytest.raises(ValueError, match="self-attention"):
        MultiHeadAttention(d_model=8, n_heads=2, rotary=True)(torch.randn(1, 3, 8), torch.randn(1, 4, 8))


@pytest.mark.parametrize("call, message", [
    (lambda m: m(torch.randn(5, 8)), r"query must be \(B, T, 8\); got \(5, 8\)"),
    (lambda m: m(torch.randn(2, 5, 6)), r"query must be \(B, T, 8\); got \(2, 5, 6\)"),
    (lambda m: m([[1.0] * 8]), r"query must be \(B, T, 8\); got list"),
    (lambda m: m(torch.randn(2, 5, 8, dtype=torch.float64)), "module's dtype torch.float32"),
    (lambda m: m(torch.randn(2, 4, 8), torch.randn(2, 5, 7)), r"key_value must be \(2, S, 8\)"),
    (lambda m: m(torch.randn(2, 4, 8), torch.randn(3, 5, 8)), r"key_value must be \(2, S, 8\)"),
    (lambda m: m(torch.randn(2, 4, 8), torch.randn(2, 5, 8), causal=True),
     "causal attention needs as many queries as keys; got 4 queries over 5 keys"),
    (lambda m: m(torch.randn(2, 4, 8), key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
     r"key_padding_mask must be bool \(2, 4\)"),
    (lambda m: m(torch.randn(2, 4, 8), key_padding_mask=torch.zeros(2, 4)), r"key_padding_mask must be bool"),
    (lambda m: m(torch.randn(2, 4, 8, device="meta")), "query is on meta but the module on cpu"),
])
def test_bad_inputs_name_the_expected_shape(call, message):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        call(MultiHeadAttention(d_model=8, n_heads=2))


def test_bad_constructor_and_rotary_arguments_are_named():
    with pytest.raises(ValueError, match="n_heads must be a positive int; got 0"):
        MultiHeadAttention(d_model=8, n_heads=0)
    with pytest.raises(ValueError, match="n_queries must be a positive int"):
        attention_mask(0, 3)
    with pytest.raises(ValueError, match="key_padding_mask must be bool"):
        attention_mask(3, 3, key_padding_mask=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="d_head must be a positive even int; got 7"):
        rotary_angles(4, 7)
    with pytest.raises(ValueError, match="n_positions must be a positive int"):
        rotary_angles(0, 8)
    rotation = rotary_angles(5, 8)
    with pytest.raises(ValueError, match=r"rotation must be complex \(T, 4\)"):
        apply_rotary(torch.randn(2, 6, 8), rotation)  # 6 positions, 5 rotations
    with pytest.raises(ValueError, match=r"rotation must be complex \(T, 3\)"):
        apply_rotary(torch.randn(2, 5, 6), rotation)
    with pytest.raises(ValueError, match="even d_head"):
        apply_rotary(torch.randn(2, 5, 7), rotation)
    with pytest.raises(ValueError, match="rotation must be complex"):
        apply_rotary(torch.randn(2, 5, 8), rotation.real)


def test_rotary_is_a_rotation_by_position_times_frequency():
    rotation = rotary_angles(5, 8)
    assert rotation.shape == (5, 4) and rotation.is_complex()
    theta = 10_000.0 ** (-torch.arange(0, 8, 2) / 8)
    wrapped = torch.remainder(3 * theta + torch.pi, 2 * torch.pi) - torch.pi  # angles in (-pi, pi]
    torch.testing.assert_close(rotation[3].angle(), wrapped)
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    r = apply_rotary(x, rotation)
    assert r.dtype == x.dtype and r.shape == x.shape
    torch.testing.assert_close(r[:, 0], x[:, 0])  # position 0: angle 0
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))  # rotations keep lengths
    for m, j in [(2, 1), (4, 0), (1, 3)]:  # pair j is (x_2j, x_2j+1): a 2-D rotation by m * theta_j
        a = m * theta[j].double()
        R = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
        torch.testing.assert_close(r[:, m, 2 * j:2 * j + 2], x[:, m, 2 * j:2 * j + 2] @ R.T)
    torch.testing.assert_close(apply_rotary(x.transpose(0, 1).contiguous().transpose(0, 1), rotation), r)
    odd = torch.cat([torch.zeros(2, 5, 1, dtype=torch.float64), x], dim=-1)[..., 1:]  # odd strides
    torch.testing.assert_close(apply_rotary(odd, rotation), r)  # a layout complex numbers cannot view: copied
    half = apply_rotary(x.to(torch.bfloat16), rotation)
    assert half.dtype == torch.bfloat16 and (half.double() - r).abs().max() < 0.05


def test_rotary_scores_depend_only_on_the_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 16, dtype=torch.float64, generator=g)
    rotation = rotary_angles(40, 16)
    def score(m, n):  # query at position m, key at position n
        return apply_rotary(q, rotation[m]) @ apply_rotary(k, rotation[n])
    for m, n, shift in [(5, 2, 30), (9, 9, 17), (3, 0, 36)]:
        # the angles are float32: equal to float32's precision
        torch.testing.assert_close(score(m, n), score(m + shift, n + shift), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))


def test_rotary_attention_equals_rotating_by_hand_and_stays_causal():
    torch.manual_seed(0)
    rot = MultiHeadAttention(d_model=16, n_heads=2, rotary=True).double()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    fused = rot(x, causal=True)
    explicit, w = rot(x, causal=True, need_weights=True)
    torch.testing.assert_close(fused, explicit)
    q, k, v = rot.in_proj(x).split(16, dim=-1)
    q, k, v = rot._split(q), rot._split(k), rot._split(v)
    rotation = rotary_angles(6, 8)
    scores = apply_rotary(q, rotation) @ apply_rotary(k, rotation).transpose(-2, -1) / 8**0.5
    want = scores.masked_fill(torch.ones(6, 6).bool().triu(1), float("-inf")).softmax(-1)
    torch.testing.assert_close(w, want)
    y = x.clone()
    y[:, 4:] = 3.0
    torch.testing.assert_close(rot(y, causal=True)[:, :4], fused[:, :4])
    plain = MultiHeadAttention(d_model=16, n_heads=2).double()
    plain.load_state_dict(rot.state_dict())  # same parameters: rotary adds none
    assert not torch.allclose(plain(x, causal=True), fused)
