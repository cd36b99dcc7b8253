"""Chapter 14 checks, on the chapter's own code: scaled dot-product attention against the fused
kernel, the from-scratch multi-head attention against ``nn.MultiheadAttention`` and the library
block (weights copied across, over a grid of masks and head counts), positions, the
encoder-decoder's masks, greedy decoding, and the exercise."""

import math

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn

from nnbook.attention import MultiHeadAttention
from nnbook.dates import date_tensors
from nnbook.exercises import check

ch = load_chapter("14")


def pad_of(B, S, lengths):
    """(B, S) True at padding, after ``lengths[b]`` real keys."""
    return torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]


MASKS = ["none", "padding", "causal", "causal+padding", "random"]


SHAPES = [(3, 4, 9, 9, 16, 16), (2, 1, 5, 5, 8, 3), (1, 8, 1, 1, 4, 4), (2, 2, 6, 11, 32, 8)]
SDPA_CASES = [(kind, *shape) for kind in MASKS for shape in SHAPES
              if "causal" not in kind or shape[2] == shape[3]]  # causal: as many queries as keys


@pytest.mark.parametrize("kind,B,h,T,S,dk,dv", SDPA_CASES)
def test_attention_matches_the_fused_kernel_forward_and_backward(kind, B, h, T, S, dk, dv):
    # catches: a missing 1/sqrt(d_k), a softmax over queries instead of keys, an inverted mask
    g = torch.Generator().manual_seed(0)
    Q = torch.randn(B, h, T, dk, generator=g).requires_grad_()
    K = torch.randn(B, h, S, dk, generator=g).requires_grad_()
    V = torch.randn(B, h, S, dv, generator=g).requires_grad_()
    pad = pad_of(B, S, [max(1, S - 3 * b) for b in range(B)])
    mask = {"none": None, "padding": ch.padding_mask(pad), "causal": ch.causal_mask(S),
            "causal+padding": ch.padding_mask(pad) & ch.causal_mask(S),
            "random": torch.rand(B, 1, T, S, generator=g) < 0.6}[kind]
    if mask is not None:
        mask = mask | (torch.arange(S) == 0)  # every query may look at key 0: no empty row
    ch.assert_same(lambda: ch.attention(Q, K, V, mask)[0],
                   lambda: F.scaled_dot_product_attention(Q, K, V, attn_mask=mask), [Q, K, V])


def test_masked_keys_get_weight_zero_and_cannot_change_the_output():
    g = torch.Generator().manual_seed(1)
    Q, K, V = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    pad = pad_of(2, 6, [6, 4])
    mask = ch.padding_mask(pad) & ch.causal_mask(6)
    out, w = ch.attention(Q, K, V, mask)
    assert torch.all(w.masked_select(~mask.expand_as(w)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 6))
    K2, V2 = K.clone(), V.clone()
    K2[1, :, 4:], V2[1, :, 4:] = 50.0, -50.0  # garbage in the padded keys and values
    torch.testing.assert_close(ch.attention(Q, K2, V2, mask)[0], out)


def test_causal_and_padding_masks_by_hand():
    assert torch.equal(ch.causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).bool())
    got = ch.padding_mask(torch.tensor([[False, True, True]]))
    assert torch.equal(got, torch.tensor([True, False, False]).view(1, 1, 1, 3))


def copied_modules(d_model, n_heads, seed=0):
    torch.manual_seed(seed)
    scratch = ch.MultiHeadAttentionScratch(d_model=d_model, n_heads=n_heads)
    torch_mha = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    lib = MultiHeadAttention(d_model=d_model, n_heads=n_heads)
    ch.copy_into_torch(scratch, torch_mha)
    ch.copy_into_torch(scratch, lib)
    return scratch, torch_mha, lib


KINDS = ["self", "self+padding", "self+causal", "self+causal+padding", "cross", "cross+padding"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_heads", [1, 2, 4, 8])
def test_scratch_mha_equals_torch_and_library_with_copied_weights(kind, n_heads):
    # catches: heads split or concatenated in the wrong order, W^Q/W^K/W^V stacked wrongly,
    # a mask convention flipped between the three implementations
    B, S, T, D = 3, 7, 5, 32
    scratch, torch_mha, lib = copied_modules(D, n_heads, seed=n_heads)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, S, D, generator=g).requires_grad_()
    cross = kind.startswith("cross")
    mem = torch.randn(B, T, D, generator=g).requires_grad_() if cross else x
    n_keys = T if cross else S
    pad = pad_of(B, n_keys, [n_keys, n_keys - 2, 1]) if "padding" in kind else None
    causal = "causal" in kind
    mask = None
    if pad is not None:
        mask = ch.padding_mask(pad)
    if causal:
        mask = ch.causal_mask(S) if mask is None else mask & ch.causal_mask(S)
    outs = {
        "scratch": lambda: scratch(x, mem, mask)[0],
        "torch": lambda: torch_mha(x, mem, mem, key_padding_mask=pad,
                                   attn_mask=~ch.causal_mask(S) if causal else None,
                                   need_weights=False)[0],
        "library": lambda: lib(x, None if not cross else mem, key_padding_mask=pad, causal=causal),
    }
    inputs = [x, mem] if cross else [x]
    params_scratch = [scratch.W_q.weight, scratch.W_k.weight, scratch.W_v.weight, scratch.W_o.weight,
                      scratch.W_q.bias, scratch.W_k.bias, scratch.W_v.bias, scratch.W_o.bias]
    up = torch.randn(B, S, D, generator=g)
    ref = outs["scratch"]()
    ref_grads = torch.autograd.grad(ref, inputs + params_scratch, up)
    stacked = lambda gs: (torch.cat(gs[0:3]), gs[3], torch.cat(gs[4:7]), gs[7])  # like in_proj
    for name, params in [("torch", [torch_mha.in_proj_weight, torch_mha.out_proj.weight,
                                    torch_mha.in_proj_bias, torch_mha.out_proj.bias]),
                         ("library", [lib.in_proj.weight, lib.out_proj.weight, lib.in_proj.bias,
                                      lib.out_proj.bias])]:
        out = outs[name]()
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, msg=f"{name}: forward")
        grads = torch.autograd.grad(out, inputs + params, up)
        for a, b in zip(grads[:len(inputs)], ref_grads[:len(inputs)], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name}: input gradient")
        for a, b in zip(grads[len(inputs):], stacked(ref_grads[len(inputs):]), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name}: parameter gradient")


@pytest.mark.parametrize("n_heads", [1, 4])
def test_scratch_weights_equal_the_library_weights(n_heads):
    # the per-head attention maps the chapter draws come from the library block
    scratch, _, lib = copied_modules(16, n_heads)
    g = torch.Generator().manual_seed(3)
    x, mem = torch.randn(2, 6, 16, generator=g), torch.randn(2, 4, 16, generator=g)
    pad = pad_of(2, 4, [4, 2])
    with torch.no_grad():
        _, w_scratch = scratch(x, mem, ch.padding_mask(pad))
        _, w_lib = lib(x, mem, key_padding_mask=pad, need_weights=True)
    assert w_scratch.shape == (2, n_heads, 6, 4)
    torch.testing.assert_close(w_lib, w_scratch)


def test_assert_same_notices_a_wrong_gradient():
    x = torch.randn(5, requires_grad=True)
    ch.assert_same(lambda: x * 2, lambda: x + x, [x])
    with pytest.raises(AssertionError):  # same forward, different backward
        ch.assert_same(lambda: x * 2, lambda: x.detach() * 2 + (x - x.detach()), [x])


def test_sinusoidal_positions_values_and_offset_rotation():
    # catches: sin and cos swapped, or a frequency exponent of i/d instead of 2i/d
    d, k = 32, 5
    pe = ch.sinusoidal_positions(80, d)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * (d // 2)))
    torch.testing.assert_close(pe[3, 2], torch.tensor(math.sin(3 * 10000 ** (-2 / d))))
    omega = 10000 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    R = torch.zeros(d, d)
    for i, w in enumerate(omega):
        c, s = math.cos(k * w), math.sin(k * w)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]])
    torch.testing.assert_close(pe[:-k] @ R, pe[k:], atol=1e-4, rtol=1e-4)


def test_dot_product_variance_grows_like_d_k():
    # (14.2), the reason for the scale in ch.attention
    g = torch.Generator().manual_seed(0)
    for d_k in [4, 64, 256]:
        dots = (torch.randn(20_000, d_k, generator=g) * torch.randn(20_000, d_k, generator=g)).sum(-1)
        assert abs(dots.var().item() / d_k - 1) < 0.05
        assert abs((dots / math.sqrt(d_k)).var().item() - 1) < 0.05


@pytest.fixture(scope="module")
def dates():
    return date_tensors(n_train=16, n_val=4, n_test=4, seed=1)


@pytest.fixture(scope="module")
def transformer(dates):
    torch.manual_seed(0)
    v = dates.vocab
    return ch.Transformer(n_src=len(v.src_chars), n_tgt=len(v.tgt_chars), bos=v.BOS, d_model=16,
                          n_heads=2, d_ff=32, n_layers=2).eval()


def test_decoder_is_causal(transformer, dates):
    # catches: the decoder's self-attention without its causal mask (teacher forcing would leak)
    x, y = dates.x_train[:4], dates.y_train[:4]
    y2 = y.clone()
    y2[:, 5:] = (y2[:, 5:] + 3) % 10
    with torch.no_grad():
        a, b = transformer(x, y), transformer(x, y2)
    torch.testing.assert_close(a[:, :6], b[:, :6])  # position t reads <s> and y[:t]
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_source_padding_is_ignored(transformer, dates):
    # catches: the encoder or the cross-attention not masking the source padding
    x, y = dates.x_train[:4], dates.y_train[:4]
    x_longer = torch.cat([x, torch.zeros(4, 3, dtype=torch.long)], dim=1)  # 32 = max_len
    with torch.no_grad():
        memory, pad = transformer.encode(x)
        memory_longer, _ = transformer.encode(x_longer)
        torch.testing.assert_close(memory_longer[:, :x.shape[1]][~pad], memory[~pad])
        torch.testing.assert_close(transformer(x_longer, y), transformer(x, y))


def test_greedy_is_teacher_forcing_on_its_own_predictions(transformer, dates):
    # catches: greedy decoding reading the wrong position's logits or dropping <s>
    x = dates.x_train[:6]
    pred, weights = transformer.greedy(x, need_weights=True)
    assert pred.shape == (6, 10) and len(weights) == 2 and weights[-1].shape == (6, 2, 10, x.shape[1])
    with torch.no_grad():
        forced = transformer(x, pred)
    torch.testing.assert_close(forced.argmax(-1), pred)


def test_exact_match_in_chunks(transformer, dates):
    x = dates.x_train[:7]
    pred = transformer.greedy(x)[0]
    assert ch.exact_match(transformer, x, pred, batch_size=3) == 1.0
    wrong = pred.clone()
    wrong[1, 0] = (wrong[1, 0] + 1) % 10
    assert ch.exact_match(transformer, x, wrong, batch_size=3) == pytest.approx(6 / 7)


def test_seq_loss_is_the_mean_cross_entropy_over_characters():
    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(3, 10, 12, generator=g), torch.randint(0, 12, (3, 10), generator=g)
    want = torch.stack([F.cross_entropy(logits[b], y[b]) for b in range(3)]).mean()
    torch.testing.assert_close(ch.seq_loss(logits, y), want)


def test_attention_scale_defaults_to_one_over_sqrt_dk_and_can_be_switched_off():
    """Catches a scale applied twice, or ignored: scale=None must be the fused (14.1), scale=1.0
    the raw softmax(Q K^T) V."""
    g = torch.Generator().manual_seed(5)
    Q, K, V = (torch.randn(2, 5, 64, generator=g) for _ in range(3))
    torch.testing.assert_close(ch.attention(Q, K, V)[0], F.scaled_dot_product_attention(Q, K, V))
    torch.testing.assert_close(ch.attention(Q, K, V, scale=1.0)[0], (Q @ K.mT).softmax(-1) @ V)


def test_lookup_batch_targets_the_value_of_the_key_the_query_copies():
    """Catches a target taken from another key than the one the query was built from."""
    keys, values, query, target = ch.lookup_batch(32, 8, 16, noise=0.0,
                                                  generator=torch.Generator().manual_seed(0))
    assert keys.shape == (32, 8, 16) and values.shape == (32, 8, 1) and query.shape == (32, 1, 16)
    match = (keys == query).all(-1)                           # (32, 8): exactly one True per row
    assert match.sum(1).eq(1).all()
    torch.testing.assert_close(values[match][:, 0], target)


def test_train_lookup_learns_and_unscaled_starts_peaked():
    """Catches a probe that does not train (wrong sign, detached weights) or ignores `scaled`."""
    cpu = torch.device("cpu")
    scaled, first_scaled = ch.train_lookup(64, scaled=True, steps=150, device=cpu)
    _, first_unscaled = ch.train_lookup(64, scaled=False, steps=1, device=cpu)
    assert sum(scaled[-20:]) / 20 < 0.5 * sum(scaled[:20]) / 20
    assert first_unscaled > 2 * first_scaled


def solved_combined_mask(key_is_pad, T):
    return ch.causal_mask(T) & ch.padding_mask(key_is_pad)


def test_exercise_combined_mask(capsys):
    assert check("Exercise 3", ch.combined_mask, ch.test_combined) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_combined_mask, ch.test_combined) is True
    with pytest.raises(AssertionError, match="expected"):  # causal only: padding forgotten
        check("Exercise 3", lambda pad, T: ch.causal_mask(T).expand(len(pad), 1, T, T), ch.test_combined)
    with pytest.raises(AssertionError, match=r"\(B, 1, T, T\)"):
        check("Exercise 3", lambda pad, T: ch.causal_mask(T), ch.test_combined)
