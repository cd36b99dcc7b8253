"""Chapter 17 checks, on the chapter's own definitions: the batched CNN + LSTM against its
frame-by-frame loop and nn.LSTMCell over a grid of sizes, the order-blindness of the frame
average (exactly chance on twin pairs, loss never below log 2), the 3-D CNN's order
sensitivity, the helpers against references, bad inputs, and the two coding exercises."""

import math

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnbook.exercises import check
from nnbook.video import direction_pairs

ch = load_chapter("17")
F64 = dict(dtype=torch.float64)


def _clips(B, T, S, seed=0, dtype=torch.float64):
    return torch.rand(B, T, 1, S, S, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _paired(n_pairs=40, seed=0):
    """Twin-paired clips of fake digits (squares of different brightness), 32 x 32, T = 6."""
    digits = torch.zeros(5, 28, 28)
    digits[:, 6:20, 8:18] = torch.linspace(0.3, 1.0, 5)[:, None, None]
    return direction_pairs(digits, n_pairs, seed=seed, frames=6, size=32, max_speed=2,
                           min_shift=2)


# ---------------------------------------------------------------- the hybrid against loops

@pytest.mark.parametrize("B, T, S, D, H", [(1, 1, 8, 3, 2), (3, 5, 16, 8, 4), (2, 7, 24, 6, 9),
                                           (5, 2, 48, 16, 12)])
def test_batched_cnn_lstm_equals_the_frame_by_frame_loop(B, T, S, D, H):
    """Catches unfolding the batch as (T, B) instead of (B, T), a time axis read in the wrong
    order, or a bias counted once instead of bias_ih + bias_hh; B != T so a transposed fold
    cannot pass by accident."""
    torch.manual_seed(B + T)
    model = ch.CNNLSTM(size=S, d_feature=D, hidden=H).double()
    with torch.no_grad():
        model.lstm.bias_hh_l0.normal_()  # both biases nonzero: a dropped one would show
    x = _clips(B, T, S, seed=T)
    torch.testing.assert_close(model(x), ch.cnn_lstm_loop(model, x), rtol=0, atol=1e-10)
    z = ch.encode_frames(model.encoder, x)
    for t in range(T):
        torch.testing.assert_close(z[:, t], model.encoder(x[:, t]))


@pytest.mark.parametrize("B, D, H", [(1, 1, 1), (4, 6, 3), (3, 10, 16)])
def test_lstm_step_equals_nn_lstm_cell(B, D, H):
    """Our (11.1)-(11.4) against nn.LSTMCell with the same weights: catches a wrong gate
    order (PyTorch's is i, f, g, o) or tanh/sigmoid swapped, to 1e-6 in float32."""
    torch.manual_seed(D)
    cell = nn.LSTMCell(D, H)
    z, h, c = torch.randn(B, D), torch.randn(B, H), torch.randn(B, H)
    h_ref, c_ref = cell(z, (h, c))
    h_new, c_new = ch.lstm_step(z, h, c, cell.weight_ih, cell.weight_hh,
                                cell.bias_ih + cell.bias_hh)
    torch.testing.assert_close(h_new, h_ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(c_new, c_ref, rtol=0, atol=1e-6)


def test_forget_gate_bias_starts_at_one():
    """The two bias vectors' forget quarter sums to 1; the other gates keep PyTorch's init."""
    model = ch.CNNLSTM(size=16, d_feature=4, hidden=5)
    b = model.lstm.bias_ih_l0 + model.lstm.bias_hh_l0
    torch.testing.assert_close(b[5:10], torch.ones(5))
    assert not torch.allclose(b[:5], torch.ones(5))


# ---------------------------------------------------------------- order-blind vs order-aware

@pytest.mark.parametrize("seed", range(4))
def test_frame_average_is_permutation_invariant_and_the_lstm_is_not(seed):
    """(17.6): any permutation of the frames leaves the frame average unchanged (a mean over
    the wrong axis would not); the LSTM's output changes."""
    torch.manual_seed(seed)
    x = _clips(3, 6, 16, seed=seed)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed + 10))
    average = ch.FrameAverage(size=16, d_feature=5, hidden=4).double()
    torch.testing.assert_close(average(x[:, perm]), average(x), rtol=0, atol=1e-12)
    hybrid = ch.CNNLSTM(size=16, d_feature=5, hidden=4).double()
    assert (hybrid(x.flip(1))[:, -1] - hybrid(x)[:, -1]).abs().max() > 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_frame_average_is_exactly_at_chance_on_twin_pairs(seed):
    """The chapter's claim for *every* parameter setting: untrained models of three seeds get
    accuracy exactly 1/2 and a mean cross-entropy of at least log 2 (17.7) on paired data."""
    x, y = _paired(seed=seed)
    torch.manual_seed(seed)
    model = ch.FrameAverage(size=32, d_feature=6, hidden=5)
    with torch.no_grad():
        model.head[-1].bias.copy_(torch.tensor([2.0, -1.0]))  # far from 1/2 on purpose
        logits = model(x)
    assert ch.accuracy(logits.softmax(-1), y) == 0.5
    assert float(F.cross_entropy(logits, y)) >= math.log(2) - 1e-6


def test_the_3d_cnn_sees_order_and_handles_two_frames():
    """The first kernel spans two frames: reversing them changes the output; T = 2 is the
    shortest clip it accepts, and its output has one row of logits per clip."""
    torch.manual_seed(0)
    model = ch.MotionConv3d(size=16, d_feature=6, hidden=4).double()
    x = _clips(4, 2, 16)
    out = model(x)
    assert out.shape == (4, 2)
    assert (model(x.flip(1)) - out).abs().max() > 1e-6
    with pytest.raises(ValueError, match="multiple of 8"):
        ch.MotionConv3d(size=20, d_feature=6, hidden=4)


# ---------------------------------------------------------------- helpers

def test_macs_per_frame_equals_pytorchs_flop_counter():
    """Catches a wrong output side (e.g. forgetting the stride) in the cost of section 2."""
    for size in (16, 48, 64):
        enc = ch.FrameEncoder(size=size, d_feature=32)
        with FlopCounterMode(display=False) as counter:
            enc(torch.zeros(1, 1, size, size))
        assert ch.macs_per_frame(enc, size) == counter.get_total_flops() // 2


def test_belief_loss_is_the_mean_over_steps():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(3, 4, 2, generator=g), torch.tensor([0, 1, 1])
    want = sum(F.cross_entropy(logits[:, t], y) for t in range(4)) / 4
    torch.testing.assert_close(ch.belief_loss(logits, y), want)
    with pytest.raises(ValueError, match=r"logits must be \(B, T, 2\) with B = 3; got \(3, 2\)"):
        ch.belief_loss(logits[:, 0], y)


def test_accuracy_reads_the_last_belief():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.1, 0.9], [0.6, 0.4]]])  # (2, T=2, 2)
    assert ch.accuracy(probs, torch.tensor([1, 0])) == 1.0
    assert ch.accuracy(probs[:, 0], torch.tensor([1, 0])) == 0.0


@pytest.mark.parametrize("bad, got", [(torch.zeros(2, 3, 16, 16), r"\(2, 3, 16, 16\)"),
                                      (torch.zeros(2, 3, 3, 16, 16), r"\(2, 3, 3, 16, 16\)"),
                                      ([[0.0]], "list")])
def test_bad_clips_are_rejected(bad, got):
    model = ch.CNNLSTM(size=16, d_feature=4, hidden=3)
    with pytest.raises(ValueError, match=r"clips must be \(B, T, 1, S, S\); got " + got):
        model(bad)
    with pytest.raises(ValueError, match="clips must be"):
        ch.cnn_lstm_loop(model, bad)
    with pytest.raises(ValueError, match="size must be a multiple of 8; got 12"):
        ch.FrameEncoder(size=12, d_feature=4)


def test_centre_x_and_frame_strip():
    x = torch.zeros(1, 2, 1, 8, 8)
    x[0, 0, 0, 3, 5] = 1.0
    x[0, 1, 0, :, 1] = 0.5
    x[0, 1, 0, :, 4] = 0.5
    torch.testing.assert_close(ch.centre_x(x), torch.tensor([[5.0, 2.5]]))
    assert torch.isfinite(ch.centre_x(torch.zeros(1, 1, 1, 8, 8))).all()
    strip = ch.frame_strip(x[0], gap=2)
    assert strip.shape == (8, 20)
    assert strip[3, 5] == 1.0 and strip[0, 10 + 1] == 0.5 and strip[0, 8] == 0.5


def test_probe_r2_by_hand():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(200, 3, generator=g)
    target = (h @ torch.tensor([1.0, -2.0, 0.5]) + 3).double()
    assert ch.probe_r2(h[:100], target[:100], h[100:], target[100:]) == pytest.approx(1.0)
    noise = torch.randn(200, generator=g, dtype=torch.float64)
    assert ch.probe_r2(h[:100], noise[:100], h[100:], noise[100:]) < 0.1


def test_train_video_keeps_the_best_checkpoint():
    """Two validation checks: the weights left in the model are those of the better one."""
    x_val, y_val = _paired(n_pairs=10, seed=7)
    digits = torch.zeros(3, 28, 28)
    digits[:, 5:20, 5:20] = 1.0
    cfg = ch.Config(size=32, frames=6, max_speed=2, min_shift=2, d_feature=4, hidden=4,
                    batch_pairs=4, steps=4, eval_every=2, lr=0.05)
    torch.manual_seed(0)
    model = ch.MotionConv3d(size=32, d_feature=4, hidden=4)
    history = ch.train_video(model, digits, x_val, y_val, cfg, loss_fn=F.cross_entropy,
                             gen=torch.Generator().manual_seed(0))
    assert history["step"] == [2, 4]
    assert ch.accuracy(ch.predict(model, x_val), y_val) == max(history["val_acc"])


def test_draw_pair_rejects_a_missing_pair():
    x, y = _paired(n_pairs=3)
    with pytest.raises(ValueError, match=r"pair index must be in \[0, 3\); got 3"):
        ch.draw_pair(3, torch.full((6, 6, 2), 0.5), x, y)


# ---------------------------------------------------------------- exercises

def solved_simulate_bounce(start, velocity, frames, limit):
    p, v, out = start.clone(), velocity.clone(), [start.clone()]
    for _ in range(frames - 1):
        p = p + v
        while ((p < 0) | (p > limit)).any():  # fast points reflect several times
            low, high = p < 0, p > limit
            p = torch.where(low, -p, torch.where(high, 2 * limit - p, p))
            v = torch.where(low | high, -v, v)
        out.append(p)
    return torch.stack(out, 1)


def solved_difference_pool(z):
    return z.diff(dim=1).mean(1)


def test_exercise_simulate_bounce(capsys):
    name = "Exercise 2"
    assert check(name, ch.simulate_bounce, ch.test_simulate_bounce) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_simulate_bounce, ch.test_simulate_bounce) is True

    def one_reflection(start, velocity, frames, limit):  # misses multiple reflections
        p, v, out = start.clone(), velocity.clone(), [start.clone()]
        for _ in range(frames - 1):
            p = p + v
            low, high = p < 0, p > limit
            p = torch.where(low, -p, torch.where(high, 2 * limit - p, p))
            v = torch.where(low | high, -v, v)
            out.append(p)
        return torch.stack(out, 1)

    with pytest.raises(AssertionError, match="more than one reflection"):
        check(name, one_reflection, ch.test_simulate_bounce)
    with pytest.raises(AssertionError, match="0, 3, 2, 1, 4"):  # no walls at all
        check(name, lambda s, v, T, L: s[:, None] + v[:, None] * torch.arange(T),
              ch.test_simulate_bounce)


def test_exercise_difference_pool(capsys):
    name = "Exercise 3"
    assert check(name, ch.difference_pool, ch.test_difference_pool) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_difference_pool, ch.test_difference_pool) is True
    with pytest.raises(AssertionError, match="give"):  # a sum, not a mean
        check(name, lambda z: z.diff(dim=1).sum(1), ch.test_difference_pool)
    with pytest.raises(AssertionError, match="telescopes"):  # divides by 4, not T - 1
        check(name, lambda z: (z[:, -1] - z[:, 0]) / 4, ch.test_difference_pool)
