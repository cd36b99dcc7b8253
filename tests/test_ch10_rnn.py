"""Chapter 10: the notebook's RNN (cell, unrolled loop, module, hand BPTT, Jacobian norms,
language-model helpers) against PyTorch over a grid of cases, and its exercise."""

import math

import pytest
import torch
from chapters import load_chapter
from torch import nn

from nnbook.exercises import check
from nnbook.text import CharVocab

ch = load_chapter("10")
DT = torch.float64


def _scratch_like(ref: nn.RNN, nonlinearity: str) -> list[list]:
    """One ScratchRNN per layer and direction, holding ``ref``'s weights (biases summed)."""
    directions = 2 if ref.bidirectional else 1
    stack = []
    for layer in range(ref.num_layers):
        row = []
        for d in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            W_ih = getattr(ref, "weight_ih" + suffix)
            cell = ch.ScratchRNN(W_ih.shape[1], ref.hidden_size, nonlinearity=nonlinearity)
            cell = cell.double()
            with torch.no_grad():
                cell.W_xh.copy_(W_ih)
                cell.W_hh.copy_(getattr(ref, "weight_hh" + suffix))
                cell.b.copy_(getattr(ref, "bias_ih" + suffix) + getattr(ref, "bias_hh" + suffix))
            row.append(cell)
        stack.append(row)
    return stack


def _run_stack(stack, x, h0):
    """nn.RNN's semantics spelled with the chapter's cell: layer l reads the states of
    layer l - 1; the reverse direction reads the sequence backwards."""
    finals, inp = [], x
    for layer, row in enumerate(stack):
        outs = []
        for d, cell in enumerate(row):
            h_init = None if h0 is None else h0[layer * len(row) + d]
            seq = inp.flip(1) if d else inp
            out, h_last = cell(seq, h_init)
            outs.append(out.flip(1) if d else out)
            finals.append(h_last)
        inp = torch.cat(outs, dim=-1)
    return inp, torch.stack(finals)


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("with_h0", [True, False])
def test_scratch_rnn_equals_nn_rnn_outputs_and_gradients(num_layers, nonlinearity, bidirectional,
                                                           batch_first, with_h0):
    """Catches a transposed weight, a bias counted once instead of twice, ReLU not applied,
    the state not carried, or a wrong step order: any of them changes outputs or gradients."""
    g = torch.Generator().manual_seed(num_layers)
    B, T, D, H = 3, 5, 4, 6
    torch.manual_seed(0)
    ref = nn.RNN(D, H, num_layers=num_layers, nonlinearity=nonlinearity,
                 batch_first=batch_first, bidirectional=bidirectional).double()
    stack = _scratch_like(ref, nonlinearity)
    x = torch.randn(B, T, D, dtype=DT, generator=g, requires_grad=True)
    dirs = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * dirs, B, H, dtype=DT, generator=g) if with_h0 else None

    out, h_n = _run_stack(stack, x, h0)
    x_ref = x if batch_first else x.transpose(0, 1)  # (T, B, D) when not batch-first
    out_ref, h_n_ref = ref(x_ref, h0)
    out_ref = out_ref if batch_first else out_ref.transpose(0, 1)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(h_n, h_n_ref)

    weight = torch.randn(out.shape, dtype=DT, generator=g)
    grad_x = torch.autograd.grad((out * weight).sum() + h_n.square().sum(), [x])[0]
    grad_x_ref = torch.autograd.grad((out_ref * weight).sum() + h_n_ref.square().sum(), [x])[0]
    torch.testing.assert_close(grad_x, grad_x_ref)


def test_scratch_rnn_weight_gradients_equal_nn_rnn_for_both_biases():
    """Both of nn.RNN's biases enter a_t alike; a scratch b wired to one of them only would
    give the other a different gradient."""
    torch.manual_seed(3)
    scratch = ch.ScratchRNN(3, 4, nonlinearity="relu").double()
    ref = nn.RNN(3, 4, nonlinearity="relu", batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(scratch.W_xh)
        ref.weight_hh_l0.copy_(scratch.W_hh)
        ref.bias_ih_l0.copy_(scratch.b)
        ref.bias_hh_l0.zero_()
    x = torch.randn(2, 6, 3, dtype=DT)
    out, _ = scratch(x)
    out_ref, _ = ref(x)
    out.sin().sum().backward()
    out_ref.sin().sum().backward()
    torch.testing.assert_close(scratch.W_xh.grad, ref.weight_ih_l0.grad)
    torch.testing.assert_close(scratch.W_hh.grad, ref.weight_hh_l0.grad)
    torch.testing.assert_close(scratch.b.grad, ref.bias_ih_l0.grad)
    torch.testing.assert_close(scratch.b.grad, ref.bias_hh_l0.grad)


def test_scratch_rnn_rejects_an_unknown_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity must be one of \\['relu', 'tanh'\\]; got 'sigmoid'"):
        ch.ScratchRNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("B, T, D, H", [(1, 1, 1, 1), (3, 7, 4, 5), (2, 12, 3, 8)])
def test_hand_bptt_equals_autograd(B, T, D, H):
    """Catches a wrong h_{t-1} (off by one step), a missing tanh derivative, or a gradient
    that does not flow back through W_hh."""
    g = torch.Generator().manual_seed(B * 100 + T)
    k = 1 / math.sqrt(H)
    params = [((torch.rand(*s, generator=g, dtype=DT) * 2 - 1) * k).requires_grad_()
              for s in ((H, D), (H, H), (H,))]
    x = torch.randn(B, T, D, dtype=DT, generator=g)
    h0 = torch.randn(B, H, dtype=DT, generator=g)
    target = torch.randn(B, T, H, dtype=DT, generator=g)
    states = ch.rnn_unroll(x, h0, *params)
    auto = torch.autograd.grad(((states - target) ** 2).sum(), params)
    states = states.detach()
    hand = ch.rnn_bptt(x, h0, states, params[1].detach(), 2 * (states - target))
    for name, mine, theirs in zip(("W_xh", "W_hh", "b"), hand, auto, strict=True):
        torch.testing.assert_close(mine, theirs, msg=f"hand BPTT differs for {name}")


@pytest.mark.parametrize("act", [torch.tanh, torch.relu])
def test_unrolled_rnn_gradcheck(act):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, dtype=DT, generator=g)
    h0 = torch.randn(2, 3, dtype=DT, generator=g)
    params = [torch.randn(*s, dtype=DT, generator=g).requires_grad_() for s in ((3, 3), (3, 3), (3,))]
    assert torch.autograd.gradcheck(lambda *p: ch.rnn_unroll(x, h0, *p, act), params)


@pytest.mark.parametrize("rho", [0.5, 1.5])
def test_jacobian_norms_equal_autograd_and_obey_the_bound(rho):
    """Each norm of (10.5) against autograd's Jacobian of h_T w.r.t. an earlier state;
    multiplying the step Jacobians in the wrong order changes these norms."""
    W_xh, W_hh, b = ch.random_rnn(12, rho, inputs=3, seed=4)
    x = torch.randn(15, 3, generator=torch.Generator().manual_seed(5))
    norms = ch.jacobian_norms(W_xh, W_hh, b, x)
    assert len(norms) == 15
    W_xh, W_hh, b, x = (v.double() for v in (W_xh, W_hh, b, x))
    states = ch.rnn_unroll(x[None], torch.zeros(1, 12, dtype=DT), W_xh, W_hh, b)[0]  # (T, H)
    for d in (1, 2, 7, 14):
        start = states[14 - d]  # h at distance d from the last state

        def last(h, d=d):
            return ch.rnn_unroll(x[None, 15 - d:], h[None], W_xh, W_hh, b)[0, -1]

        J = torch.autograd.functional.jacobian(last, start)
        assert norms[d - 1] == pytest.approx(float(torch.linalg.matrix_norm(J, ord=2)), rel=1e-9)
    sigma = float(torch.linalg.matrix_norm(W_hh, ord=2))
    for d, norm in enumerate(norms, start=1):
        assert norm <= sigma**d * (1 + 1e-9), f"bound (10.6) fails at distance {d}"


@pytest.mark.parametrize("rho", [0.3, 0.9, 2.0])
def test_random_rnn_has_the_requested_spectral_radius(rho):
    _, W_hh, _ = ch.random_rnn(20, rho, seed=7)
    assert float(torch.linalg.eigvals(W_hh).abs().max()) == pytest.approx(rho, rel=1e-5)


def test_bigram_counts_by_hand():
    """ids 0 1 0 1 1 over V = 3: from 0, two 0->1; from 1, one 1->0 and one 1->1."""
    log_p = ch.bigram_log_probs(torch.tensor([0, 1, 0, 1, 1]), 3)
    expected = torch.tensor([[1, 3, 1], [2, 2, 1], [1, 1, 1]], dtype=torch.float32)
    expected = (expected / expected.sum(1, keepdim=True)).log()
    torch.testing.assert_close(log_p, expected)
    loss = ch.bigram_loss(log_p, torch.tensor([0, 1, 1]))
    assert loss == pytest.approx(-(math.log(3 / 5) + math.log(2 / 5)) / 2, rel=1e-6)


def _tiny_char_rnn(V=7, seed=0):
    torch.manual_seed(seed)
    return ch.CharRNN(vocab_size=V, embed=4, hidden=8).double()


@pytest.mark.parametrize("streams, chunk", [(1, 1000), (4, 37), (5, 250), (3, 1)])
def test_streamed_loss_equals_one_pass_over_each_stream(streams, chunk):
    """Carrying the state across chunks must give exactly the loss of reading each stream in
    one pass; forgetting to carry h, or a target shifted by one, would not."""
    model = _tiny_char_rnn()
    ids = torch.randint(0, 7, (401,), generator=torch.Generator().manual_seed(1))
    n = (len(ids) - 1) // streams
    x = ids[: n * streams].view(streams, n)
    y = ids[1: n * streams + 1].view(streams, n)
    with torch.no_grad():
        logits, _ = model(x)
        expected = float(nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()))
    model.train()
    got = ch.nats_per_char(model, ids, streams=streams, chunk=chunk)
    assert got == pytest.approx(expected, rel=1e-10)
    assert model.training, "nats_per_char must leave a training model in training mode"
    model.eval()
    ch.nats_per_char(model, ids, streams=streams, chunk=chunk)
    assert not model.training, "nats_per_char must leave an evaluated model in eval mode"


def test_sampling_at_low_temperature_is_the_greedy_continuation():
    """At a vanishing temperature sampling is argmax; recomputing the whole prefix at every
    step must give the same text as the sampler's carried state."""
    vocab = CharVocab("abcdefg")
    model = _tiny_char_rnn(V=len(vocab), seed=2)
    got = ch.sample(model, vocab, "abc", 12, temperature=1e-6)
    ids = vocab.encode("abc")
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(ids[None])
            ids = torch.cat([ids, logits[0, -1].argmax()[None]])
    assert got == vocab.decode(ids)


def test_sampling_repeats_with_its_seed():
    vocab = CharVocab("abcdefg")
    model = _tiny_char_rnn(V=len(vocab), seed=3)
    first = ch.sample(model, vocab, "a", 40, temperature=1.0, seed=5)
    assert first == ch.sample(model, vocab, "a", 40, temperature=1.0, seed=5)
    assert first != ch.sample(model, vocab, "a", 40, temperature=1.0, seed=6)


def test_scalar_rnn_by_hand():
    assert ch.scalar_rnn(0.5, [1.0, 0, 0, 0]) == [1.0, 0.5, 0.25, 0.125]
    assert ch.scalar_rnn(2.0, [1.0, 1.0]) == [1.0, 3.0]


def solved_bigram_perplexity(loss_nats: float) -> float:
    """A reference solution of exercise 3: perplexity is e to the loss in nats."""
    return math.exp(loss_nats)


def test_exercise_perplexity(capsys):
    assert check("Exercise 3", ch.bigram_perplexity, ch.test_perplexity) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_bigram_perplexity, ch.test_perplexity) is True
    with pytest.raises(AssertionError, match="perplexity 76"):
        check("Exercise 3", lambda loss: 2**loss, ch.test_perplexity)  # bits, not nats
