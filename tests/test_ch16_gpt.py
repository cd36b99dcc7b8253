"""Chapter 16 checks, on the chapter's own code: the parameter formula and published sizes, rotary
positions written out against the library, causality and weight tying of the chapter's GPT, the
evaluation windows and per-character losses, batches, the training loop's schedule and weight
average, sampling, and the exercise."""

import math

import pytest
import torch
from chapters import load_chapter
from torch import nn

from nnbook.attention import apply_rotary, rotary_angles
from nnbook.exercises import check

ch = load_chapter("16")


def gpt(V=76, n_ctx=64, L=2, d=32, n_head=4, rotary=True, seed=0):
    torch.manual_seed(seed)
    return ch.GPT(ch.GPTConfig(vocab_size=V, n_ctx=n_ctx, n_layer=L, n_head=n_head, d_model=d,
                               rotary=rotary))


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("V,n_ctx,L,d,h", [(76, 128, 3, 64, 4), (50, 32, 2, 48, 3), (1000, 128, 6, 96, 8),
                                           (7, 5, 1, 8, 2)])
def test_formula_equals_the_models_count(V, n_ctx, L, d, h, rotary):
    # catches: a missing bias or layer norm in the formula, or an untied output layer in the model
    want = ch.n_params_formula(V=V, n_ctx=n_ctx, L=L, d=d, learned_positions=not rotary)
    with torch.device("meta"):
        model = ch.GPT(ch.GPTConfig(vocab_size=V, n_ctx=n_ctx, n_layer=L, n_head=h, d_model=d,
                                    rotary=rotary))
    assert sum(p.numel() for p in model.parameters()) == want


def test_published_sizes():
    f = ch.n_params_formula
    assert f(V=50_257, n_ctx=1024, L=12, d=768) == 124_439_808  # GPT-2 small checkpoint
    assert f(V=50_257, n_ctx=1024, L=48, d=1600) == 1_557_611_200  # GPT-2 XL checkpoint
    assert round((f(V=40_478, n_ctx=512, L=12, d=768) - 2 * 768) / 1e6) == 117  # GPT-1, no final LN
    assert round(f(V=50_257, n_ctx=2048, L=96, d=12288) / 1e9) == 175


@pytest.mark.parametrize("d_h", [2, 8, 16])
def test_rotation_written_out_equals_the_library_and_depends_on_offsets(d_h):
    # catches: pairs (u_i, u_i+d/2) instead of (u_2i, u_2i+1), a wrong frequency, a sign flip
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, d_h, dtype=torch.float64, generator=g)
    rotation = rotary_angles(256, d_h)
    for m in [0, 1, 77, 255]:
        torch.testing.assert_close(ch.rotate(q, m).float(), apply_rotary(q.float(), rotation[m]),
                                   atol=1e-5, rtol=1e-5)
    scores = [ch.rotate(q, m) @ ch.rotate(k, m - 3) for m in (3, 50, 255)]
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0])  # (16.7): the offset, not the position
    assert abs(ch.rotate(q, 50) @ ch.rotate(k, 46) - scores[0]) > 1e-3
    torch.testing.assert_close(ch.rotate(q, 77).norm(), q.norm())
    torch.testing.assert_close(ch.rotate(q, 0), q)


@pytest.mark.parametrize("rotary", [True, False])
def test_gpt_is_causal_tied_and_uniform_at_init(rotary):
    # catches: attention without the causal mask, an untied head, a large output initialization
    model = gpt(rotary=rotary).eval()
    assert model.head.weight is model.tok_emb.weight
    x = torch.randint(0, 76, (2, 64), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 40:] = (y[:, 40:] + 1) % 76
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :40], model(y)[:, :40])
        assert not torch.allclose(model(x)[:, 40:], model(y)[:, 40:])
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
    assert abs(loss.item() - math.log(76)) < 0.05


def test_positions_matter_and_the_window_is_bounded():
    # catches: a model that ignores order (no rotary and no table), or silently reads past n_ctx
    x = torch.randint(0, 76, (1, 16), generator=torch.Generator().manual_seed(1))
    for rotary in (True, False):
        model = gpt(rotary=rotary, n_ctx=16).eval()
        for p in model.parameters():  # larger weights, so that order shows in the logits
            nn.init.normal_(p, 0.0, 0.5)
        x_swapped = x.clone()
        x_swapped[0, [3, 7]] = x[0, [7, 3]]
        with torch.no_grad():
            assert not torch.allclose(model(x)[0, -1], model(x_swapped)[0, -1], atol=1e-4)
        with pytest.raises(ValueError, match="n_ctx=16"):
            model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("n,T,stride", [(100, 10, 5), (101, 10, 10), (57, 8, 3), (10, 10, 4), (1000, 64, 32)])
def test_sliding_windows_score_every_target_once(n, T, stride):
    starts, scored = ch.windows(n, T, stride)
    positions = (starts[:, None] + torch.arange(T))[scored]
    assert torch.equal(positions.sort().values, torch.arange(n)), "each target must be scored exactly once"
    later = torch.arange(T).expand_as(scored)[1:][scored[1:]]  # context of the targets after window 0
    assert later.numel() == 0 or later.min() >= T - stride, "later windows must score only well-fed positions"


@pytest.mark.parametrize("n,T,stride,batch", [(500, 16, 8, 7), (301, 32, 32, 256), (100, 10, 3, 4)])
def test_char_losses_score_each_character_with_its_own_target(n, T, stride, batch):
    # catches: targets shifted by one, a window's scores written to the wrong positions
    torch.manual_seed(1)
    bigram = nn.Embedding(20, 20)  # logits depend on the current character only, not on the window
    source = torch.randint(0, 20, (n,))
    direct = nn.functional.cross_entropy(bigram(source[:-1]), source[1:], reduction="none")
    got = ch.char_losses(bigram, source, T, stride=stride, batch_size=batch)
    torch.testing.assert_close(got, direct)
    assert ch.evaluate_loss(bigram, source, T, stride=stride) == pytest.approx(direct.mean().item())


def test_get_batch_targets_are_the_next_characters():
    # catches: y not shifted by one, windows running past the end of the source
    source = torch.arange(50)
    x, y = ch.get_batch(source, 64, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert x.shape == y.shape == (64, 8)
    assert torch.equal(y, x + 1) and int(y.max()) < 50
    assert torch.equal(x[:, 1:], x[:, :-1] + 1)  # contiguous windows
    x2, _ = ch.get_batch(source, 64, 8, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(x, x2), "the same generator seed must give the same batch"


def tiny_config(**overrides):
    base = dict(n_ctx=16, n_layer=1, n_head=2, d_model=16, batch_size=8, steps=40, lr=1e-2, warmup=5,
                decay_frac=0.4, lr_floor=0.02)
    return ch.TrainConfig(**{**base, **overrides})


def test_train_follows_warmup_stable_decay_and_learns():
    # catches: a schedule that never warms up, never decays, or decays from the start; a loop
    # whose loss does not fall
    tc = tiny_config()
    model = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    source = torch.arange(2000) % 7
    log, averaged = ch.train(model, source, tc, steps=40, log_every=0)
    lr = log["lr"]
    assert log["step"] == list(range(1, 41))
    assert all(a < b for a, b in zip(lr[:4], lr[1:5])) and lr[4] == pytest.approx(tc.lr)  # warm-up
    assert all(v == pytest.approx(tc.lr) for v in lr[4:24])  # stable for the first 60%
    assert all(a > b for a, b in zip(lr[24:], lr[25:]))  # then a linear decay ...
    assert tc.lr_floor * tc.lr <= lr[-1] < 0.1 * tc.lr  # ... towards the floor
    assert sum(log["train_loss"][-5:]) / 5 < log["train_loss"][0] - 0.5


def test_weight_average_without_memory_is_the_last_weights():
    # catches: the moving average updated in the wrong direction (lerp towards the old weights)
    tc = tiny_config(ema_decay=0.0, steps=5)
    model = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    _, averaged = ch.train(model, torch.arange(200) % 7, tc, steps=5, log_every=0)
    for a, w in zip(averaged.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(a, w)
    tc = tiny_config(ema_decay=0.99, steps=5)
    model = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    start = [p.detach().clone() for p in model.parameters()]
    _, averaged = ch.train(model, torch.arange(200) % 7, tc, steps=5, log_every=0)
    lags = [not torch.equal(a, w) for a, w in zip(averaged.parameters(), model.parameters(), strict=True)]
    assert all(lags), "with memory, the average must lag the weights"
    moved = [not torch.equal(a, w0) for a, w0 in zip(averaged.parameters(), start, strict=True)]
    assert all(moved), "the average must follow the weights"


def test_make_model_is_seeded_and_sized():
    tc = tiny_config()
    a = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    b = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"), d_model=32)
    assert b.cfg.d_model == 32 and a.cfg.n_ctx == 16
    c = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    for p, q in zip(a.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q)


class Vocab:
    chars = list("abcdefg")

    def encode(self, s):
        return torch.tensor([self.chars.index(c) for c in s])

    def decode(self, ids):
        return "".join(self.chars[int(i)] for i in ids)


def test_next_char_probs_temperature_and_top_k():
    model = gpt(V=7, n_ctx=8, L=1, d=8, n_head=2).eval()
    for p in model.parameters():
        nn.init.normal_(p, 0.0, 0.3)
    context = torch.tensor([0, 3, 2, 5, 1, 6, 4, 2, 0, 1])  # longer than n_ctx: cut to the last 8
    p = ch.next_char_probs(model, context)
    with torch.no_grad():
        want = model(context[None, -8:])[0, -1].softmax(-1)
    torch.testing.assert_close(p, want)
    top3 = ch.next_char_probs(model, context, top_k=3)
    assert int((top3 > 0).sum()) == 3 and set(top3.nonzero().flatten().tolist()) == set(
        p.topk(3).indices.tolist())
    torch.testing.assert_close(top3.sum(), torch.tensor(1.0))
    cold = ch.next_char_probs(model, context, temperature=0.01)
    assert cold.argmax() == p.argmax() and cold.max() > 0.99
    hot = ch.next_char_probs(model, context, temperature=100.0)
    assert hot.max() - hot.min() < 0.05


def test_sample_starts_with_the_prompt_and_repeats_with_its_seed():
    model = gpt(V=7, n_ctx=8, L=1, d=8, n_head=2)
    vocab = Vocab()
    a = ch.sample(model, vocab, "abc", 20, seed=3)
    assert a.startswith("abc") and len(a) == 23
    assert ch.sample(model, vocab, "abc", 20, seed=3) == a
    greedy = ch.sample(model, vocab, "abc", 5, top_k=1, seed=4)
    assert greedy == ch.sample(model, vocab, "abc", 5, top_k=1, seed=5), "top-1 sampling is greedy"


def test_bigram_example_of_the_intuition():
    p_next = ch.bigram("abab")
    assert p_next == {"a": {"a": 0.0, "b": 1.0}, "b": {"a": 1.0, "b": 0.0}}
    p_first = {"a": 0.5, "b": 0.5}
    assert ch.p_sequence("abab", p_next, p_first) == 0.5
    assert ch.p_sequence("aa", p_next, p_first) == 0.0


def solved_top_p_filter(probs, p):
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(0) - sorted_p < p  # the mass before this one is still below p
    out = torch.zeros_like(probs)
    out[order[keep]] = sorted_p[keep]
    return out / out.sum()


def test_exercise_top_p(capsys):
    assert check("Exercise 3", ch.top_p_filter, ch.test_top_p) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_top_p_filter, ch.test_top_p) is True
    not_renormalized = lambda probs, p: solved_top_p_filter(probs, p) * probs[probs > 0.2].sum()
    with pytest.raises(AssertionError, match="renormalized"):
        check("Exercise 3", not_renormalized, ch.test_top_p)


def test_validation_curve_is_logged_every_val_every_steps_and_falls():
    # catches: a curve logged at the wrong steps, on the training text, or with stale weights
    tc = tiny_config(val_every=10)
    model = ch.make_model(tc, vocab_size=7, device=torch.device("cpu"))
    source = torch.arange(2000) % 7
    held_out = (torch.arange(300) + 3) % 7
    log, _ = ch.train(model, source, tc, steps=40, log_every=0, val_ids=held_out)
    assert log["val_step"] == [10, 20, 30, 40]
    assert log["val_loss"][-1] < log["val_loss"][0] - 0.5
    assert log["val_loss"][-1] == pytest.approx(ch.evaluate_loss(model, held_out, tc.n_ctx))


@pytest.mark.parametrize("rotary", [True, False])
def test_attention_maps_are_causal_rows_of_probabilities_from_the_models_own_blocks(rotary):
    # catches: maps taken from the wrong block input (no layer norm, no earlier blocks), a missing
    # causal mask, or the position table left out for learned positions
    model = gpt(L=2, d=32, n_head=4, rotary=rotary)
    ids = torch.randint(0, 76, (20,), generator=torch.Generator().manual_seed(0))
    maps = ch.attention_maps(model, ids)
    assert maps.shape == (2, 4, 20, 20)
    torch.testing.assert_close(maps.sum(-1), torch.ones(2, 4, 20))
    assert maps.triu(1).abs().max() == 0
    # the second block's weights from the first block's output, computed by hand
    with torch.no_grad():
        h = model.tok_emb(ids[None])
        if not rotary:
            h = h + model.pos_emb(torch.arange(20))
        h = model.blocks[0](h)
        attn = model.blocks[1].attn
        q, k, _ = attn.in_proj(model.blocks[1].ln_1(h)).chunk(3, dim=-1)
        q, k = (t.view(1, 20, 4, 8).transpose(1, 2) for t in (q, k))
        if rotary:
            rotation = rotary_angles(20, 8)
            q, k = apply_rotary(q, rotation), apply_rotary(k, rotation)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(
            torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(maps[1], scores.softmax(-1)[0], atol=1e-5, rtol=1e-4)


def test_rnn_number_is_chapter_10s_stated_result():
    # catches: chapter 16 quoting a number chapter 10 no longer states
    import json

    from chapters import notebook_path
    header = "".join(json.loads(notebook_path("10").read_text())["cells"][0]["source"])
    assert f"test loss of about **{ch.RNN_TEST_LOSS:.2f} nats/char**" in header
