"""T2T-ViT (models/architectures/t2t_vit.py): the Performer's random-feature attention, the sinusoids and the soft
splits as the paper and yitu-opensource/T2T-ViT define them. What every ported architecture shares (official
parameter names, checkpoints, downloads): tests/models/test_architectures.py."""

from __future__ import annotations

import math

import pytest
import torch

from vitserve.models.architectures import t2t_vit
from vitserve.models.architectures.layers import init_weights
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS, with_overrides


def test_performer_is_the_random_feature_attention():
    """The Performer layer against the formula written out: phi(x) = exp(w x - |x|^2 / 2) / sqrt(m) with the
    layer's fixed features w; y = phi(Q) (phi(K)^T V) / (phi(Q) sum_t phi(k_t) + eps); the projected y added to V,
    then the MLP. The projection splits into k, q, v in that order (the official one): q and k swapped breaks it."""
    torch.manual_seed(0)
    layer = t2t_vit.TokenPerformer(147, 64).eval()
    layer.apply(init_weights)  # the model's initialization: q and k of norm ~2, as trained (with PyTorch's
    with torch.no_grad():  # default for Linear, larger: phi(q).phi(k) underflows to 0 and attention is lost)
        for name, p in layer.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * (0.01 if name.startswith("kqv") else 0.1))
    x = torch.randn(2, 50, 147)

    def reference(k_first: bool) -> torch.Tensor:
        kqv = layer.kqv(layer.norm1(x))
        k, q, v = kqv[..., :64], kqv[..., 64:128], kqv[..., 128:]
        if not k_first:
            k, q = q, k
        m = layer.w.shape[0]
        phi = lambda t: torch.exp(torch.einsum("btd,md->btm", t, layer.w) - 0.5 * (t ** 2).sum(-1, keepdim=True)) \
            / math.sqrt(m)  # noqa: E731
        qp, kp = phi(q), phi(k)
        numerator = torch.einsum("btm,bsm,bsd->btd", qp, kp, v)
        denominator = torch.einsum("btm,bsm->bt", qp, kp)[..., None] + 1e-8
        assert denominator.min() > 1e-2  # attention weights far above the epsilon: they count
        out = v + layer.proj(numerator / denominator)
        return out + layer.mlp(layer.norm2(out))

    with torch.no_grad():
        ours, right, swapped = layer(x), reference(True), reference(False)
    assert (ours - right).abs().max() < 1e-5
    assert (ours - swapped).abs().max() > 1e-2
    assert layer.w.shape == (32, 64) and not layer.w.requires_grad  # m = out_dim * kernel_ratio 0.5, never trained


def test_feature_matrix_is_orthogonal_rows_scaled_by_sqrt_m():
    layer = t2t_vit.TokenPerformer(147, 64)
    gram = layer.w @ layer.w.t()
    assert torch.allclose(gram, 32 * torch.eye(32), atol=1e-4)


def test_sinusoids():
    """Channel 2i is sin(p / 10000^(2i/d)), channel 2i + 1 the cosine of the same angle."""
    table = t2t_vit.sinusoids(197, 256)[0].double()
    for p, i in ((0, 0), (1, 0), (5, 3), (196, 127), (42, 60)):
        angle = p / 10000 ** (2 * i / 256)
        assert table[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("size,sides,tokens", [(224, (56, 28), 196), (384, (96, 48), 576)])
def test_soft_splits_take_the_input_to_a_sixteenth(size, sides, tokens):
    """7x7 stride 4, then 3x3 stride 2 twice: 224 px is 56, 28, then 14x14 tokens (the released 384 px T2T-ViT-14
    has 24x24 and a class token: 577 positions)."""
    model = build_model(with_overrides(SPECS["t2t_vit_14"], img_size=size), random_init=True).model
    assert model.tokens_to_token.sides == sides and model.tokens_to_token.num_patches == tokens
    assert model.pos_embed.shape == (1, tokens + 1, 384)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)
