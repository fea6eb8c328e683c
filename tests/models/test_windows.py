"""The window-order rewrite: index arithmetic against timm's own roll/pad/partition, and model equivalence.

Each equivalence test is paired with a perturbation (one swapped index, one changed bias entry) that must break
it, so a rewrite that is wrong in either way cannot pass.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition

from tests.weights import perturb
from vitserve.models.rewrites import deploy_copy
from vitserve.models.rewrites.windows import EvenPatchMerging, WindowOrderStage, move_index, raster_order, window_order

SWIN = "swin_tiny_patch4_window7_224"
SWINV2 = "swinv2_tiny_window8_256"
SWINV2_CR = "swinv2_cr_tiny_224"  # timm's other Swin V2 implementation
TINY = dict(embed_dim=32, depths=(2, 2, 2), num_heads=(2, 2, 4), num_classes=10)

# (architecture, overrides, input H, W): shifted + padded windows, non-square maps and windows, full-map windows
CONFIGS = [
    pytest.param(SWIN, dict(TINY, img_size=32, patch_size=2, window_size=6), (32, 32), id="swin-pad-shift"),
    pytest.param(SWIN, dict(TINY, img_size=(36, 28), patch_size=2, window_size=(4, 5)), (36, 28),
                 id="swin-nonsquare"),
    pytest.param(SWIN, dict(TINY, img_size=56, patch_size=4, window_size=7), (56, 56), id="swin-divisible"),
    pytest.param(SWINV2, dict(TINY, img_size=40, patch_size=2, window_size=6), (40, 40), id="swinv2-pad-shift"),
    pytest.param(SWINV2, dict(TINY, img_size=64, patch_size=4, window_size=8), (64, 64), id="swinv2-divisible"),
    # extra_norm_stage: the last block of every stage ends with an extra LayerNorm (norm3), as in the _ns models
    pytest.param(SWINV2_CR, dict(TINY, img_size=40, patch_size=2, window_size=6, extra_norm_stage=True), (40, 40),
                 id="swinv2cr-pad-shift"),
    pytest.param(SWINV2_CR, dict(TINY, img_size=(36, 28), patch_size=2, window_size=(4, 5)), (36, 28),
                 id="swinv2cr-nonsquare"),
]
PERTURBED = CONFIGS[:1] + CONFIGS[3:4] + CONFIGS[5:6]  # one each of Swin, Swin V2, Swin V2 CR


def _model(arch: str, overrides: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return perturb(timm.create_model(arch, pretrained=False, **overrides).eval())  # see tests/weights.py


def _stages(model: torch.nn.Module) -> torch.nn.Module:
    """The stages of a Swin model: `layers` (Swin, Swin V2) or `stages` (Swin V2 CR)."""
    return model.stages if hasattr(model, "stages") else model.layers


def _rel_diff(model: torch.nn.Module, deploy: torch.nn.Module, x: torch.Tensor) -> float:
    """max |difference| of the final features, relative to their largest value (random-init logits are tiny)."""
    with torch.no_grad():
        ref, out = model.forward_features(x), deploy.forward_features(x)
    return ((ref - out).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("H,W,window,shift", [(16, 16, (6, 6), (3, 3)), (7, 9, (4, 5), (2, 2)), (8, 8, (8, 8), (0, 0)),
                                              (10, 6, (4, 4), (0, 0))])
def test_window_order_matches_timm_roll_pad_partition(H, W, window, shift):
    tokens = torch.arange(H * W, dtype=torch.float32).view(1, H, W, 1)
    shifted = torch.roll(tokens, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    pad_h, pad_w = (-H) % window[0], (-W) % window[1]
    padded = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h), value=-1.0)
    expected = window_partition(padded, window).flatten().long()
    assert torch.equal(window_order((H, W), window, shift), expected)


def test_move_index_composes_orders():
    a = window_order((9, 7), (4, 4), (0, 0))
    b = window_order((9, 7), (4, 4), (2, 2))
    x = torch.where(a >= 0, a, -5).float()  # slot content = its raster token
    moved = x[move_index(a, b)]
    assert torch.equal(moved[b >= 0], b[b >= 0].float())
    assert move_index(raster_order((4, 4)), raster_order((4, 4))) is None


@pytest.mark.parametrize("arch,overrides,size", CONFIGS)
def test_rewrite_is_equivalent(arch, overrides, size):
    model = _model(arch, overrides)
    deploy, name = deploy_copy(model)
    assert name is not None
    assert sum(isinstance(m, WindowOrderStage) for m in deploy.modules()) == len(overrides["depths"])
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        assert (model(x) - deploy(x)).abs().max().item() < 1e-5
    assert _rel_diff(model, deploy, x) < 1e-5
    assert not any(isinstance(m, WindowOrderStage) for m in model.modules()), "the original must stay untouched"


@pytest.mark.parametrize("arch,overrides,size", PERTURBED)
def test_swapped_index_breaks_equivalence(arch, overrides, size):
    model = _model(arch, overrides)
    deploy, _ = deploy_copy(model)
    stage = _stages(deploy)[0]
    move = stage.move0 if stage.move0 is not None else stage.enter
    move[[0, 1]] = move[[1, 0]]
    assert _rel_diff(model, deploy, torch.randn(2, 3, *size)) > 1e-3


@pytest.mark.parametrize("arch,overrides,size", PERTURBED)
def test_changed_bias_breaks_equivalence(arch, overrides, size):
    model = _model(arch, overrides)
    deploy, _ = deploy_copy(model)
    bias = _stages(deploy)[0].blocks[1].attn.bias
    bias.copy_(bias.transpose(-2, -1).clone())  # query/key swapped: the classic relative-position mistake
    assert _rel_diff(model, deploy, torch.randn(2, 3, *size)) > 1e-3


def test_padding_slots_are_zeroed_before_attention():
    """Without the pad mask, padded keys would carry LayerNorm'd values instead of timm's zeros."""
    model = _model(*CONFIGS[0].values[:2])
    deploy, _ = deploy_copy(model)
    block = deploy.layers[0].blocks[0]
    assert block.pad_mask is not None and (block.pad_mask == 0).any()
    block.pad_mask = torch.ones_like(block.pad_mask)
    assert _rel_diff(model, deploy, torch.randn(2, 3, 32, 32)) > 1e-3


def test_extra_norm_is_kept():
    """Swin V2 CR: the rewritten block ends with timm's extra LayerNorm where timm's does; without it, it differs."""
    arch, overrides, size = CONFIGS[5].values
    model = _model(arch, overrides)
    deploy, _ = deploy_copy(model)
    last = _stages(deploy)[0].blocks[-1]
    assert last.norm3 is not None and _stages(deploy)[0].blocks[0].norm3 is None
    last.norm3 = None
    assert _rel_diff(model, deploy, torch.randn(2, 3, *size)) > 1e-3


def test_even_maps_merge_without_pad():
    from timm.models.swin_transformer import PatchMerging

    deploy, _ = deploy_copy(_model(*CONFIGS[0].values[:2]))  # 16x16 -> 8x8 -> 4x4: both merges on even maps
    assert [type(s.downsample) for s in deploy.layers][1:] == [EvenPatchMerging, EvenPatchMerging]
    deploy, _ = deploy_copy(_model(*CONFIGS[2].values[:2]))  # 14x14 -> 7x7 -> 4x4: the second needs timm's pad
    assert [type(s.downsample) for s in deploy.layers][1:] == [EvenPatchMerging, PatchMerging]


def test_full_map_window_stage_needs_no_gather():
    """swin_t's last stage is 7x7 with window 7: one window, no shift, so raster order is window order."""
    model = timm.create_model(SWIN, pretrained=False, depths=(2, 2, 2, 2), embed_dim=32, num_heads=(1, 1, 1, 1))
    deploy, _ = deploy_copy(model.eval())
    last = deploy.layers[3]
    assert last.enter is None and all(getattr(last, f"move{i}") is None for i in range(len(last.blocks)))


@pytest.mark.parametrize("layout", ["packed", "split"])
@pytest.mark.parametrize("arch,overrides,size", PERTURBED)
def test_fused_op_form_is_equivalent(arch, overrides, size, layout):
    """The deploy form with torch.ops.vitserve.window_attention[_packed] (their reference implementation on CPU)."""
    from vitserve.models.rewrites.windows import use_fused_kernel

    model = _model(arch, overrides)
    deploy, _ = deploy_copy(model)
    assert use_fused_kernel(deploy, layout) == sum(overrides["depths"])
    assert _rel_diff(model, deploy, torch.randn(2, 3, *size)) < 1e-5
    with pytest.raises(ValueError, match="unknown fused layout"):
        use_fused_kernel(deploy, "interleaved")


def test_fused_op_at_every_window_size():
    """Windows of 12x12 (144 tokens: the kernel's tiled form on a GPU) in the first two stages, 6x6 after: every
    block takes the fused op, with the same answers."""
    from vitserve.models.rewrites.windows import WindowOrderAttention, use_fused_kernel

    model = _model(SWIN, dict(TINY, img_size=96, patch_size=4, window_size=12))
    deploy, _ = deploy_copy(model)
    areas = [m.window_area for m in deploy.modules() if isinstance(m, WindowOrderAttention)]
    assert areas == [144, 144, 144, 144, 36, 36]
    assert use_fused_kernel(deploy) == 6
    assert [m.fused for m in deploy.modules() if isinstance(m, WindowOrderAttention)] == ["packed"] * 6
    assert _rel_diff(model, deploy, torch.randn(2, 3, 96, 96)) < 1e-5
    assert use_fused_kernel(deploy, "split") == 6
    assert _rel_diff(model, deploy, torch.randn(2, 3, 96, 96)) < 1e-5
    assert use_fused_kernel(deploy, None) == 0
    assert all(m.fused is None for m in deploy.modules() if isinstance(m, WindowOrderAttention))
