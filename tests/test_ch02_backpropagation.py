"""Chapter 02 pushed further: the hand-written backward pass (no autograd) against
torch.autograd and finite differences (gradcheck, float64 on the CPU) over a grid of shapes,
extreme logits, the module against nn.Linear layers with the same weights, bad inputs and the
exercise's check.
"""

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn

import nnbook
from nnbook.exercises import check

ch = load_chapter("02")

SHAPES = [  # (B, d, m, k): batch, inputs, hidden units, classes
    (1, 1, 1, 2),
    (2, 3, 4, 2),
    (8, 5, 7, 3),
    (5, 1, 9, 4),
    (16, 20, 3, 10),
    (64, 12, 32, 5),
]
ACTIVATIONS = ["relu", "tanh"]


def random_problem(B, d, m, k, *, seed=0, dtype=torch.float64):
    """X (B, d), [W1 (m, d), b1 (m,), W2 (k, m), b2 (k,)] requiring grad, labels y (B,)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, d, dtype=dtype, generator=gen).requires_grad_()
    params = [torch.randn(*s, dtype=dtype, generator=gen).requires_grad_()
              for s in [(m, d), (m,), (k, m), (k,)]]
    y = torch.randint(0, k, (B,), generator=gen)
    return X, params, y


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_equals_autograd_for_any_upstream_gradient(shape, activation):
    """(2.4)-(2.6) for an arbitrary dL/dZ2, not only cross-entropy's: catches a transposed
    product, a missing phi' factor or a bias gradient summed over the wrong axis."""
    X, params, _ = random_problem(*shape)
    Z2, cache = ch.mlp_forward(X, *params, activation=activation)
    G = torch.randn(Z2.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = torch.autograd.grad(Z2, [X, *params], grad_outputs=G)
    with torch.no_grad():
        got = ch.mlp_backward(G, [t.detach() for t in cache], activation=activation)
    for name, g, e in zip(["X", "W1", "b1", "W2", "b2"], got, expected, strict=True):
        assert g.shape == e.shape, f"d{name}: shape {tuple(g.shape)} != {tuple(e.shape)}"
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12,
                                   msg=lambda s, n=name: f"d{n}: {s}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES[:5], ids=str)
def test_manual_function_passes_gradcheck(shape, activation):
    """Finite differences of the forward pass against our backward, float64 on the CPU."""
    X, params, _ = random_problem(*shape, seed=2)
    assert torch.autograd.gradcheck(ch.ManualMLPFunction.apply, (X, *params, activation))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_softmax_cross_entropy_equals_pytorch(shape, scale):
    """Loss (2.2) and gradient (2.3) against F.cross_entropy. Logits of size 1e3 overflow a
    naive softmax (exp(1000) = inf); the log-sum-exp form must stay exact."""
    B, _, _, k = shape
    gen = torch.Generator().manual_seed(3)
    Z2 = (scale * torch.randn(B, k, dtype=torch.float64, generator=gen)).requires_grad_()
    y = torch.randint(0, k, (B,), generator=gen)
    loss, dZ2 = ch.softmax_cross_entropy(Z2.detach(), y)
    ref = F.cross_entropy(Z2, y)
    (ref_grad,) = torch.autograd.grad(ref, Z2)
    assert torch.isfinite(loss) and torch.isfinite(dZ2).all()
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dZ2, ref_grad, rtol=1e-10, atol=1e-12)


def test_softmax_cross_entropy_in_float32_at_large_logits():
    Z2 = torch.tensor([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([1, 2])
    loss, dZ2 = ch.softmax_cross_entropy(Z2, y)
    torch.testing.assert_close(loss, F.cross_entropy(Z2, y))
    assert dZ2.dtype == torch.float32 and torch.isfinite(dZ2).all()


def twin_sequential(net):
    """An nn.Sequential with the same weights as a ManualMLP."""
    W1, b1, W2, b2 = (p.detach().clone() for p in (net.W1, net.b1, net.W2, net.b2))
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh()}[net.activation]
    ref = nn.Sequential(nn.Flatten(), nn.Linear(W1.shape[1], W1.shape[0]), act,
                        nn.Linear(W2.shape[1], W2.shape[0]))
    with torch.no_grad():
        ref[1].weight.copy_(W1), ref[1].bias.copy_(b1)
        ref[3].weight.copy_(W2), ref[3].bias.copy_(b2)
    return ref


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_manual_mlp_behaves_like_linear_layers(activation):
    """Same weights, same outputs, same hidden activations, same parameter gradients; images
    (B, C, H, W) are flattened like nn.Flatten does."""
    torch.manual_seed(0)
    net = ch.ManualMLP(d_in=12, d_hidden=9, d_out=4, activation=activation)
    ref = twin_sequential(net)
    x = torch.randn(6, 3, 2, 2)
    y = torch.randint(0, 4, (6,))
    torch.testing.assert_close(net(x), ref(x))
    torch.testing.assert_close(net.hidden(x), ref[:3](x))
    F.cross_entropy(net(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for ours, theirs in [(net.W1, ref[1].weight), (net.b1, ref[1].bias),
                         (net.W2, ref[3].weight), (net.b2, ref[3].bias)]:
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_manual_mlp_starts_from_nn_linears_initialization():
    """Catches swapped layer sizes or another init: same seed, same draws as two nn.Linear."""
    torch.manual_seed(5)
    net = ch.ManualMLP(d_in=7, d_hidden=11, d_out=3)
    torch.manual_seed(5)
    first, second = nn.Linear(7, 11), nn.Linear(11, 3)
    for ours, theirs in [(net.W1, first.weight), (net.b1, first.bias),
                         (net.W2, second.weight), (net.b2, second.bias)]:
        torch.testing.assert_close(ours.detach(), theirs.detach())
    assert nnbook.count_parameters(net) == 7 * 11 + 11 + 11 * 3 + 3


def test_training_through_fit_follows_the_autograd_twin():
    """Ten Adam steps through nnbook.fit: the hand-written gradients must steer the weights
    exactly where autograd's would."""
    torch.manual_seed(0)
    net = ch.ManualMLP(d_in=2, d_hidden=16, d_out=2)
    ref = twin_sequential(net)
    start = net.W1.detach().clone()
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(80, 2, generator=gen), torch.randint(0, 2, (80,), generator=gen)
    for model in (net, ref):
        loader = nnbook.TensorLoader(x, y, batch_size=8, shuffle=True, seed=1)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        nnbook.fit(model, loader, epochs=1, optimizer=optimizer, log_every=0)
    torch.testing.assert_close(net.W1, ref[1].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(net.b2, ref[3].bias, rtol=1e-5, atol=1e-6)
    assert (net.W1.detach() - start).abs().max() > 1e-3, "the weights did not move"


def test_unknown_activation_is_rejected_with_the_choices():
    X, params, _ = random_problem(2, 3, 4, 2)
    with pytest.raises(ValueError, match=r"activation must be one of \['relu', 'tanh'\]; "
                                         r"got 'sigmoid'"):
        ch.mlp_forward(X, *params, activation="sigmoid")
    with pytest.raises(ValueError, match="got 'gelu'"):
        ch.ManualMLP(d_in=2, d_hidden=3, d_out=2, activation="gelu")


def solved_sigmoid_pair():
    """A reference solution of exercise 2: the sigmoid and its derivative
    phi'(z) = phi(z) (1 - phi(z))."""

    def sigmoid_prime(z):
        return torch.sigmoid(z) * (1 - torch.sigmoid(z))

    return torch.sigmoid, sigmoid_prime


def test_exercise_2_sigmoid(capsys):
    before = dict(ch.PHI)
    assert check("Exercise 2", ch.sigmoid_pair, ch.test_sigmoid) is None
    assert "not attempted yet" in capsys.readouterr().out
    sigmoid_prime = solved_sigmoid_pair()[1]
    assert check("Exercise 2", solved_sigmoid_pair, ch.test_sigmoid)
    with pytest.raises(AssertionError, match="gradcheck failed"):  # phi' written as phi
        check("Exercise 2", lambda: (torch.sigmoid, torch.sigmoid), ch.test_sigmoid)
    with pytest.raises(AssertionError, match="phi must be the sigmoid"):
        check("Exercise 2", lambda: (torch.tanh, sigmoid_prime), ch.test_sigmoid)
    assert ch.PHI == before, "the check must leave PHI as it found it"
