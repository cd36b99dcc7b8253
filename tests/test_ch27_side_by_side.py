"""Chapter 27 checks, on the chapter's own definitions: the cost formulas against PyTorch's FLOP
counter over a grid of shapes, the two wrappers (the row-reading LSTM against torch.nn.LSTM with
the same weights, the Transformer's patch tokens against an explicit unfold), the MLP's permutation
symmetry through training with several optimizers, the training function, bad inputs, and the
coding exercise."""

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn

from nnbook.exercises import check

ch = load_chapter("27")


def solved_row_gru_macs(hidden):
    return 28 * 3 * hidden * (28 + hidden) + 10 * hidden


@pytest.mark.parametrize("widths", [(784, 10), (784, 32, 10), (784, 256, 256, 256, 10)])
def test_mlp_formula_equals_the_counter(widths):
    # catches: a layer missed or counted twice in (27.5)
    depth = len(widths) - 3
    if depth < 0:
        build = lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # noqa: E731
    else:
        build = lambda: ch.ch03.DeepMLP(depth=depth, width=widths[1], residual=False)  # noqa: E731
    assert ch.measured_macs(build) == ch.mlp_macs(widths)


@pytest.mark.parametrize("hidden", [1, 8, 64, 200])
def test_lstm_formula_equals_the_counter(hidden):
    # catches: (27.2) with 3 gates, or without the recurrent product
    assert (ch.measured_macs(lambda: ch.RowLSTM(hidden=hidden))
            == ch.lstm_macs(T=28, D=28, H=hidden) + 10 * hidden)


@pytest.mark.parametrize("patch", [4, 7, 14, 28])
@pytest.mark.parametrize("d_model,n_heads,d_ff,n_layers", [(16, 2, 8, 1), (32, 4, 128, 3)])
def test_vit_formula_equals_the_counter(patch, d_model, n_heads, d_ff, n_layers):
    # catches: the T^2 d attention terms or the class token left out of (27.3)-(27.4)
    def build():
        return ch.PatchTransformer(patch=patch, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                                   n_layers=n_layers)

    assert ch.measured_macs(build) == ch.vit_macs(patch=patch, d_model=d_model, d_ff=d_ff,
                                                  n_layers=n_layers)


def test_lenet_formula_equals_the_counter():
    # catches: (27.5) drifting from chapter 04's LeNet-5
    assert ch.measured_macs(ch.ARCHITECTURES["LeNet-5"][1]) == ch.lenet_macs()


def test_row_lstm_equals_torch_lstm_with_the_same_weights():
    # catches: rows read in the wrong order or as columns, or the wrong state classified
    torch.manual_seed(0)
    model = ch.RowLSTM(hidden=12)
    ref = nn.LSTM(28, 12, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(model.lstm.W)
        ref.weight_hh_l0.copy_(model.lstm.U)
        ref.bias_ih_l0.copy_(model.lstm.b)
        ref.bias_hh_l0.zero_()
    x = torch.rand(5, 1, 28, 28)
    _, (h, _) = ref(x[:, 0])
    torch.testing.assert_close(model(x), model.out(h[-1]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(x), model(x.transpose(-1, -2)), atol=1e-4)


@pytest.mark.parametrize("patch", [4, 7, 14])
def test_patch_tokens_are_one_linear_map_per_patch(patch):
    # catches: overlapping or mis-ordered patches, or a map that mixes patches
    torch.manual_seed(1)
    model = ch.PatchTransformer(patch=patch, d_model=8, n_heads=2, d_ff=8, n_layers=1)
    x = torch.rand(3, 1, 28, 28)
    patches = F.unfold(x, patch, stride=patch).transpose(1, 2)        # (B, N, p*p)
    expected = patches @ model.embed.weight.flatten(1).T + model.embed.bias
    torch.testing.assert_close(model.tokens(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_without_positions_the_class_token_ignores_patch_order(seed):
    # catches: a position signal leaking in (e.g. positions added when positions=False)
    g = torch.Generator().manual_seed(seed)
    model = ch.PatchTransformer(patch=4, d_model=16, n_heads=4, d_ff=16, n_layers=2,
                                positions=False).eval()
    x = torch.rand(2, 1, 28, 28, generator=g)
    order = torch.randperm(49, generator=g)
    with torch.no_grad():
        t = model.tokens(x)
        torch.testing.assert_close(model.encode(t)[:, 0], model.encode(t[:, order])[:, 0],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd-momentum", "adam", "adamw"])
def test_mlp_trajectory_is_permutation_equivariant(make_opt):
    # catches: (27.6) stated for the forward pass only; an optimizer that mixes entries
    g = torch.Generator().manual_seed(3)
    perm = torch.randperm(784, generator=g)
    a = ch.ch03.DeepMLP(depth=1, width=16, residual=False).double()
    b = ch.ch03.DeepMLP(depth=1, width=16, residual=False).double()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.embed.weight.copy_(a.embed.weight[:, perm])
    opt_a, opt_b = make_opt(a.parameters()), make_opt(b.parameters())
    for _ in range(10):
        x = torch.rand(32, 1, 28, 28, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=g)
        for model, opt, inputs in ((a, opt_a, x), (b, opt_b, ch.permute_pixels(x, perm))):
            opt.zero_grad()
            ch.cross_entropy(model, inputs, y).backward()
            opt.step()
    torch.testing.assert_close(b.embed.weight, a.embed.weight[:, perm], atol=1e-10, rtol=0)
    torch.testing.assert_close(b.head.weight, a.head.weight, atol=1e-10, rtol=0)


def test_permute_pixels_moves_pixels_and_is_undone_by_the_inverse():
    # catches: a permutation applied to the batch or channel axis, or its inverse confused
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(784, generator=g)
    x = torch.rand(4, 1, 28, 28, generator=g)
    shuffled = ch.permute_pixels(x, perm)
    assert shuffled.flatten(1)[:, 5].equal(x.flatten(1)[:, perm[5]])
    assert ch.permute_pixels(shuffled, torch.argsort(perm)).equal(x)
    with pytest.raises(ValueError, match=r"x must be \(N, 1, 28, 28\)"):
        ch.permute_pixels(x[:, 0], perm)
    with pytest.raises(ValueError, match=r"perm \(784,\)"):
        ch.permute_pixels(x, perm[:100])


def test_train_repeats_itself_and_follows_its_seed():
    # catches: batches drawn from a global generator (runs that cannot be repeated)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))

    def run(seed):
        torch.manual_seed(0)
        model = ch.ch03.DeepMLP(depth=1, width=8, residual=False)
        ch.train(model, ch.cross_entropy, x, y, steps=5, batch_size=8, lr=1e-2, seed=seed)
        return model.embed.weight.detach().clone()

    assert run(0).equal(run(0))
    assert not run(0).equal(run(1))
    with pytest.raises(ValueError, match="x must be"):
        ch.train(ch.ch03.DeepMLP(depth=1, width=8, residual=False), ch.cross_entropy,
                 x, y[:10], steps=1, batch_size=8, lr=1e-2, seed=0)


def test_wrappers_refuse_other_shapes():
    # catches: a (B, 28, 28) batch silently read as 28 channels
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 28, 28\)"):
        ch.RowLSTM(hidden=4)(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match=r"x must be \(B, 1, 28, 28\)"):
        ch.PatchTransformer()(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="patch must divide 28"):
        ch.PatchTransformer(patch=5)


def test_every_architecture_classifies_a_batch():
    # catches: an architecture whose outputs chapter 09's accuracy cannot read
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    for name, (_, build, loss_fn) in ch.ARCHITECTURES.items():
        torch.manual_seed(0)
        model = build()
        loss = loss_fn(model, x, y)
        assert loss.ndim == 0 and torch.isfinite(loss), name
        assert 0.0 <= ch.ch09.accuracy(model, x, y) <= 1.0, name


def test_exercise_row_gru_macs(capsys):
    name = "Exercise 2 (a GRU's multiply-adds)"
    assert check(name, ch.row_gru_macs, ch.test_row_gru_macs) is None
    assert "not attempted" in capsys.readouterr().out
    assert check(name, solved_row_gru_macs, ch.test_row_gru_macs) is True
    with pytest.raises(AssertionError):  # the LSTM's four gates instead of three
        check(name, lambda h: 28 * 4 * h * (28 + h) + 10 * h, ch.test_row_gru_macs)
    with pytest.raises(AssertionError):  # the head forgotten
        check(name, lambda h: 28 * 3 * h * (28 + h), ch.test_row_gru_macs)
