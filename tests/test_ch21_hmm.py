"""Chapter 21 checks, on the chapter's own definitions: forward, backward, posteriors, Viterbi
and Baum-Welch against hmmlearn's CategoricalHMM and against brute force over a grid of sizes,
padding and long sequences, bad inputs, the text helpers and baselines, and the exercises."""

import itertools
import logging
import math

import numpy as np
import pytest
import torch
from chapters import load_chapter

from nnbook.exercises import check

ch = load_chapter("21")
logging.getLogger("hmmlearn").setLevel(logging.ERROR)  # "few data points" notes
F64 = torch.float64


def _batch(K, V, lengths, *, scale=1.0, seed=0):
    """A random float64 HMM and a padded batch x (B, max length) with its lengths."""
    gen = torch.Generator().manual_seed(seed)
    hmm = ch.random_hmm(K, V, scale=scale, generator=gen, dtype=F64)
    lengths = torch.tensor(lengths)
    x = torch.randint(0, V, (len(lengths), int(lengths.max())), generator=gen)
    return hmm, x, lengths


# ---------------------------------------------------------------- against hmmlearn

@pytest.mark.parametrize("scale", [1.0, 10.0])
@pytest.mark.parametrize("V", [2, 7, 27])
@pytest.mark.parametrize("K", [1, 2, 3, 6])
def test_inference_and_one_em_step_match_hmmlearn(K, V, scale):
    """The wide grid, with near-deterministic rows (scale 10) and length-1 sequences. Catches a
    transposed A, a missing first emission, a posterior normalized over the wrong axis,
    back-pointers off by one step, padding that leaks into a shorter sequence, and an M-step
    that normalizes columns or forgets the start counts of some sequences."""
    hmm, x, lengths = _batch(K, V, [1, 2, 37, 120, 5, 200], scale=scale, seed=10 * K + V)
    d = ch.hmmlearn_differences(x, hmm, lengths)
    assert d["loglik"] < 1e-6, d
    assert d["gamma"] < 1e-6, d
    assert d["viterbi"] < 1e-9 * 200 * (1 + scale), d
    assert d["paths_differ_without_tie"] == 0, d
    assert ch.hmmlearn_em_difference(x, hmm, lengths) < 1e-6


def test_several_em_iterations_match_hmmlearn_and_rise():
    """Five iterations from the same start: the parameters and the log-likelihood history equal
    hmmlearn's monitor (ours is per symbol, of the parameters before each update); catches a
    history that records the likelihood after the update, or an update applied twice."""
    hmm, x, lengths = _batch(3, 5, [60, 41, 80, 1, 33], seed=3)
    ours, history = ch.baum_welch(x, hmm, lengths, n_iter=5)
    ref = ch.to_hmmlearn(hmm, n_iter=5, tol=-np.inf)
    column = np.concatenate([x[b, :n].numpy() for b, n in enumerate(lengths.tolist())])
    ref.fit(column[:, None], lengths.numpy())
    np.testing.assert_allclose(ours.log_A.exp().numpy(), ref.transmat_, atol=1e-9)
    np.testing.assert_allclose(ours.log_B.exp().numpy(), ref.emissionprob_, atol=1e-9)
    np.testing.assert_allclose(ours.log_pi.exp().numpy(), ref.startprob_, atol=1e-9)
    n = int(lengths.sum())
    np.testing.assert_allclose(np.array(history["loglik"]) * n, ref.monitor_.history,
                               rtol=1e-10)
    assert history["iteration"] == [1, 2, 3, 4, 5]
    assert np.diff(history["loglik"]).min() > 0, "EM must raise the likelihood (21.9)"


def test_baum_welch_stops_at_the_tolerance():
    """A huge tol stops after the second iteration (the first rise is compared with tol)."""
    hmm, x, lengths = _batch(2, 4, [50, 50], seed=4)
    _, history = ch.baum_welch(x, hmm, lengths, n_iter=50, tol=1e9)
    assert len(history["loglik"]) == 2
    _, history = ch.baum_welch(x, hmm, lengths, n_iter=7)
    assert len(history["loglik"]) == 7 and len(history["seconds"]) == 7


# ---------------------------------------------------------------- against brute force

@pytest.mark.parametrize("K, T", [(1, 1), (1, 4), (2, 1), (2, 2), (2, 6), (3, 5), (4, 4)])
def test_recursions_equal_the_sum_over_all_paths(K, T):
    """The oracle that uses no recursion: every one of the K^T paths scored by (21.2)."""
    hmm, x, _ = _batch(K, 3, [T], seed=K * 10 + T)
    loglik, best, gamma = ch.brute_force(x[0], hmm)
    ours_gamma, ours_loglik = ch.posteriors(x, hmm)
    path, ours_best = ch.viterbi(x, hmm)
    torch.testing.assert_close(ours_loglik[0], loglik, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours_gamma[0], gamma, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_best[0], best, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ch.path_log_prob(x, path, hmm)[0], best, rtol=1e-12,
                               atol=1e-12)


def test_toy_example_of_section_one():
    """The hand-computed numbers: p("ta") = 0.293, best path C V with 0.252."""
    toy = ch.HMM(ch.toy_pi.log(), ch.toy_A.log(), ch.toy_B.log())
    x = torch.tensor([[1, 0]])
    _, loglik = ch.forward(x, toy)
    path, best = ch.viterbi(x, toy)
    assert loglik.exp().item() == pytest.approx(0.293, abs=1e-6)
    assert best.exp().item() == pytest.approx(0.252, abs=1e-6)
    assert path.tolist() == [[1, 0]]
    gamma, _ = ch.posteriors(x, toy)
    assert gamma[0, 0, 1].item() == pytest.approx(0.276 / 0.293, abs=1e-6)
    p = ch.path_prob([1, 0], (1, 0), ch.toy_pi, ch.toy_A, ch.toy_B)
    assert float(p) == pytest.approx(0.252)


# ---------------------------------------------------------------- padding and invariants

def test_padding_changes_nothing():
    """A padded batch (padding filled with other valid symbols) must give each sequence's own
    results, and batch counts must be the sum of the single-sequence counts; catches a mask
    applied to alpha but not to beta, xi or the emission counts."""
    hmm, x, lengths = _batch(3, 6, [9, 1, 4, 9], seed=5)
    gen = torch.Generator().manual_seed(6)
    x = torch.where(torch.arange(9) < lengths[:, None], x,
                    torch.randint(0, 6, x.shape, generator=gen))  # garbage padding
    gamma, loglik = ch.posteriors(x, hmm, lengths)
    path, best = ch.viterbi(x, hmm, lengths)
    log_alpha, _ = ch.forward(x, hmm, lengths)
    log_beta = ch.backward(x, hmm, lengths)
    batch_counts = ch.expected_counts(x, hmm, lengths)
    total = [torch.zeros_like(c) for c in batch_counts[:3]]
    for b, n in enumerate(lengths.tolist()):
        xb = x[b:b + 1, :n]
        g1, l1 = ch.posteriors(xb, hmm)
        p1, b1 = ch.viterbi(xb, hmm)
        torch.testing.assert_close(loglik[b], l1[0])
        torch.testing.assert_close(gamma[b, :n], g1[0])
        assert (gamma[b, n:] == 0).all(), "posteriors must be 0 on padding"
        assert torch.equal(path[b, :n], p1[0]) and (path[b, n:] == -1).all()
        torch.testing.assert_close(best[b], b1[0])
        torch.testing.assert_close(log_alpha[b, :n], ch.forward(xb, hmm)[0][0])
        torch.testing.assert_close(log_beta[b, :n], ch.backward(xb, hmm)[0])
        total = [t + c for t, c in zip(total, ch.expected_counts(xb, hmm)[:3], strict=True)]
    for ours, summed in zip(batch_counts[:3], total, strict=True):
        torch.testing.assert_close(ours, summed)


def test_counts_add_up_and_posteriors_are_distributions():
    """Expected starts sum to B, transitions to the number of real pairs, emissions to the real
    steps with each symbol's column summing to its count; gamma sums to 1 on real steps; and
    log p(x) read from beta equals the forward's."""
    hmm, x, lengths = _batch(4, 5, [30, 1, 12, 30, 7], seed=7)
    start, trans, emit, loglik = ch.expected_counts(x, hmm, lengths)
    mask = torch.arange(30) < lengths[:, None]
    torch.testing.assert_close(start.sum(), torch.tensor(5.0, dtype=F64))
    torch.testing.assert_close(trans.sum(), (lengths - 1).sum().to(F64))
    torch.testing.assert_close(emit.sum(0), torch.bincount(x[mask], minlength=5).to(F64))
    gamma, _ = ch.posteriors(x, hmm, lengths)
    torch.testing.assert_close(gamma.sum(-1), mask.to(F64))
    log_beta = ch.backward(x, hmm, lengths)
    from_beta = torch.logsumexp(hmm.log_pi + hmm.log_B[:, x[:, 0]].T + log_beta[:, 0], -1)
    torch.testing.assert_close(from_beta, loglik)


def test_long_sequences_stay_finite_in_float32():
    """3,000 steps underflow any probability-space forward even in float64 (p(x) ~ e^-6000);
    in log space float32 stays within 1e-5 relative of float64."""
    hmm, x, _ = _batch(3, 27, [3000], seed=8)
    _, loglik64 = ch.forward(x, hmm)
    _, loglik32 = ch.forward(x, hmm.to(torch.float32))
    assert loglik64.item() < -3000
    assert math.isfinite(loglik32.item())
    assert abs(loglik32.item() / loglik64.item() - 1) < 1e-5


def test_float32_posteriors_are_accurate_on_training_chunks():
    """The chapter trains in float32 on rows of 100 characters: there gamma agrees with float64
    to 1e-3. (log alpha and log beta grow like -2.7 t, and float32 keeps ~7 significant digits
    of them, so over thousands of steps gamma would drift by percents: chunks avoid that.)"""
    hmm, x, lengths = _batch(5, 27, [100] * 8 + [37], seed=11)
    gamma64, _ = ch.posteriors(x, hmm, lengths)
    gamma32, _ = ch.posteriors(x, hmm.to(torch.float32), lengths)
    torch.testing.assert_close(gamma32.double(), gamma64, atol=1e-3, rtol=0)


def test_viterbi_on_exact_ties_returns_an_optimal_path():
    """Two identical states: every path ties. Any returned path must score the maximum, and the
    reference comparison must call it a tie, not a mismatch."""
    log_half = torch.full((2,), math.log(0.5), dtype=F64)
    row = torch.tensor([0.2, 0.3, 0.5], dtype=F64).log()
    twins = ch.HMM(log_half, log_half.expand(2, 2).clone(), row.expand(2, 3).clone())
    x = torch.tensor([[0, 2, 1, 1, 2]])
    path, best = ch.viterbi(x, twins)
    torch.testing.assert_close(ch.path_log_prob(x, path, twins), best)
    expected = 5 * math.log(0.5) + row[x[0]].sum()
    torch.testing.assert_close(best[0], expected)
    assert ch.hmmlearn_differences(x, twins, torch.tensor([5]))["paths_differ_without_tie"] == 0


def test_m_step_normalizes_rows():
    start = torch.tensor([1.0, 3.0])
    trans = torch.tensor([[1.0, 1.0], [0.0, 4.0]])
    emit = torch.tensor([[2.0, 0.0, 2.0], [1.0, 1.0, 2.0]])
    hmm = ch.m_step(start, trans, emit)
    torch.testing.assert_close(hmm.log_pi.exp(), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(hmm.log_A.exp(), torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    torch.testing.assert_close(hmm.log_B.exp(), torch.tensor([[0.5, 0.0, 0.5],
                                                              [0.25, 0.25, 0.5]]))


# ---------------------------------------------------------------- bad inputs

def test_bad_inputs_are_refused_with_the_expected_shape():
    hmm, x, lengths = _batch(2, 4, [5, 3], seed=9)
    cases = [
        (lambda: ch.forward(x[0], hmm), r"x must be \(B, T\) with B, T >= 1; got \(5,\)"),
        (lambda: ch.forward(x[:, :0], hmm), r"x must be \(B, T\)"),
        (lambda: ch.forward(x.double(), hmm), "integer symbol ids; got torch.float64"),
        (lambda: ch.forward(x, hmm, torch.tensor([5])), r"lengths must be \(B,\) = \(2,\)"),
        (lambda: ch.forward(x, hmm, torch.tensor([5, 0])), r"lengths must lie in \[1, T\]"),
        (lambda: ch.viterbi(x, hmm, torch.tensor([6, 3])), r"lengths must lie in \[1, T\]"),
        (lambda: ch.posteriors(x + 4, hmm), r"symbols must lie in \[0, V\) = \[0, 4\)"),
        (lambda: ch.backward(x - 1, hmm), "symbols must lie in"),
        (lambda: ch.path_log_prob(x, x[:, :3], hmm), r"z must be \(B, T\) = \(2, 5\)"),
        (lambda: ch.HMM(hmm.log_pi[None], hmm.log_A, hmm.log_B), r"log_pi must be \(K,\)"),
        (lambda: ch.HMM(hmm.log_pi, hmm.log_A[:1], hmm.log_B), r"log_A must be \(K, K\)"),
        (lambda: ch.HMM(hmm.log_pi, hmm.log_A, hmm.log_B[:1]), r"log_B must be \(K, V\)"),
        (lambda: ch.HMM(hmm.log_pi.exp(), hmm.log_A, hmm.log_B), "log-probabilities"),
        (lambda: ch.encode("Hi!"), "text must use only ALPHABET"),
        (lambda: ch.chunk(torch.zeros(0, dtype=torch.long), 3), "ids must be non-empty"),
        (lambda: ch.chunk(torch.zeros(4, dtype=torch.long), 0), "length must be at least 1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    # padding may hold any value: only real steps are checked
    ch.forward(torch.tensor([[1, 2, 99]]), hmm, torch.tensor([2]))


# ---------------------------------------------------------------- data, baselines, reading

def test_text_helpers():
    """Cleaning keeps letters, folds case and turns every other run into one space; encode and
    decode invert each other; chunk keeps every id once, in order."""
    assert ch.clean_text("  Hello, World!\n\nO'er--THE end.  ") == "hello world o er the end"
    ids = ch.encode("a zebra")
    assert ids.tolist() == [1, 0, 26, 5, 2, 18, 1]
    assert ch.decode(torch.cat([ids, torch.tensor([-1, -1])])) == "a zebra"
    x, lengths = ch.chunk(torch.arange(10), 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert lengths.tolist() == [4, 4, 2]
    x, lengths = ch.chunk(torch.arange(8), 4)
    assert lengths.tolist() == [4, 4]


def test_baselines_score_like_unigram_and_bigram_counts():
    """nats/char of the baseline HMMs equals the count formulas written out; catches bigram
    pairs counted across sequences or padding, a transposed A, or a missing add-one."""
    x, lengths = torch.tensor([[1, 2, 1, 2], [2, 2, 0, 0]]), torch.tensor([4, 2])
    uni, bi = ch.unigram_hmm(x, lengths, 3), ch.bigram_hmm(x, lengths, 3)
    p1 = torch.tensor([0 + 1, 2 + 1, 4 + 1], dtype=F64) / 9          # counts + 1
    pairs = torch.ones(3, 3, dtype=F64)                               # add-one
    for a, b in [(1, 2), (2, 1), (1, 2), (2, 2)]:                     # within sequences
        pairs[a, b] += 1
    p2 = pairs / pairs.sum(1, keepdim=True)
    torch.testing.assert_close(uni.log_B[0].exp().double(), p1)
    torch.testing.assert_close(bi.log_A.exp().double(), p2)
    seqs = [[1, 2, 1, 2], [2, 2]]
    uni_nats = -sum(math.log(p1[s]) for seq in seqs for s in seq) / 6
    bi_nats = -sum(math.log(p1[seq[0]]) + sum(math.log(p2[a, b]) for a, b in
                                              itertools.pairwise(seq)) for seq in seqs) / 6
    assert ch.nats_per_char(x, uni, lengths) == pytest.approx(uni_nats, rel=1e-6)
    assert ch.nats_per_char(x, bi, lengths) == pytest.approx(bi_nats, rel=1e-6)
    assert ch.n_parameters(uni) == 2 and ch.n_parameters(bi, free_emissions=False) == 2 + 6


def test_vowel_share_state_order_and_relabelling():
    """The headline's definition on a hand-made HMM; relabelling states keeps the likelihood."""
    V = len(ch.ALPHABET)
    b_cons = torch.full((V,), 1e-3)
    b_cons[ch.encode("tsn")] = 0.3
    b_vow = torch.full((V,), 1e-3)
    b_vow[ch.encode("e")], b_vow[0], b_vow[ch.encode("t")] = 0.45, 0.35, 0.1
    B = torch.stack([b_cons, b_vow])
    B = B / B.sum(1, keepdim=True)
    hmm = ch.HMM(torch.tensor([0.5, 0.5]).log(), torch.tensor([[0.3, 0.7], [0.8, 0.2]]).log(),
                 B.log())
    assert ch.vowel_state(hmm) == 1
    letters = B[1, 1:].sum()
    vowels = B[1, ch.encode("aeiou")].sum()
    assert ch.vowel_share(hmm, 1) == pytest.approx(float(vowels / letters), rel=1e-5)
    assert ch.vowel_share(hmm, 1, with_space=True) == pytest.approx(float(vowels + B[1, 0]),
                                                                    rel=1e-5)
    assert ch.top_symbols(hmm, 1, 3) == "e_t"
    ordered = ch.by_vowel_share(hmm)
    assert ch.vowel_state(ordered) == 0
    torch.testing.assert_close(ordered.log_A, hmm.log_A.flip(0, 1))
    x = ch.encode("the test sent")[None]
    torch.testing.assert_close(ch.forward(x, ordered)[1], ch.forward(x, hmm)[1])


def test_fit_restarts_is_seeded_and_rises():
    """Same seed, same fit; another seed, another start (catches a start that ignores the
    seed); and every restart's float32 log-likelihood rises."""
    text = ch.clean_text("the quick brown fox jumps over the lazy dog " * 20)
    x, lengths = ch.chunk(ch.encode(text), 20)  # short rows: few steps per iteration
    cfg = ch.Config(n_iter=15, tol=0.0)
    runs = ch.fit_restarts(x, lengths, 2, [0, 0, 1], cfg)
    torch.testing.assert_close(runs[0][1].log_B, runs[1][1].log_B)
    assert not torch.allclose(runs[0][1].log_B, runs[2][1].log_B)
    for seed, hmm, history in runs:
        assert hmm.log_B.dtype == torch.float32 and len(history["loglik"]) == 15
        assert np.diff(history["loglik"]).min() > -1e-6, seed


# ---------------------------------------------------------------- exercises

def solved_scaled_forward(x, pi, A, B):
    alphas, loglik = [], 0.0
    a = pi * B[:, x[0]]
    for t in range(len(x)):
        if t:
            a = (a @ A) * B[:, x[t]]
        c = a.sum()
        a = a / c
        alphas.append(a)
        loglik = loglik + torch.log(c)
    return torch.stack(alphas), loglik


def _unscaled_forward(x, pi, A, B):
    a = pi * B[:, x[0]]
    alphas = [a]
    for t in range(1, len(x)):
        a = (a @ A) * B[:, x[t]]
        alphas.append(a)
    alphas = torch.stack(alphas)
    return alphas / alphas.sum(-1, keepdim=True), torch.log(alphas[-1].sum())


def test_exercise_scaled_forward(capsys):
    assert check("Exercise 2", ch.scaled_forward, ch.test_scaled_forward) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 2", solved_scaled_forward, ch.test_scaled_forward) is True
    with pytest.raises(AssertionError, match="must sum to 1"):  # unscaled: 0/0 at T = 2000
        check("Exercise 2", _unscaled_forward, ch.test_scaled_forward)


def solved_sample_hmm(hmm, n, T, generator):
    pi, A, B = (t.exp() for t in (hmm.log_pi, hmm.log_A, hmm.log_B))
    z = torch.empty(n, T, dtype=torch.long)
    z[:, 0] = torch.multinomial(pi.expand(n, -1), 1, generator=generator)[:, 0]
    for t in range(1, T):
        z[:, t] = torch.multinomial(A[z[:, t - 1]], 1, generator=generator)[:, 0]
    x = torch.multinomial(B[z.flatten()], 1, generator=generator).view(n, T)
    return z, x


def _sample_with_transposed_A(hmm, n, T, generator):
    return solved_sample_hmm(ch.HMM(hmm.log_pi, hmm.log_A.T.log_softmax(-1), hmm.log_B), n, T,
                            generator)


def test_exercise_sample_hmm(capsys):
    assert check("Exercise 3", ch.sample_hmm, ch.test_sample_hmm) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_sample_hmm, ch.test_sample_hmm) is True
    with pytest.raises(AssertionError, match="deterministic cycle"):
        check("Exercise 3", _sample_with_transposed_A, ch.test_sample_hmm)
