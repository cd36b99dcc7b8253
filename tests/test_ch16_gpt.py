"""Chapter 16 checks: parameter formula, published sizes, rotary positions, causality, weight tying."""

import math

import pytest
import torch
from torch import nn

from nnbook.attention import MultiHeadAttention, apply_rotary, rotary_angles


class Block(nn.Module):
    def __init__(self, d, n_head, rotary):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MultiHeadAttention(d_model=d, n_heads=n_head, rotary=rotary)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, h):
        h = h + self.attn(self.ln_1(h), causal=True)
        return h + self.mlp(self.ln_2(h))


class GPT(nn.Module):
    def __init__(self, *, V, n_ctx, L, d, n_head, rotary=True):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(V, d), None if rotary else nn.Embedding(n_ctx, d)
        self.blocks = nn.Sequential(*[Block(d, n_head, rotary) for _ in range(L)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, V, bias=False)
        self.head.weight = self.tok_emb.weight

    def forward(self, x):
        h = self.tok_emb(x)
        if self.pos_emb is not None:
            h = h + self.pos_emb(torch.arange(x.shape[1]))
        return self.head(self.ln_f(self.blocks(h)))


def n_params_formula(*, V, n_ctx, L, d, learned_positions=True):
    return V * d + (n_ctx * d if learned_positions else 0) + L * (12 * d * d + 13 * d) + 2 * d


def rotate(u, m, base=10_000.0):
    out = u.clone()
    for i in range(len(u) // 2):
        phi = m * base ** (-2 * i / len(u))
        R = torch.tensor([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]], dtype=u.dtype)
        out[2 * i:2 * i + 2] = R @ u[2 * i:2 * i + 2]
    return out


def count(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("rotary", [True, False])
@pytest.mark.parametrize("V,n_ctx,L,d,h", [(76, 128, 3, 64, 4), (50, 32, 2, 48, 3), (1000, 128, 6, 96, 8)])
def test_formula_equals_model_count(V, n_ctx, L, d, h, rotary):
    want = n_params_formula(V=V, n_ctx=n_ctx, L=L, d=d, learned_positions=not rotary)
    assert count(GPT(V=V, n_ctx=n_ctx, L=L, d=d, n_head=h, rotary=rotary)) == want


def test_published_sizes():
    assert n_params_formula(V=50_257, n_ctx=1024, L=12, d=768) == 124_439_808  # GPT-2 small checkpoint
    assert n_params_formula(V=50_257, n_ctx=1024, L=48, d=1600) == 1_557_611_200  # GPT-2 XL checkpoint
    gpt1 = n_params_formula(V=40_478, n_ctx=512, L=12, d=768) - 2 * 768  # no final layer norm
    assert round(gpt1 / 1e6) == 117
    assert round(n_params_formula(V=50_257, n_ctx=2048, L=96, d=12288) / 1e9) == 175
    with torch.device("meta"):
        assert count(GPT(V=50_257, n_ctx=1024, L=12, d=768, n_head=12, rotary=False)) == 124_439_808


@pytest.mark.parametrize("d_h", [8, 16])
def test_rotation_written_out_equals_the_library_and_depends_on_offsets(d_h):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, d_h, dtype=torch.float64, generator=g)
    rotation = rotary_angles(256, d_h)
    for m in [0, 1, 77, 255]:
        torch.testing.assert_close(rotate(q, m), apply_rotary(q, rotation[m]), atol=1e-5, rtol=1e-5)
    scores = [rotate(q, m) @ rotate(k, m - 3) for m in (3, 50, 255)]
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0])  # (16.7): the offset, not the position
    assert abs(rotate(q, 50) @ rotate(k, 46) - scores[0]) > 1e-3
    torch.testing.assert_close(rotate(q, 77).norm(), q.norm())


@pytest.mark.parametrize("rotary", [True, False])
def test_causal_and_tied_and_uniform_at_init(rotary):
    torch.manual_seed(0)
    model = GPT(V=76, n_ctx=64, L=2, d=32, n_head=4, rotary=rotary)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0, 0.02)
    assert model.head.weight is model.tok_emb.weight
    x = torch.randint(0, 76, (2, 64))
    y = x.clone()
    y[:, 40:] = (y[:, 40:] + 1) % 76
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :40], model(y)[:, :40])
        assert not torch.allclose(model(x)[:, 40:], model(y)[:, 40:])
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
    assert abs(loss.item() - math.log(76)) < 0.05


def windows(n_targets, n_ctx, stride):
    starts = torch.arange(0, n_targets - n_ctx + 1, stride)
    if starts[-1] != n_targets - n_ctx:
        starts = torch.cat([starts, torch.tensor([n_targets - n_ctx])])
    first_new = torch.cat([starts[:1], starts[:-1] + n_ctx])
    return starts, starts[:, None] + torch.arange(n_ctx) >= first_new[:, None]


@pytest.mark.parametrize("n,T,stride", [(100, 10, 5), (101, 10, 10), (57, 8, 3), (10, 10, 4), (1000, 64, 32)])
def test_sliding_windows_score_every_target_once(n, T, stride):
    starts, scored = windows(n, T, stride)
    positions = (starts[:, None] + torch.arange(T))[scored]
    assert torch.equal(positions.sort().values, torch.arange(n)), "each target must be scored exactly once"
    later = torch.arange(T).expand_as(scored)[1:][scored[1:]]  # context of the targets after window 0
    assert later.numel() == 0 or later.min() >= T - stride, "later windows must score only well-fed positions"


@torch.no_grad()
def char_losses(model, source, n_ctx, *, stride=None, batch_size=256):
    starts, scored = windows(len(source) - 1, n_ctx, stride or n_ctx)
    assert scored.sum() == len(source) - 1
    offsets = starts[:, None] + torch.arange(n_ctx)
    nll = torch.full((len(source) - 1,), float("nan"))
    for k in range(0, len(starts), batch_size):
        pos, keep = offsets[k:k + batch_size], scored[k:k + batch_size]
        logits = model(source[pos])
        nll[pos[keep]] = nn.functional.cross_entropy(logits[keep], source[pos[keep] + 1], reduction="none")
    assert not nll.isnan().any()
    return nll


@pytest.mark.parametrize("n,T,stride,batch", [(500, 16, 8, 7), (301, 32, 32, 256), (100, 10, 3, 4)])
def test_char_losses_score_each_character_with_its_own_target(n, T, stride, batch):
    torch.manual_seed(1)
    bigram = nn.Embedding(20, 20)  # logits depend on the current character only, not on the window
    source = torch.randint(0, 20, (n,))
    direct = nn.functional.cross_entropy(bigram(source[:-1]), source[1:], reduction="none")
    torch.testing.assert_close(char_losses(bigram, source, T, stride=stride, batch_size=batch), direct)
