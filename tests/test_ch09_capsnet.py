"""Chapter 09 checks, on the chapter's own definitions: the squash and routing against the
plain-Python transcription of Procedure 1 over a grid of sizes, the coupling entropy, the
two losses, the capsule layers (grouping, predictions, masking), the affine test digits,
bad inputs, and the coding exercise."""

import math

import pytest
import torch
from chapters import load_chapter

from nnbook.exercises import check

ch = load_chapter("09")
F64 = dict(dtype=torch.float64)


def _loop_tensor(nested):
    return torch.tensor(nested, **F64)


# ---------------------------------------------------------------- squash (9.1)

@pytest.mark.parametrize("shape, scale", [((7,), 0.01), ((3, 5), 1.0), ((2, 4, 16), 30.0)])
def test_squash_matches_the_loop(shape, scale):
    """Catches a wrong length map (|s| instead of |s|^2) or a missing normalization; the
    tolerance allows for the eps under the square root (relative error ~ eps / |s|^2)."""
    gen = torch.Generator().manual_seed(len(shape))
    s = torch.randn(*shape, generator=gen, **F64) * scale
    flat = s.reshape(-1, shape[-1])
    ref = _loop_tensor([ch.squash_loop(row) for row in flat.tolist()]).reshape(shape)
    torch.testing.assert_close(ch.squash(s), ref, atol=1e-8, rtol=1e-6)  # eps = 1e-8 in |s|


def test_squash_keeps_direction_and_maps_length_into_unit_interval():
    """Catches a squash along the wrong dimension or one that changes the direction."""
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.3, 0.4]], **F64)
    v = ch.squash(s)
    torch.testing.assert_close(v[0], torch.tensor([0.6, 0.8], **F64) * 25 / 26)
    assert (v[1] == 0).all(), "squash(0) must be 0, not NaN"
    torch.testing.assert_close(v[2].norm(), torch.tensor(0.25 / 1.25, **F64))
    torch.testing.assert_close(ch.squash(s.T, dim=0), v.T)       # the dim argument
    lengths = ch.squash(torch.logspace(-3, 3, 50, **F64)[:, None]).squeeze(1)
    assert (lengths.diff() > 0).all() and (lengths < 1).all()


def test_squash_rejects_non_tensors():
    with pytest.raises(ValueError, match=r"s must be a tensor of capsule vectors \(\.\.\., D\); "
                                         r"got list"):
        ch.squash([1.0, 2.0])


# ---------------------------------------------------------------- routing (9.3-9.5)

@pytest.mark.parametrize("B, n_in, J, D, n_iter", [
    (1, 1, 1, 1, 1), (2, 3, 2, 4, 2), (3, 8, 5, 3, 3), (1, 20, 10, 16, 4), (2, 6, 7, 2, 5),
])
def test_route_matches_procedure_1(B, n_in, J, D, n_iter):
    """Catches a softmax over children instead of parents, an agreement with s instead of
    v, or a sum over the wrong axis: all give differences of order one (the tolerance only
    allows for the eps inside the batched squash)."""
    gen = torch.Generator().manual_seed(B * 100 + n_in)
    u_hat = torch.randn(B, n_in, J, D, generator=gen, **F64) * 2
    v, c = ch.route(u_hat, n_iter)
    assert v.shape == (B, J, D) and c.shape == (B, n_in, J)
    for b in range(B):
        v_ref, c_ref = ch.routing_loop(u_hat[b].tolist(), n_iter)
        torch.testing.assert_close(v[b], _loop_tensor(v_ref), atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(c[b], _loop_tensor(c_ref), atol=1e-7, rtol=1e-6)


def test_one_iteration_is_a_squashed_average():
    """r = 1 must leave the couplings uniform: catches logits not starting at zero."""
    u_hat = torch.randn(2, 5, 4, 3, generator=torch.Generator().manual_seed(1), **F64)
    v, c = ch.route(u_hat, 1)
    torch.testing.assert_close(c, torch.full_like(c, 0.25))
    torch.testing.assert_close(v, ch.squash(u_hat.sum(1) / 4))
    assert ch.coupling_entropy(c) == pytest.approx(math.log(4))


def test_agreement_sharpens_the_couplings():
    """Two children agree on parent 0: routing must move their votes there (section 1)."""
    votes = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [0.0, -2.0]]], **F64)[None]
    entropies = [ch.coupling_entropy(ch.route(votes, r)[1]) for r in range(1, 5)]
    assert all(a > b for a, b in zip(entropies, entropies[1:]))
    v, c = ch.route(votes, 2)
    torch.testing.assert_close(c[0, 0, 0], torch.tensor(math.exp(1.6) / (math.exp(1.6) + 1), **F64))
    assert v[0, 1].norm() == 0


@pytest.mark.parametrize("u_hat, n_iter, message", [
    (torch.zeros(2, 3, 4), 3, r"u_hat must be \(B, I, J, D\); got \(2, 3, 4\)"),
    (torch.zeros(1, 2, 3, 4), 0, "n_iter must be a positive int; got 0"),
    (torch.zeros(1, 2, 3, 4), 2.0, "n_iter must be a positive int; got 2.0"),
])
def test_route_rejects_bad_inputs(u_hat, n_iter, message):
    with pytest.raises(ValueError, match=message):
        ch.route(u_hat, n_iter)


def test_coupling_entropy_limits_and_shape():
    """Uniform couplings give log J, one-hot couplings 0 (no NaN from 0 log 0)."""
    uniform = torch.full((2, 3, 10), 0.1)
    assert ch.coupling_entropy(uniform) == pytest.approx(math.log(10), rel=1e-6)
    one_hot = torch.nn.functional.one_hot(torch.tensor([[1, 2, 3]]), 10).float()
    assert ch.coupling_entropy(one_hot) == 0
    with pytest.raises(ValueError, match=r"c must be \(B, I, J\); got \(3, 10\)"):
        ch.coupling_entropy(torch.zeros(3, 10))


def test_routing_gradients_match_finite_differences():
    """Autograd through three iterations against finite differences (float64)."""
    u = torch.randn(1, 3, 2, 4, generator=torch.Generator().manual_seed(3), **F64,
                    requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ch.route(t, 3)[0], (u,))


# ---------------------------------------------------------------- losses (9.7, 9.8)

def test_margin_loss_against_the_formula_class_by_class():
    """Catches swapped margins, a missing lambda, or a mean over classes instead of a sum."""
    gen = torch.Generator().manual_seed(4)
    lengths = torch.rand(6, 10, generator=gen, **F64)
    y = torch.randint(0, 10, (6,), generator=gen)
    total = 0.0
    for b in range(6):
        for k in range(10):
            length = lengths[b, k].item()
            if k == y[b]:
                total += max(0.0, 0.9 - length) ** 2
            else:
                total += 0.5 * max(0.0, length - 0.1) ** 2
    assert ch.margin_loss(lengths, y).item() == pytest.approx(total / 6, rel=1e-12)
    assert ch.margin_loss(torch.tensor([[0.95, 0.05]]), torch.tensor([0])).item() == 0


def test_loss_shapes_are_checked():
    with pytest.raises(ValueError, match=r"lengths must be \(B, J\) and y \(B,\); got \(4,\) and \(4,\)"):
        ch.margin_loss(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x_hat must be \(2, 784\); got \(2, 10\)"):
        ch.reconstruction_loss(torch.zeros(2, 10), torch.zeros(2, 1, 28, 28))
    x = torch.ones(2, 1, 28, 28)
    assert ch.reconstruction_loss(torch.zeros(2, 784), x).item() == pytest.approx(0.0005 * 784)


# ---------------------------------------------------------------- the capsule layers

def test_primary_capsules_group_channels_by_type_and_position():
    """Capsule (type t, position p) must hold channels t*K..(t+1)*K at p: catches a
    reshape that mixes the channel and position axes (every shape stays the same)."""
    torch.manual_seed(0)
    layer = ch.PrimaryCaps(c_in=4, n_types=3, d_caps=5, kernel=3, stride=3)
    x = torch.randn(2, 4, 10, 10)
    u = layer(x)
    raw = layer.conv(x)                                      # (2, 15, 3, 3)
    assert u.shape == (2, 3 * 9, 5)
    for t, p in [(0, 0), (1, 4), (2, 8)]:
        expected = ch.squash(raw[:, t * 5:(t + 1) * 5].flatten(2)[:, :, p])
        torch.testing.assert_close(u[:, t * 9 + p], expected)


def test_digit_capsule_predictions_are_w_times_u():
    """u_hat_{j|i} = W_ij u_i (9.2) for every pair, via routing with r = 1."""
    torch.manual_seed(1)
    layer = ch.DigitCaps(n_in=4, d_in=3, n_out=2, d_out=5, n_iter=1)
    u = torch.randn(2, 4, 3)
    v, _ = layer(u)
    W = layer.W.detach()
    s = torch.stack([sum(W[i, j] @ u[b, i] for i in range(4)) / 2
                     for b in range(2) for j in range(2)]).view(2, 2, 5)
    torch.testing.assert_close(v.detach(), ch.squash(s))
    with pytest.raises(ValueError, match=r"u must be \(B, 4, 3\); got \(2, 3, 3\)"):
        layer(torch.zeros(2, 3, 3))


@pytest.fixture(scope="module")
def small_capsnet():
    torch.manual_seed(0)
    return ch.CapsNet(c1=4, c2=8, n_types=2, d_hidden=16).eval()


def test_capsnet_outputs_and_input_check(small_capsnet):
    x = torch.rand(3, 1, 28, 28)
    lengths, x_hat = small_capsnet(x)
    assert lengths.shape == (3, 10) and x_hat.shape == (3, 784)
    assert (lengths >= 0).all() and (lengths < 1).all()
    assert (x_hat > 0).all() and (x_hat < 1).all()
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 28, 28\); got \(3, 28, 28\)"):
        small_capsnet(torch.rand(3, 28, 28))


def test_decoder_sees_only_the_masked_capsule(small_capsnet):
    """Catches a mask that is not applied (or applied to the wrong class)."""
    v = torch.randn(2, 10, 16)
    y = torch.tensor([3, 7])
    other = v.clone()
    other[:, [0, 1, 2, 4, 5, 6, 8, 9]] = torch.randn(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(small_capsnet.decode(v, y), small_capsnet.decode(other, y))
        moved = v.clone()
        moved[0, 3] += 1.0
        assert not torch.allclose(small_capsnet.decode(moved, y)[0], small_capsnet.decode(v, y)[0])


def test_training_loss_masks_with_the_true_label(small_capsnet):
    """capsnet_loss must decode the true class, not the predicted one."""
    x = torch.rand(4, 1, 28, 28)
    lengths, _ = small_capsnet(x)
    y = (lengths.argmax(-1) + 1) % 10                        # never the prediction
    v, _ = small_capsnet.capsules(x)
    expected = ch.margin_loss(v.norm(dim=-1), y) + ch.reconstruction_loss(
        small_capsnet.decode(v, y), x)
    torch.testing.assert_close(ch.capsnet_loss(small_capsnet, x, y), expected)


def test_predict_accuracy_and_routing_sweep(small_capsnet):
    x = torch.rand(6, 1, 28, 28)
    pred = ch.predict(small_capsnet, x, batch_size=4)
    assert pred.shape == (6,) and ch.accuracy(small_capsnet, x, pred) == 1.0
    entropies, accs = ch.routing_sweep(small_capsnet, x, pred, [1, 3], batch_size=4)
    assert entropies[0] == pytest.approx(math.log(10), rel=1e-5)
    assert accs[1] == 1.0                                    # r = 3 is the default
    cnn = ch.PlainCNN(c1=4, c2=8, d_hidden=12).eval()
    assert ch.predict(cnn, x).shape == (6,)


# ---------------------------------------------------------------- shifted and rotated digits

def test_affine_digits_shift_is_exact_and_rotation_turns_the_image():
    """An integer shift equals a zero-filled roll (catches a sign or scale error in the
    translation); 90 degrees equals rot90 (catches a transposed rotation)."""
    x = torch.rand(2, 1, 28, 28)
    right = torch.zeros_like(x)
    right[..., 2:] = x[..., :-2]
    torch.testing.assert_close(ch.affine_digits(x, dx=2), right)
    up = torch.zeros_like(x)
    up[..., :-3, :] = x[..., 3:, :]
    torch.testing.assert_close(ch.affine_digits(x, dy=-3), up)
    torch.testing.assert_close(ch.affine_digits(x, angle=90), torch.rot90(x, 1, dims=(2, 3)),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 28, 28\); got \(28, 28\)"):
        ch.affine_digits(torch.zeros(28, 28))


def test_cost_counts_match_the_paper():
    """The paper's network: 1152 x 10 x 16 x 8 multiply-adds for the predictions."""
    paper = ch.capsnet_macs(convs=[(20, 256, 1, 9), (6, 256, 256, 9)], n_primary=1152, d_in=8)
    assert paper["predictions"] == 1152 * 10 * 16 * 8
    assert paper["convolutions"] == 20 * 20 * 256 * 81 + 36 * 256 * 256 * 81
    assert paper["decoder"] == 160 * 512 + 512 * 1024 + 1024 * 784


# ---------------------------------------------------------------- the coding exercise

def solved_unsquash(v):
    length = v.norm(dim=-1, keepdim=True)
    n = torch.sqrt(length / (1 - length))        # |s| from |v| = n^2 / (1 + n^2)
    return v * n / length.clamp_min(1e-12)


def test_exercise_unsquash(capsys):
    name = "Exercise 2 (unsquash)"
    assert check(name, ch.unsquash, ch.test_unsquash) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_unsquash, ch.test_unsquash) is True
    with pytest.raises(AssertionError):
        check(name, lambda v: v, ch.test_unsquash)           # forgets to undo the squash
    with pytest.raises(AssertionError):                      # NaN for zero vectors
        check(name, lambda v: v * torch.sqrt(v.norm(dim=-1, keepdim=True)
                                             / (1 - v.norm(dim=-1, keepdim=True)))
              / v.norm(dim=-1, keepdim=True), ch.test_unsquash)
