"""Chapter 15 checks, on the chapter's own definitions: the masking rule (15.3) measured on a
wide sample with stated tolerances, the encoder layer against nn.TransformerEncoderLayer over a
grid of shapes and padding, the parameter formula (15.7) against the model and the published
BERT sizes, the model's handling of padding and segments, the data helpers (plays, speech lines,
segments, NSP pairs), bad inputs, and the coding exercise."""

import math
from collections import Counter

import pytest
import torch
from chapters import load_chapter
from torch import nn

from nnbook.exercises import check

ch = load_chapter("15")


# ---------------------------------------------------------------- the masking rule (15.3)

def _sample(n_rows=2000, n_cols=1000, vocab=3000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_rows, n_cols), generator=gen)   # ids 0-4 are special
    corrupted, labels = ch.mask_tokens(ids, vocab_size=vocab, generator=gen)
    return ids, corrupted, labels


def test_masking_rates_on_two_million_tokens():
    """15% chosen, then 80/10/10, on 2M tokens. Tolerances: 10 binomial standard errors
    (chosen: 0.0025; of the ~300k chosen: 0.007 for [MASK], 0.0055 for the 10% parts).
    Catches a rate applied to all tokens instead of the chosen ones (12% masked), swapped
    branches (10% masked), or a missing unchanged share."""
    ids, corrupted, labels = _sample()
    ordinary = ids >= len(ch.SPECIAL)
    chosen = labels != ch.IGNORE
    n_sel = int(chosen.sum())
    masked = chosen & (corrupted == ch.MASK)
    same = chosen & (corrupted == ids)
    random = chosen & ~masked & ~same
    rate = n_sel / int(ordinary.sum())
    assert abs(rate - 0.15) < 10 * math.sqrt(0.15 * 0.85 / int(ordinary.sum()))
    for part, target in [(masked, 0.8), (random, 0.1 * (1 - 1 / 3000)),
                         (same, 0.1 + 0.1 / 3000)]:
        share = int(part.sum()) / n_sel
        assert abs(share - target) < 10 * math.sqrt(target * (1 - target) / n_sel), (share, target)


def test_random_replacements_are_uniform_over_ordinary_tokens():
    """The 10% random tokens: never special, spread evenly over the ordinary ids (a chi-square
    over 20 bins of the id range). Catches randint(0, V) (special ids) or a narrow range."""
    ids, corrupted, labels = _sample(vocab=1005)
    chosen = labels != ch.IGNORE
    random = chosen & (corrupted != ch.MASK) & (corrupted != ids)
    drawn = corrupted[random]
    assert drawn.min() >= len(ch.SPECIAL) and drawn.max() < 1005
    counts = torch.histc(drawn.float(), bins=20, min=5, max=1005)
    expected = len(drawn) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45, chi2        # 19 degrees of freedom: P(chi2 > 45) < 0.001


def test_special_tokens_never_chosen_and_unchosen_untouched():
    """Catches masking [CLS]/[SEP]/[PAD] (which the model could then be asked to predict) and
    a corruption that leaks outside the chosen positions."""
    ids, corrupted, labels = _sample(n_rows=200)
    chosen = labels != ch.IGNORE
    assert not chosen[ids < len(ch.SPECIAL)].any()
    assert torch.equal(corrupted[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])


def test_masking_is_reproducible_and_respects_its_rates():
    """The same generator seed gives the same masks; p_mask=1 masks every chosen token;
    p_select=0 chooses none."""
    ids = torch.randint(5, 50, (8, 40), generator=torch.Generator().manual_seed(1))
    a = ch.mask_tokens(ids, vocab_size=50, generator=torch.Generator().manual_seed(3))
    b = ch.mask_tokens(ids, vocab_size=50, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    corrupted, labels = ch.mask_tokens(ids, vocab_size=50, p_mask=1.0, p_random=0.0,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(corrupted == ch.MASK, labels != ch.IGNORE)
    corrupted, labels = ch.mask_tokens(ids, vocab_size=50, p_select=0.0,
                                       generator=torch.Generator())
    assert (labels == ch.IGNORE).all() and torch.equal(corrupted, ids)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(5, dtype=torch.long), r"ids must be a long tensor \(B, T\); got \(5,\)"),
    (torch.zeros(2, 3), r"ids must be a long tensor \(B, T\); got \(2, 3\)"),
    ([[1, 2]], r"got list"),
])
def test_mask_tokens_rejects_bad_ids(bad, message):
    with pytest.raises(ValueError, match=message):
        ch.mask_tokens(bad, vocab_size=10, generator=torch.Generator())


def test_mask_tokens_rejects_bad_rates():
    with pytest.raises(ValueError, match="p_mask \\+ p_random <= 1"):
        ch.mask_tokens(torch.zeros(2, 3, dtype=torch.long), vocab_size=10,
                       generator=torch.Generator(), p_mask=0.95, p_random=0.1)


# ---------------------------------------------------------------- the encoder layer (15.2)

@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("H, A, F, T, padded", [
    (16, 1, 32, 5, False), (32, 4, 64, 9, True), (48, 6, 96, 12, True), (64, 8, 256, 3, True),
])
def test_encoder_layer_equals_torch_layer(H, A, F, T, padded, norm_first):
    """Copied weights, the same outputs and gradients (input and every parameter) to 1e-5,
    post-norm (15.2) and pre-norm (15.2'). Catches ReLU for GELU, the norms in the wrong
    place, a residual on the wrong side of a norm, or the padding mask ignored."""
    gen = torch.Generator().manual_seed(H + T)
    torch.manual_seed(H)
    ours = ch.EncoderLayer(d_model=H, n_heads=A, d_ff=F, norm_first=norm_first)
    ref = nn.TransformerEncoderLayer(H, A, F, dropout=0.0, activation="gelu",
                                     layer_norm_eps=1e-12, batch_first=True,
                                     norm_first=norm_first)
    with torch.no_grad():                            # give the norms non-trivial weights
        for p in (*ours.norm1.parameters(), *ours.norm2.parameters()):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    ch.copy_to_torch_layer(ours, ref)
    x = torch.randn(4, T, H, generator=gen, requires_grad=True)
    pad = torch.zeros(4, T, dtype=torch.bool)
    if padded:
        pad[1, -2:] = True
        pad[3, 1:] = True
    out, want = ours(x, pad if padded else None), ref(x, src_key_padding_mask=pad if padded else None)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    up = torch.randn(out.shape, generator=gen)
    g1 = torch.autograd.grad(out, [x, *ours.parameters()], up)
    g2 = torch.autograd.grad(want, [x, *ref.parameters()], up)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_encoder_layer_differs_from_relu_and_pre_norm_layers():
    """The comparison above can fail: the same weights in a ReLU or a pre-norm torch layer
    give different outputs."""
    torch.manual_seed(0)
    ours = ch.EncoderLayer(d_model=16, n_heads=2, d_ff=32)
    x = torch.randn(2, 5, 16)
    for kwargs in (dict(activation="relu"), dict(activation="gelu", norm_first=True)):
        ref = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, layer_norm_eps=1e-12,
                                         batch_first=True, **kwargs)
        ch.copy_to_torch_layer(ours, ref)
        assert not torch.allclose(ours(x), ref(x), atol=1e-4)
    pre = ch.EncoderLayer(d_model=16, n_heads=2, d_ff=32, norm_first=True)
    post_ref = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, activation="gelu",
                                          layer_norm_eps=1e-12, batch_first=True)
    ch.copy_to_torch_layer(pre, post_ref)
    assert not torch.allclose(pre(x), post_ref(x), atol=1e-4)


# ---------------------------------------------------------------- the parameter count (15.7)

@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("V, P, S, H, L, F", [
    (1500, 64, 2, 64, 2, 256), (50, 8, 1, 12, 1, 20), (300, 32, 3, 40, 4, 100), (7, 5, 2, 8, 0, 16),
])
def test_formula_counts_the_model(V, P, S, H, L, F, norm_first):
    """Catches a missing layer norm, bias or pooler in (15.7) or in the model, and the
    pre-norm stack's final norm missing from either."""
    model = ch.Bert(ch.BertConfig(vocab_size=V, max_len=P, n_segments=S, d_model=H,
                                  n_layers=L, n_heads=4 if H % 4 == 0 else 1, d_ff=F,
                                  norm_first=norm_first))
    assert sum(p.numel() for p in model.parameters()) == ch.n_params_bert(
        V=V, P=P, S=S, H=H, L=L, F=F, final_norm=norm_first)


def test_formula_gives_the_published_sizes():
    """bert-base-uncased's BertModel has 109,482,240 parameters; BERT-large 335,141,888
    (published as 110M and 340M)."""
    base = ch.n_params_bert(V=30_522, P=512, S=2, H=768, L=12, F=3072)
    large = ch.n_params_bert(V=30_522, P=512, S=2, H=1024, L=24, F=4096)
    assert base == 109_482_240 and large == 335_141_888
    assert ch.n_params_bert(V=30_522, P=512, S=2, H=768, L=12, F=3072, pooler=False) == (
        base - 768 * 768 - 768)


def test_pretraining_heads_add_what_section_2_says():
    """MLM head H^2 + 3H + V (its matrix tied to the token table), NSP head 2H + 2."""
    cfg = ch.BertConfig(vocab_size=300, max_len=16, d_model=32, n_layers=1, d_ff=64)
    model = ch.BertPretraining(cfg)
    extra = sum(p.numel() for p in model.parameters()) - sum(
        p.numel() for p in model.bert.parameters())
    H, V = 32, 300
    assert extra == H * H + 3 * H + V + 2 * H + 2


# ---------------------------------------------------------------- the model's behaviour

def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ch.BertConfig(vocab_size=60, max_len=16, d_model=32, n_layers=2, n_heads=4,
                        d_ff=64, **kw)
    return ch.Bert(cfg).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_does_not_change_the_real_tokens(norm_first):
    """Appending padding leaves every real position's output (and the pooled [CLS]) unchanged:
    catches a missing key-padding mask."""
    bert = _tiny(norm_first=norm_first)
    ids = torch.tensor([[ch.CLS, 7, 8, 9, ch.SEP]])
    seg = torch.zeros_like(ids)
    h, c = bert(ids, seg)
    ids_p = torch.cat([ids, torch.full((1, 6), ch.PAD)], 1)
    h_p, c_p = bert(ids_p, torch.zeros_like(ids_p))
    torch.testing.assert_close(h_p[:, :5], h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_p, c, atol=1e-5, rtol=1e-5)


def test_every_token_sees_both_sides_and_segments_matter():
    """No causal mask: changing the LAST token changes the FIRST position's output; changing
    the segment ids changes the outputs (the segment table is used)."""
    bert = _tiny()
    ids = torch.tensor([[ch.CLS, 7, 8, 9, 10, ch.SEP]])
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    h, _ = bert(ids, seg)
    ids2 = ids.clone()
    ids2[0, 4] = 11
    assert not torch.allclose(bert(ids2, seg)[0][:, 0], h[:, 0], atol=1e-6)
    assert not torch.allclose(bert(ids, torch.zeros_like(seg))[0], h, atol=1e-6)


def test_mlm_head_is_tied_to_the_token_table():
    """Changing a row of the token table changes that token's MLM logit: catches an untied
    output matrix."""
    model = ch.BertPretraining(ch.BertConfig(vocab_size=40, max_len=8, d_model=16, n_heads=2,
                                             d_ff=32))
    ids = torch.tensor([[ch.CLS, 5, ch.MASK, 6, ch.SEP]])
    chosen = ids == ch.MASK
    logits, nsp = model(ids, torch.zeros_like(ids), chosen)
    assert logits.shape == (1, 40) and nsp.shape == (1, 2)
    with torch.no_grad():  # not a constant shift: the MLM head's layer norm output sums
        model.bert.tok.weight[17] += torch.linspace(-1, 1, 16)  # to 0, so it would cancel
    logits2, _ = model(ids, torch.zeros_like(ids), chosen)
    assert not torch.allclose(logits2[0, 17], logits[0, 17])


@pytest.mark.parametrize("ids, seg, message", [
    (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), r"got \(3,\)"),
    (torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, 17, dtype=torch.long), r"T <= 16"),
    (torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long), r"\(1, 5\)"),
])
def test_bert_rejects_bad_inputs(ids, seg, message):
    with pytest.raises(ValueError, match=message):
        _tiny()(ids, seg)


# ---------------------------------------------------------------- data helpers

PLAY = """THE TEST PLAY

by William Shakespeare

PERSONS REPRESENTED.
Hamlet, a Prince.

ACT I.

Scene I. A room.

[Enter Hamlet and Horatio.]

Ham.
To be, or not to be, [Aside.] that is
the question.

HORATIO.
My lord?

[Exit.]

HAMLET
Go.
"""


def test_speech_lines_drop_names_headings_and_stage_directions():
    """Catches a speaker name or a stage direction left in (a giveaway for the play task)."""
    lines = ch.speech_lines(PLAY)
    assert lines == ["To be, or not to be,  that is", "the question.", "My lord?", "Go."]


def test_split_plays_finds_eight_titles():
    text = "\n\n\n".join(f"TITLE {i}\n\nby William Shakespeare\n\nACT I." for i in range(8))
    plays = ch.split_plays(text)
    assert list(plays) == list(ch.PLAYS) and plays["lear"].startswith("TITLE 1")
    with pytest.raises(ValueError, match="expected 8 plays; found 2"):
        ch.split_plays("A\n\nby William Shakespeare\n\n\nB\n\nby William Shakespeare")


def test_pack_segments_keeps_order_and_limits():
    lines = [[1, 2, 3], [4, 5], [6], list(range(10, 30)), [7]]
    segs = ch.pack_segments(lines, 6)
    assert segs == [[1, 2, 3, 4, 5, 6], [10, 11, 12, 13, 14, 15], [7]]
    assert all(len(s) <= 6 for s in segs)


def test_nsp_pairs_layout_labels_and_same_play_negatives():
    """[CLS] A [SEP] B [SEP] with segment ids 0/1; about half IsNext; a NotNext B is from
    the same play and never the segment right after (or A itself). Catches negatives drawn
    from other plays (the task then solvable by topic) or positives mislabelled."""
    plays = [[[100 * p + k] for k in range(40)] for p in (1, 2, 3)]   # segment k of play p
    ids, seg, y = ch.nsp_pairs(plays, 8, torch.Generator().manual_seed(0))
    assert ids.shape == (3 * 39, 8) and seg.shape == ids.shape
    assert 0.3 < y.float().mean() < 0.7
    for row, s, label in zip(ids.tolist(), seg.tolist(), y.tolist(), strict=True):
        assert row[:1] == [ch.CLS] and row[2] == ch.SEP and row[4] == ch.SEP
        assert s[:5] == [0, 0, 0, 1, 1] and row[5:] == [ch.PAD] * 3
        a, b = row[1], row[3]
        assert a // 100 == b // 100                                    # the same play
        assert (b == a + 1) == bool(label) and b not in (a - 1, a)
    big = [[[k] for k in range(1000)]]
    _, _, y = ch.nsp_pairs(big, 8, torch.Generator().manual_seed(1))
    assert abs(y.float().mean().item() - 0.5) < 0.06
    with pytest.raises(ValueError, match="at least 4 segments"):
        ch.nsp_pairs([[[1], [2], [3]]], 8, torch.Generator())


def test_tokenizer_has_special_ids_first_and_no_unknowns():
    """Special tokens are ids 0-4 (the model relies on ``id < 5`` meaning special); every
    word of the training text is spelled without [UNK]; frequent words become pieces."""
    lines = ["good night, sweet prince", "good morrow cousin", "unfold yourself"] * 20
    tok = ch.train_wordpiece(lines, 80)
    assert tok.vocab[:5] == list(ch.SPECIAL) and len(tok) < 80   # stops: all merged
    assert tok.tokenize("Good night, sweet prince") == ["good", "night", ",", "sweet",
                                                         "prince"]
    small = ch.train_wordpiece(lines, 40)
    assert len(small) == 40 and small.vocab[:5] == list(ch.SPECIAL)
    ids = small.encode("Good night, unfolded cousin")
    assert ch.UNK not in ids and len(ids) > 5                      # spelled from pieces


def test_wordpiece_encoding_is_greedy_longest_match():
    """With a hand-made vocabulary: the longest known piece first, then '##' pieces; a
    word with an unknown character is one [UNK] (BERT's rule); punctuation is split off
    and text lower-cased. Catches shortest-match or missing '##' prefixes."""
    vocab = [*ch.SPECIAL, "u", "un", "unf", "##f", "##o", "##l", "##d", "##e", "##fold",
             "d", "##ed", ",", "a"]
    tok = ch.WordPiece(vocab)
    assert tok.tokenize("Unfolded,") == ["unf", "##o", "##l", "##d", "##ed", ","]
    assert tok.tokenize("a zed") == ["a", "[UNK]"]
    assert tok.encode("a,") == [vocab.index("a"), vocab.index(",")]
    assert ch.pre_tokenize("Kill'd — café!") == ["kill", "'", "d", "—", "cafe", "!"]


def test_wordpiece_trainer_merges_most_frequent_pair_ties_by_string_order():
    """On 'ab' x3 and 'cd' x3 the two pairs tie: ('a', '##b') is merged first (the smaller
    pair); with 'cd' more frequent, ('c', '##d') first. Catches ties left to dict or set
    order (the nondeterminism of the earlier draft's library trainer)."""
    base = len(ch.SPECIAL) + 4                      # a, c, ##b, ##d
    tok = ch.train_wordpiece(["ab cd"] * 3, base + 1)
    assert tok.vocab[base:] == ["ab"]
    tok = ch.train_wordpiece(["ab cd cd"] * 3, base + 2)
    assert tok.vocab[base:] == ["cd", "ab"]
    with pytest.raises(ValueError, match="vocab_size must be at least 9"):
        ch.train_wordpiece(["ab cd"], 8)


def _random_lines(seed, n=400):
    gen = torch.Generator().manual_seed(seed)
    letters = "abcdeilnorst"
    words = ["".join(letters[i] for i in torch.randint(0, 12, (int(k),), generator=gen))
             for k in torch.randint(1, 7, (300,), generator=gen)]
    return [" ".join(words[i] for i in torch.randint(0, 300, (8,), generator=gen))
            for _ in range(n)]


def test_wordpiece_vocabulary_does_not_depend_on_line_order():
    """The same lines in another order give the same vocabulary (many tied counts here)."""
    lines = _random_lines(0)
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(1))
    a = ch.train_wordpiece(lines, 200).vocab
    b = ch.train_wordpiece([lines[i] for i in order], 200).vocab
    assert a == b


def test_wordpiece_vocabulary_is_the_same_in_two_processes():
    """Python randomizes string hashing per process, which reorders sets and could reorder
    ties: train in two fresh interpreters with different PYTHONHASHSEED and compare. Runs
    the notebook's own tokenizer cells (read from the notebook, not re-typed)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    nb = json.loads(Path("notebooks/15_bert.ipynb").read_text())
    cells = {c["id"]: "".join(c["source"]) for c in nb["cells"]}
    special = next(s for s in cells.values() if s.startswith("SPECIAL = "))
    code = ("import heapq, re, unicodedata, json, sys\n"
            "from collections import Counter, defaultdict\n"
            + special.split("IGNORE")[0] + cells["cell-19t"] + "\n" + cells["cell-19u"]
            + "\nlines = json.loads(sys.stdin.read())\n"
              "print(json.dumps(train_wordpiece(lines, 200).vocab))\n")
    lines = json.dumps(_random_lines(2))
    out = [subprocess.run([sys.executable, "-c", code], input=lines, text=True,
                          capture_output=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": seed}).stdout
           for seed in ("1", "2")]
    assert out[0] == out[1] and len(json.loads(out[0])) == 200


def test_pad_rows_pads_and_cuts():
    """Catches padding on the wrong side, rows not cut at ``length``, or lost rows."""
    out = ch.pad_rows([[7, 8, 9], [], [5, 6, 7, 8, 9, 10]], 4)
    assert out.tolist() == [[7, 8, 9, 0], [0, 0, 0, 0], [5, 6, 7, 8]]
    assert out.dtype == torch.long and ch.pad_rows([], 3).shape == (0, 3)


def test_shuffle_words_changes_order_keeps_words():
    """Always a different order (compared lower-cased), the same words. Catches returning
    the line unchanged (a free 'kept' label) or dropping/duplicating words."""
    gen = torch.Generator().manual_seed(0)
    for line in ["to be or not to be", "a b", "Good night, good night!", "so so So no"]:
        for _ in range(20):
            out = ch.shuffle_words(line, gen)
            assert sorted(out.split()) == sorted(line.split())
            assert [w.lower() for w in out.split()] != [w.lower() for w in line.split()]
    with pytest.raises(ValueError, match="two different words"):
        ch.shuffle_words("so So so", gen)


def test_word_order_pairs_labels_and_bags():
    """Every kept line twice: as written (label 0), then shuffled (label 1), with the same
    bag of tokens (so the label is in the order only); short lines and lines longer than
    max_len - 2 tokens are left out. Catches unpaired or mislabelled rows."""
    lines = ["good night sweet prince and flights of angels", "to be or not to be",
             "what a piece of work is man", "too short"] * 50
    tok = ch.train_wordpiece(lines, 80)
    ids, seg, y = ch.word_order_pairs(lines, tok, 16, torch.Generator().manual_seed(0))
    assert len(y) == 300 and y.tolist() == [0, 1] * 150 and (seg == 0).all()
    assert (ids[:, 0] == ch.CLS).all()
    originals = {tuple(tok.encode(x)) for x in lines}
    bags = ch.bag_of_tokens(ids, 80)
    for k in range(0, len(y), 2):
        kept, shuffled = ([t for t in row[1:] if t not in (ch.PAD, ch.SEP)]
                          for row in ids[k:k + 2].tolist())
        assert tuple(kept) in originals and tuple(shuffled) not in originals
        assert torch.equal(bags[k], bags[k + 1])
    ids, _, y = ch.word_order_pairs(lines, tok, 9, torch.Generator().manual_seed(0))
    assert ((ids != ch.PAD).sum(1) <= 9).all() and len(y) < 300


def test_trim_and_accuracy_match_the_untrimmed_model():
    """Cutting all-padding columns leaves a classifier's outputs unchanged, and accuracy(),
    which sorts rows by length, scores each row against its own label. Catches a
    sort without the matching label order."""
    torch.manual_seed(0)
    bert = ch.Bert(ch.BertConfig(vocab_size=40, max_len=12, d_model=16, n_heads=2,
                                 d_ff=32, norm_first=True))
    model = ch.BertClassifier(bert, 3).eval()
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(5, 40, (int(n),), generator=gen).tolist()
            for n in torch.randint(1, 9, (50,), generator=gen)]
    ids, segs = ch.single_segment(rows, 12)
    small, small_segs = ch.trim(ids, segs)
    assert small.shape[1] == max(len(r) for r in rows) + 2 < 12
    with torch.no_grad():
        full, cut = model(ids, segs), model(small, small_segs)
    torch.testing.assert_close(full, cut, atol=1e-5, rtol=1e-5)
    y = full.argmax(-1)
    assert ch.accuracy(model, ids, segs, y, batch_size=7) == 1.0
    wrong = (y + 1) % 3
    assert ch.accuracy(model, ids, segs, wrong, batch_size=7) == 0.0
    half = torch.where(torch.arange(50) < 20, y, wrong)
    assert ch.accuracy(model, ids, segs, half, batch_size=7) == 20 / 50


def test_fit_threshold_is_the_best_cut():
    """Against a brute force over every cut between sorted scores (and both ends)."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 60):
        labels = torch.randint(0, 2, (n,), generator=gen)
        scores = torch.randn(n, generator=gen) - labels        # label 1 tends lower
        t = ch.fit_threshold(scores, labels)
        got = ((scores < t).long() == labels).sum()
        cuts = torch.cat([scores - 1e-4, scores + 1e-4])
        best = max(int(((scores < c).long() == labels).sum()) for c in cuts)
        assert got == best, (n, got, best)
    scores, labels = torch.tensor([-3.0, -2.0, 1.0, 2.0]), torch.tensor([1, 1, 0, 0])
    assert -2.0 < ch.fit_threshold(scores, labels) < 1.0


def test_bigram_counts_and_scores_toy():
    """Counts pairs inside rows only (not across a [SEP] into the next row); a row in the
    counted order scores higher than its reverse."""
    rows = [[ch.CLS, 5, 6, 7, ch.SEP], [ch.CLS, 5, 6, ch.SEP]]
    counts = ch.bigram_counts(rows, 8)
    assert counts[5, 6] == 2 and counts[6, 7] == 1 and counts[ch.SEP, ch.CLS] == 0
    assert counts.sum() == 7
    ids = ch.pad_rows([[ch.CLS, 5, 6, 7, ch.SEP], [ch.CLS, 7, 6, 5, ch.SEP]], 7)
    good, bad = ch.bigram_scores(ids, counts).tolist()
    assert good > bad
    manual = torch.log((counts.float() + 0.1) / (counts.float() + 0.1).sum(1, keepdim=True))
    want = (manual[ch.CLS, 5] + manual[5, 6] + manual[6, 7] + manual[7, ch.SEP]) / 4
    assert abs(good - want.item()) < 1e-6            # padding left out of the mean


def test_bag_of_tokens_counts_ordinary_tokens_only():
    ids = torch.tensor([[ch.CLS, 7, 7, 9, ch.SEP, ch.PAD]])
    bag = ch.bag_of_tokens(ids, 12)
    assert bag[0, 7] == 2 and bag[0, 9] == 1 and bag[0, :5].sum() == 0 and bag.sum() == 3


def test_fill_counts_toy_example():
    toy = ["good night sweet prince", "good night sweet lady", "good morrow cousin"]
    assert ch.fill_counts(toy, "good") == Counter(night=2, morrow=1)
    assert ch.fill_counts(toy, "good", "cousin") == Counter(morrow=1)


# ---------------------------------------------------------------- the exercise

def solved_word_groups(tokens):
    groups, word = [], -1
    for t in tokens:
        if not t.startswith("##"):
            word += 1
        groups.append(word)
    return groups


def test_exercise_word_groups(capsys):
    name = "Exercise 3 (whole-word groups)"
    assert check(name, ch.word_groups, ch.test_word_groups) is None
    assert check(name, solved_word_groups, ch.test_word_groups) is True
    with pytest.raises(AssertionError, match="0, 1, 2, 2, 2, 3"):       # one group per token
        check(name, lambda tokens: list(range(len(tokens))), ch.test_word_groups)
    with pytest.raises(AssertionError):                                 # groups from 1
        check(name, lambda tokens: [g + 1 for g in solved_word_groups(tokens)],
              ch.test_word_groups)


# ---------------------------------------------------------------- attention maps

@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_maps_are_the_layers_weights(norm_first):
    """Rows sum to 1, padding keys get 0, and the first layer's weights times its values,
    projected, give the layer's attention output. Catches weights taken from the wrong
    input (the sum instead of the normalized branch input in a pre-norm layer)."""
    bert = _tiny(norm_first=norm_first)
    ids = torch.tensor([[ch.CLS, 7, 8, ch.MASK, 9, ch.SEP, ch.PAD, ch.PAD]])
    seg = torch.zeros_like(ids)
    maps = ch.attention_maps(bert, ids, seg)
    assert len(maps) == 2 and maps[0].shape == (1, 4, 8, 8)
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(1, 4, 8))
        assert (m[..., 6:] == 0).all()
    layer = bert.layers[0]
    with torch.no_grad():
        h = bert.emb_norm(bert.tok(ids) + bert.pos(torch.arange(8)) + bert.seg(seg))
        x = layer.norm1(h) if norm_first else h
        want = layer.self_attn(x, key_padding_mask=ids == ch.PAD)
        v = layer.self_attn.in_proj(x)[..., 64:].view(1, 8, 4, 8).transpose(1, 2)
        got = layer.self_attn.out_proj((maps[0] @ v).transpose(1, 2).reshape(1, 8, 32))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: ch.trim(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 5)), r"\(3, 5\)"),
    (lambda: ch.trim(torch.zeros(4, dtype=torch.long), torch.zeros(4)), r"got \(4,\)"),
    (lambda: ch.fit_threshold(torch.zeros(3), torch.zeros(2)), r"got \(3,\) and \(2,\)"),
    (lambda: ch.fit_threshold(torch.zeros(0), torch.zeros(0)), r"N >= 1"),
    (lambda: ch.attention_maps(_tiny(), torch.zeros(1, 4, dtype=torch.long),
                               torch.zeros(4, dtype=torch.long)), r"\(B, T\); got \(1, 4\)"),
])
def test_helpers_reject_bad_shapes(call, message):
    with pytest.raises(ValueError, match=message):
        call()
