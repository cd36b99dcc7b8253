"""Chapter 13 checks, on the chapter's own code: additive attention and its uniform ablation,
the packed encoder, the three decoders' greedy loop, the training function, and the exercise."""

import math

import pytest
import torch
from chapters import load_chapter

from nnbook.dates import date_tensors
from nnbook.exercises import check

ch = load_chapter("13")


def attention_args(B=3, S=6, H2=4, A=5, Hd=3, lengths=(6, 4, 2), seed=0):
    """Random float64 arguments of ``additive_attention`` with right-padding after ``lengths``."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    return [torch.randn(B, Hd, **f64), torch.randn(B, S, A, **f64), torch.randn(B, S, H2, **f64), mask,
            torch.randn(A, Hd, **f64), torch.randn(A, **f64)]


GRID = [dict(), dict(B=1, S=1, lengths=(1,)), dict(B=4, S=9, H2=6, A=2, Hd=5, lengths=(9, 1, 5, 8)),
        dict(B=2, S=5, A=7, Hd=1, lengths=(5, 5))]


@pytest.mark.parametrize("shape", GRID)
def test_vectorized_equals_the_loop_transcription(shape):
    # catches: W_a applied on the wrong side, a softmax over the batch instead of positions,
    # the context summed over the wrong axis, padding counted in the normalization
    args = attention_args(**shape)
    for got, want in zip(ch.additive_attention(*args), ch.additive_attention_loop(*args), strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck():
    # catches: a non-differentiable step (e.g. argmax, detach) or a wrong custom gradient
    args = [a.clone().requires_grad_(a.is_floating_point()) for a in attention_args()]
    assert torch.autograd.gradcheck(ch.additive_attention, args)


@pytest.mark.parametrize("shape", GRID)
def test_padding_gets_zero_weight_and_cannot_change_the_context(shape):
    # catches: a missing or inverted mask (True = real character)
    args = attention_args(**shape)
    c, alpha = ch.additive_attention(*args)
    mask = args[3]
    assert torch.all(alpha[~mask] == 0)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(len(mask), dtype=torch.float64))
    h, Uh = args[2].clone(), args[1].clone()
    h[~mask], Uh[~mask] = 99.0, -7.0  # garbage in the padded annotations and their keys
    torch.testing.assert_close(ch.additive_attention(args[0], Uh, h, *args[3:])[0], c)


def test_a_large_score_makes_the_lookup_hard():
    # the intuition of section 1: scores scaled up turn the softmax into a one-hot lookup
    s, Uh, h, mask, W_a, v_a = attention_args(B=2, S=5, lengths=(5, 3))
    c, alpha = ch.additive_attention(s, Uh, h, mask, W_a, 1e4 * v_a)
    best = alpha.argmax(-1)
    torch.testing.assert_close(alpha, torch.nn.functional.one_hot(best, 5).double())
    torch.testing.assert_close(c, h[torch.arange(2), best])


@pytest.mark.parametrize("shape", GRID)
def test_additive_attention_with_zero_scores_is_the_uniform_ablation(shape):
    # v_a = 0 makes every score equal: the softmax over the real characters is uniform, so the
    # two functions must agree; a uniform average that counted the padding would not
    args = attention_args(**shape)
    additive = ch.additive_attention(*args[:5], torch.zeros_like(args[5]))
    for got, want in zip(ch.uniform_attention(args[2], args[3]), additive, strict=True):
        torch.testing.assert_close(got, want)


def test_uniform_attention_by_hand_and_its_guard():
    # the mean of the real annotations: (1 + 3) / 2 and 5; padding (99) must not count
    h = torch.tensor([[[1.0], [3.0], [99.0]], [[5.0], [99.0], [99.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    c, alpha = ch.uniform_attention(h, mask)
    torch.testing.assert_close(c, torch.tensor([[2.0], [5.0]]))
    torch.testing.assert_close(alpha, torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"mask must be \(B, S\) = \(2, 3\); got \(2, 2\)"):
        ch.uniform_attention(h, mask[:, :2])


def test_hand_example_from_the_intuition():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    alpha = torch.tensor([math.log(2.0), 0.0, 0.0]).softmax(0)
    torch.testing.assert_close(alpha, torch.tensor([0.5, 0.25, 0.25]))
    torch.testing.assert_close(alpha @ h, torch.tensor([0.75, 0.5]))


@pytest.fixture(scope="module")
def dates():
    return date_tensors(n_train=24, n_val=4, n_test=4, seed=1)


def small_model(vocab, *, attention, seed=0):
    torch.manual_seed(seed)
    return ch.Seq2Seq(n_src=len(vocab.src_chars), n_tgt=len(vocab.tgt_chars), bos=vocab.BOS, d_emb=8,
                      d_hidden=6, d_attn=5, attention=attention).eval()


def test_packed_encoder_ignores_padding(dates):
    # catches: packing dropped (the backward GRU would read the padding first), or lengths wrong
    torch.manual_seed(0)
    encoder = ch.Encoder(n_src=len(dates.vocab.src_chars), d_emb=8, d_hidden=6)
    x = dates.x_train[:6]  # (6, 29), right-padded
    with torch.no_grad():
        h_batch, summary_batch, mask = encoder(x)
        for b in range(6):
            n = int(mask[b].sum())
            h_alone, summary_alone, _ = encoder(x[b:b + 1, :n])  # no padding at all
            torch.testing.assert_close(summary_batch[b:b + 1], summary_alone)
            torch.testing.assert_close(h_batch[b:b + 1, :n], h_alone)
            assert torch.all(h_batch[b, n:] == 0), "padded annotations must be zero"


@pytest.mark.parametrize("attention", ["none", "uniform", "additive"])
def test_greedy_decoding_is_teacher_forcing_on_its_own_predictions(dates, attention):
    # catches: the greedy loop feeding the wrong step (off by one) or a stale state
    model = small_model(dates.vocab, attention=attention)
    x = dates.x_train[:8]
    with torch.no_grad():
        logits_greedy, alpha_greedy = model(x)
        pred = logits_greedy.argmax(-1)  # (8, 10)
        logits_forced, alpha_forced = model(x, pred)
    torch.testing.assert_close(logits_forced, logits_greedy)
    if attention == "none":
        assert alpha_greedy is None
    else:
        torch.testing.assert_close(alpha_forced, alpha_greedy)
        assert alpha_greedy.shape == (8, 10, x.shape[1])
    if attention == "uniform":  # the same weights 1 / length at every output step
        mask = (x != 0).float()
        torch.testing.assert_close(alpha_greedy, (mask / mask.sum(1, keepdim=True))[:, None]
                                   .expand(-1, 10, -1))


def test_decoder_refuses_an_unknown_kind(dates):
    with pytest.raises(ValueError, match="attention must be one of .*; got 'bahdanau'"):
        small_model(dates.vocab, attention="bahdanau")


def test_attention_model_ignores_padding_length(dates):
    # catches: the decoder attending to padding (the mask not passed from encoder to decoder)
    model = small_model(dates.vocab, attention="additive")
    x = dates.x_train[:5]
    x_longer = torch.cat([x, torch.zeros(5, 7, dtype=torch.long)], dim=1)  # more padding
    with torch.no_grad():
        (logits, alpha), (logits_longer, alpha_longer) = model(x), model(x_longer)
    torch.testing.assert_close(logits_longer, logits)
    torch.testing.assert_close(alpha_longer[..., :x.shape[1]], alpha)
    assert torch.all(alpha_longer[..., x.shape[1]:] == 0)


def test_without_attention_only_the_summary_reaches_the_decoder(dates):
    # the bottleneck of (13.2): the plain decoder must not read the annotations h; the
    # uniform and the additive decoders must
    x = dates.x_train[:4]
    start = torch.full((4,), dates.vocab.BOS)
    for attention in ("none", "uniform", "additive"):
        model = small_model(dates.vocab, attention=attention)
        with torch.no_grad():
            h, summary, mask = model.encoder(x)
            out = model.decoder(h, summary, mask, start, steps=10)[0]
            out_noise = model.decoder(torch.randn_like(h), summary, mask, start, steps=10)[0]
        assert torch.allclose(out_noise, out) is (attention == "none")


def test_predict_in_chunks_equals_one_batch(dates):
    # catches: chunks concatenated in the wrong order or the last partial chunk dropped
    model = small_model(dates.vocab, attention="additive")
    with torch.no_grad():
        for p in model.parameters():  # large weights: different dates, different predictions
            p.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(p.numel()))
    x = dates.x_train[:11]
    ids_one, alpha_one = ch.predict(model, x, batch_size=100)
    assert len(ids_one.unique(dim=0)) >= 5
    ids_chunks, alpha_chunks = ch.predict(model, x, batch_size=4)
    assert ids_one.shape == (11, 10)
    torch.testing.assert_close(ids_chunks, ids_one)
    torch.testing.assert_close(alpha_chunks, alpha_one)
    assert ch.exact_match(model, x, ids_one) == 1.0
    wrong = ids_one.clone()
    wrong[:3, 9] = (wrong[:3, 9] + 1) % 12
    assert ch.exact_match(model, x, wrong) == pytest.approx(8 / 11)


def test_train_seq2seq_learns_and_records_validation(dates, capsys):
    # catches: a training step that does not update (zero_grad after backward, no opt.step),
    # a history without the validation exact match the chapter plots
    data = date_tensors(n_train=96, n_val=16, n_test=4, seed=2)
    cfg = ch.Config(n_train=96, n_val=16, n_test=4, d_emb=8, d_hidden=16, d_attn=8, epochs=3,
                    batch_size=16, lr=1e-2)
    model, history = ch.train_seq2seq(data, cfg, attention="additive",
                                      device=torch.device("cpu"))
    assert history["epoch"] == [1, 2, 3]
    assert len(history["val_exact"]) == 3 and all(0 <= a <= 1 for a in history["val_exact"])
    assert history["train_loss"][-1] < history["train_loss"][0] - 0.2
    assert history["train_loss"][0] < math.log(12)  # below chance already in epoch 1
    assert "validation exact match" in capsys.readouterr().out


def solved_general_attention(s, h, mask, W):
    e = torch.einsum("bh,hk,bsk->bs", s, W, h).masked_fill(~mask, float("-inf"))
    alpha = e.softmax(-1)
    return (alpha[..., None] * h).sum(1), alpha


def unmasked_general_attention(s, h, mask, W):
    alpha = torch.einsum("bh,hk,bsk->bs", s, W, h).softmax(-1)  # forgets the padding
    return (alpha[..., None] * h).sum(1), alpha


def test_exercise_general_attention(capsys):
    assert check("Exercise 3", ch.general_attention, ch.test_general) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_general_attention, ch.test_general) is True
    with pytest.raises(AssertionError, match="padding 0"):
        check("Exercise 3", unmasked_general_attention, ch.test_general)
    with pytest.raises(AssertionError, match=r"\(c, alpha\)"):
        check("Exercise 3", lambda s, h, mask, W: None, ch.test_general)
