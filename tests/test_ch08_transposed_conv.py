"""Chapter 08 pushed further: the chapter's fold-based transposed convolution against
F.conv_transpose2d over a wide grid (values and gradients), the output-size formula, the
matrix C, the adjoint and the input gradient of F.conv2d, bad inputs, the overlap counts and
the periodic energy behind the checkerboard story, the data generator, the U-Net, and the two
coding exercises."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from chapters import load_chapter
from torch import nn

from nnbook.exercises import check

ch = load_chapter("08")
F64 = dict(dtype=torch.float64)


def _grid():
    """Valid (B, C_in, H, W, C_out, k, s, p, a, d, g) cases: every stride, padding,
    dilation, output padding and group count PyTorch accepts on small inputs."""
    cases = []
    for k, s, p, d, g in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (1, 2), (1, 2)):
        for a in range(max(s, d)):
            H, W = 3 + (k + s) % 3, 4 + p
            out = [ch.conv_transpose_out_size(n, k, stride=s, padding=p, dilation=d,
                                              output_padding=a) for n in (H, W)]
            if min(out) >= 1:
                cases.append((1 + (k + p) % 2, 2 * g, H, W, 2 * g if s != 2 else g, k, s, p,
                              a, d, g))
    return cases


GRID = _grid()


def test_the_grid_is_wide():
    """The grid covers every stride, padding, dilation, output padding and groups value."""
    assert len(GRID) > 150
    for position, values in [(6, {1, 2, 3}), (7, {0, 1, 2}), (8, {0, 1, 2}), (9, {1, 2}),
                             (10, {1, 2})]:
        assert {c[position] for c in GRID} == values


@pytest.mark.parametrize("case", ch.CT_CASES + GRID, ids=str)
def test_conv_transpose2d_matches_torch_in_values_and_gradients(case):
    """Catches a wrong crop (padding), output padding at the wrong side, a dilation or
    stride slip in fold, a wrong group split or a transposed channel order."""
    B, C_in, H, W, C_out, k, s, p, a, d, g = case
    expected = tuple(ch.conv_transpose_out_size(n, k, stride=s, padding=p, dilation=d,
                                                output_padding=a) for n in (H, W))
    assert ch.check_conv_transpose(case) == (B, C_out, *expected)


def test_the_notebooks_check_can_fail(monkeypatch):
    """Catches a vacuous check: a kernel that is not flipped back (a true convolution's
    adjoint of the flipped kernel) or output padding put at the top must fail."""
    original = ch.conv_transpose2d
    monkeypatch.setattr(ch, "conv_transpose2d",
                        lambda x, w, b=None, **kw: original(x, w.flip(-2, -1), b, **kw))
    with pytest.raises(AssertionError):
        ch.check_conv_transpose(ch.CT_CASES[1])
    monkeypatch.setattr(ch, "conv_transpose2d",
                        lambda x, w, b=None, **kw: original(x, w, b, **kw).roll(1, -1))
    with pytest.raises(AssertionError):
        ch.check_conv_transpose(ch.CT_CASES[1])


def test_output_size_formula_and_round_trip():
    """(8.5) equals PyTorch's size for every valid output padding, and every such size is
    convolved back to n by (4.2): catches a sign slip or a missing +1."""
    checked = 0
    for n, k, s, p, d in itertools.product((1, 4, 7), (1, 2, 3, 5), (1, 2, 3), (0, 1, 2), (1, 2)):
        for a in range(max(s, d)):
            size = ch.conv_transpose_out_size(n, k, stride=s, padding=p, dilation=d,
                                              output_padding=a)
            if size < 1:
                continue
            x = torch.zeros(1, 1, n)
            ref = F.conv_transpose1d(x, torch.zeros(1, 1, k), stride=s, padding=p,
                                     dilation=d, output_padding=a).shape[-1]
            assert size == ref, (n, k, s, p, d, a)
            checked += 1
            if a < s:
                assert ch.conv_out_size(size, k, stride=s, padding=p, dilation=d) == n
    assert checked > 300


@pytest.mark.parametrize("C_in, H, C_out, k, s, p, d", [
    (1, 4, 1, 3, 1, 0, 1), (2, 5, 3, 3, 2, 1, 1), (3, 6, 2, 2, 2, 0, 1), (2, 7, 2, 3, 1, 2, 2)])
def test_conv_matrix_is_conv2d_and_its_transpose_is_conv_transpose2d(C_in, H, C_out, k, s, p, d):
    """C vec(x) == conv2d(x) and C^T vec(y) == conv_transpose2d(y): catches a transposed
    layout (rows vs columns) or a wrong flattening order."""
    gen = torch.Generator().manual_seed(H)
    w = torch.randn(C_out, C_in, k, k, generator=gen, **F64)
    C = ch.conv_matrix(w, (C_in, H, H), stride=s, padding=p, dilation=d)
    x = torch.randn(1, C_in, H, H, generator=gen, **F64)
    y = F.conv2d(x, w, stride=s, padding=p, dilation=d)
    assert C.shape == (y.numel(), x.numel())
    torch.testing.assert_close(C @ x.flatten(), y.flatten())
    a = (H + 2 * p - d * (k - 1) - 1) % s
    z = ch.conv_transpose2d(y, w, stride=s, padding=p, dilation=d, output_padding=a)
    torch.testing.assert_close(C.T @ y.flatten(), z.flatten())
    nonzero = (C != 0).sum(1)
    assert int(nonzero.max()) <= C_in * k * k, "a row holds at most one kernel"


@pytest.mark.parametrize("case", ch.ADJOINT_CASES + [
    (1, 5, 1, 1, 1, 0, 1, 1), (2, 9, 4, 3, 3, 0, 1, 2), (3, 10, 3, 3, 2, 1, 3, 3),
    (2, 13, 4, 5, 4, 2, 1, 1)], ids=str)
def test_adjoint_identity_and_autograd_input_gradient(case):
    """(8.4) and (8.3): catches a transposed convolution that is not the adjoint (e.g. a
    missing output padding or a wrong group) on cases beyond the notebook's."""
    lhs, rhs, gap = ch.adjoint_check(case, torch.Generator().manual_seed(len(case)))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)
    assert gap < 1e-10


def test_haar_convolution_is_orthogonal_so_its_transpose_inverts_it():
    """The claim of exercise 1(b): the four 2x2 Haar filters at stride 2 give C^T C = I."""
    h = torch.tensor([[[1, 1], [1, 1]], [[1, -1], [1, -1]], [[1, 1], [-1, -1]],
                      [[1, -1], [-1, 1]]], **F64).view(4, 1, 2, 2) / 2
    C = ch.conv_matrix(h, (1, 6, 6), stride=2)
    torch.testing.assert_close(C.T @ C, torch.eye(36, **F64))
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0), **F64)
    torch.testing.assert_close(ch.conv_transpose2d(F.conv2d(x, h, stride=2), h, stride=2), x)


def test_transposed_blur_is_not_the_inverse():
    """The misnomer cell's claim: C^T C x is far from x for a blur, C^-1 C x is x."""
    blur = torch.tensor([1.0, 2.0, 1.0], **F64) / 4
    w = torch.outer(blur, blur).view(1, 1, 3, 3)
    C = ch.conv_matrix(w, (1, 12, 12), padding=1)
    x = ch.disk_image(12, 3).flatten()
    assert (C.T @ C @ x - x).norm() / x.norm() > 0.1
    torch.testing.assert_close(torch.linalg.solve(C, C @ x), x)


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("x_shape, w_shape, kw, message", [
    ((2, 3, 4), (3, 2, 3, 3), {}, r"expects x \(B, C_in, H, W\).*got x \(2, 3, 4\)"),
    ((1, 3, 4, 4), (3, 2, 3, 2), {}, r"square kernel.*got x \(1, 3, 4, 4\), w \(3, 2, 3, 2\)"),
    ((1, 3, 4, 4), (4, 2, 3, 3), {}, r"w must be \(3, C_out/groups, k, k\).*got \(4, 2, 3, 3\)"),
    ((1, 3, 4, 4), (3, 2, 3, 3), dict(groups=2), "groups=2 must divide the 3 input channels"),
    ((1, 4, 4, 4), (4, 2, 3, 3), dict(stride=2, output_padding=2),
     r"output_padding must be smaller than stride or dilation.*output_padding=2, stride=2"),
    ((1, 4, 4, 4), (4, 2, 3, 3), dict(output_padding=1),
     "output_padding must be smaller than stride or dilation"),
    ((1, 4, 4, 4), (4, 2, 3, 3), dict(stride=0), "stride, dilation and groups must be >= 1"),
    ((1, 4, 4, 4), (4, 2, 3, 3), dict(padding=-1), "padding, output_padding >= 0"),
    ((1, 4, 2, 2), (4, 2, 1, 1), dict(padding=1), "padding 1 crops the whole"),
])
def test_bad_arguments_are_rejected(x_shape, w_shape, kw, message):
    """Catches arguments PyTorch refuses being silently accepted (or cropped to nothing)."""
    x, w = torch.zeros(x_shape), torch.zeros(w_shape)
    with pytest.raises(ValueError, match=message):
        ch.conv_transpose2d(x, w, **kw)


def test_output_padding_below_dilation_is_allowed_like_torch():
    """PyTorch's rule is a < stride OR a < dilation: stride 1, dilation 2 allows a = 1."""
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 3, 3, 3)
    kw = dict(stride=1, dilation=2, output_padding=1)
    torch.testing.assert_close(ch.conv_transpose2d(x, w, **kw), F.conv_transpose2d(x, w, **kw))


def test_other_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\); got \(3,\)"):
        ch.conv_transpose2d(torch.zeros(1, 2, 3, 3), torch.zeros(2, 2, 3, 3), torch.zeros(3),
                            groups=2)
    with pytest.raises(ValueError, match=r"same C_in; got w \(1, 2, 3, 3\), in_shape \(1, 4, 4\)"):
        ch.conv_matrix(torch.zeros(1, 2, 3, 3), (1, 4, 4))
    with pytest.raises(ValueError, match="n >= 1 and size >= 16; got n=0"):
        ch.make_shapes(0, size=32, gen=torch.Generator())
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\).*got \(2, 1, 30, 32\)"):
        ch.UNet(width=2)(torch.zeros(2, 1, 30, 32))
    with pytest.raises(ValueError, match=r"same shape; got \(2, 3\) and \(3, 2\)"):
        ch.iou(torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by the period 4; got 6x8"):
        ch.periodic_energy(torch.zeros(6, 8), 4)
    with pytest.raises(ValueError, match="kind must be 'transposed' or 'resize'; got 'bilinear'"):
        ch.up_layer("bilinear", 2, 2)


# ---------------------------------------------------------------- the module and the U-Net

@pytest.mark.parametrize("kw", [dict(stride=2, padding=1, output_padding=1),
                                dict(stride=3, dilation=2, groups=2, output_padding=1),
                                dict(padding=2, groups=4)])
def test_module_equals_nn_ConvTranspose2d_with_copied_weights(kw):
    """Behaviour, not shapes: catches a module that forgets an argument or the bias."""
    torch.manual_seed(0)
    ours = ch.ConvTranspose2d(4, 8, 3, **kw)
    ref = nn.ConvTranspose2d(4, 8, 3, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(ours(x), ref(x))
    bound = (kw.get("groups", 1) / (8 * 9)) ** 0.5
    assert ours.weight.abs().max() <= bound and ours.weight.abs().max() > 0.8 * bound


def test_swapping_our_layers_into_a_unet_keeps_its_function():
    torch.manual_seed(0)
    model = ch.UNet(width=4).eval()
    clone = ch.with_our_layers(model)
    assert isinstance(clone.up1, ch.ConvTranspose2d) and isinstance(clone.up2, ch.ConvTranspose2d)
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(ch.predict_logits(clone, x), ch.predict_logits(model, x))


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_up_layers_double_the_size_with_equal_parameter_counts(k):
    """Catches wrong padding or output padding solved from (8.5)."""
    t, r = ch.up_layer("transposed", 6, 4, k), ch.up_layer("resize", 6, 4, k)
    x = torch.randn(1, 6, 5, 7)
    assert t(x).shape == r(x).shape == (1, 4, 10, 14)
    assert sum(p.numel() for p in t.parameters()) == sum(p.numel() for p in r.parameters())


def test_the_two_unets_have_the_same_parameters_and_output_shape():
    a, b = ch.UNet(width=8, up="transposed"), ch.UNet(width=8, up="resize")
    count = sum(p.numel() for p in a.parameters())
    assert count == sum(p.numel() for p in b.parameters())
    x = torch.randn(2, 1, 32, 32)
    assert a(x).shape == b(x).shape == (2, 1, 32, 32)


# ---------------------------------------------------------------- checkerboards

@pytest.mark.parametrize("k, s", [(2, 2), (3, 2), (4, 2), (5, 2), (3, 3), (5, 3), (7, 4)])
def test_overlap_counts_follow_8_7(k, s):
    """Interior counts are floor(k/s) or ceil(k/s) by phase, and their 2-D map is the
    outer product of the 1-D counts: catches a wrong claim in (8.7)."""
    counts = ch.overlap_counts(12, k, s)
    n1 = torch.tensor([sum(1 for u in range(k) if (m - u) % s == 0 and 0 <= (m - u) // s < 12)
                       for m in range(counts.shape[0])], dtype=torch.float32)
    torch.testing.assert_close(counts, torch.outer(n1, n1))
    interior = n1[k:-k]
    assert set(interior.int().tolist()) <= {k // s, -(-k // s)}
    assert (interior.min() == interior.max()) == (k % s == 0)


def test_periodic_energy_is_the_spectral_share_at_multiples_of_the_period():
    """(8.8) equals the share of the non-DC Fourier power at frequencies that are multiples
    of N/P: catches a wrong normalization or phase average."""
    z = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0), **F64)
    power = torch.fft.fft2(z - z.mean((-2, -1), keepdim=True)).abs() ** 2
    for P in (2, 4, 8):
        on_grid = torch.zeros(32, 32, dtype=torch.bool)
        on_grid[:: 32 // P, :: 32 // P] = True
        share = power[:, on_grid].sum(-1) / power.flatten(1).sum(-1)
        torch.testing.assert_close(ch.periodic_energy(z, P), share)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(8, 8)
    assert float(ch.periodic_energy(checker, 2)) == pytest.approx(1.0)


def test_random_transposed_stack_paints_a_pattern_and_resize_does_not():
    """The causal claim of section 6: on a constant input, the resize stack's interior is
    constant (E = 0) and the transposed stack's is not (k = 3 and, by phase sums, k = 4)."""
    for k in (3, 4):
        torch.manual_seed(k)
        t, r = ch.upsampler("transposed", k=k), ch.upsampler("resize", k=k)
        with torch.no_grad():
            zt, zr = t(torch.ones(1, 16, 8, 8))[0, 0], r(torch.ones(1, 16, 8, 8))[0, 0]
        assert float(ch.periodic_energy(zt[16:48, 16:48], 8)) > 0.9
        assert float(zr[16:48, 16:48].std()) < 1e-5


# ---------------------------------------------------------------- data and metrics

def test_make_shapes_is_seeded_and_masks_are_the_shapes_not_the_lines():
    a = ch.make_shapes(64, size=32, gen=torch.Generator().manual_seed(3))
    b = ch.make_shapes(64, size=32, gen=torch.Generator().manual_seed(3))
    c = ch.make_shapes(64, size=32, gen=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    x, m = a
    assert x.shape == m.shape == (64, 1, 32, 32) and x.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.flatten(1).sum(1) > 0).all(), "every canvas holds at least one shape"
    clean, _ = ch.make_shapes(64, size=32, gen=torch.Generator().manual_seed(3), noise=0.0,
                              cloud=0.0, n_lines=0)
    assert torch.equal((clean > 0.3), m.bool()), "without noise, cloud, lines: mask = shapes"


def test_iou_and_threshold_choice():
    pred = torch.tensor([True, True, False, False])
    target = torch.tensor([True, False, True, False])
    assert ch.iou(pred, target) == pytest.approx(1 / 3)
    assert ch.iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    scores, masks = torch.tensor([0.1, 0.4, 0.6, 0.9]), torch.tensor([0.0, 0.0, 1.0, 1.0])
    t, v = ch.best_threshold(scores, masks, torch.linspace(0, 1, 11))
    assert 0.4 <= t < 0.6 and v == 1.0


# ---------------------------------------------------------------- exercises 2 and 3

def solved_conv_transpose1d_loop(x, w, stride):
    y = torch.zeros((len(x) - 1) * stride + len(w))
    for i in range(len(x)):
        for u in range(len(w)):
            y[stride * i + u] += x[i] * w[u]
    return y


def solved_bilinear_kernel(factor):
    k = 2 * factor - factor % 2
    u = torch.arange(k, dtype=torch.float32)
    tent = 1 - (u - (k - 1) / 2).abs() / factor
    return torch.outer(tent, tent)


def test_exercise_conv_transpose1d_loop(capsys):
    name = "Exercise 2"
    assert check(name, ch.conv_transpose1d_loop, ch.test_conv_transpose1d_loop) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_conv_transpose1d_loop, ch.test_conv_transpose1d_loop) is True

    def overwrite(x, w, stride):                      # = instead of +=: overlaps lost
        y = torch.zeros((len(x) - 1) * stride + len(w))
        for i in range(len(x)):
            y[stride * i:stride * i + len(w)] = x[i] * w
        return y

    with pytest.raises(AssertionError, match="overlaps must add"):
        check(name, overwrite, ch.test_conv_transpose1d_loop)
    with pytest.raises(AssertionError, match="length"):   # stride ignored
        check(name, lambda x, w, s: solved_conv_transpose1d_loop(x, w, 1),
              ch.test_conv_transpose1d_loop)


def test_exercise_bilinear_kernel(capsys):
    name = "Exercise 3"
    assert check(name, ch.bilinear_kernel, ch.test_bilinear_kernel) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check(name, solved_bilinear_kernel, ch.test_bilinear_kernel) is True
    with pytest.raises(AssertionError, match="not bilinear"):    # tent centred at k/2
        check(name, lambda f: solved_bilinear_kernel(f).roll(1, 0),
              ch.test_bilinear_kernel)
    with pytest.raises(AssertionError, match="is 4x4"):          # k = 2f + 1
        check(name, lambda f: torch.ones(2 * f + 1, 2 * f + 1), ch.test_bilinear_kernel)


def test_bilinear_kernel_has_equal_phase_sums():
    """The solution's claim: every phase of the factor-2 kernel sums to 1, so a constant
    stays constant (no checkerboard) in the interior."""
    w = solved_bilinear_kernel(2).view(1, 1, 4, 4)
    out = ch.conv_transpose2d(torch.ones(1, 1, 6, 6), w, stride=2, padding=1)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], torch.ones(1, 1, 8, 8))
