"""Window-order execution of a Swin stage: the export-friendly form shared by Swin, Swin V2 and Swin V2 CR.

timm runs every Swin block on a (B, H, W, C) map and, inside attention, does

    roll(-shift) -> pad to a multiple of the window -> partition into windows -> attention
    -> merge windows -> crop -> roll(+shift)

Everything outside attention (LayerNorm, MLP, residual adds) works token by token, so the order of the tokens does
not matter to it. We therefore keep each block's tokens *already in that block's window order*: a sequence of
nW * N slots (N tokens per window, windows in timm's order, padding slots included). Roll, pad and partition
collapse into one fixed permutation per block, and between two consecutive blocks a single Gather with a
precomputed index moves the sequence from one block's order to the next. The relative-position bias and the
shifted-window mask, both constants at a fixed input size, fold into one additive tensor (nW, nH, N, N) per block.

What is left in the graph per block: LayerNorm, qkv MatMul, one Reshape + Transpose, two attention MatMuls, one Add
of a constant, Softmax, the projection, the MLP, and one Gather. No roll, no pad, no mask construction.

Padding: timm pads *after* its norm (Swin) or on the block input (Swin V2, V2 CR) with zeros, and those zero tokens take
part in attention as keys. Our padding slots carry arbitrary (finite) values through LayerNorm and the MLP, so the
block multiplies the attention input by a constant 0/1 mask to make them exactly zero where timm has zeros. Nothing
ever reads a padding slot back into a real token except through that zeroed attention input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def window_order(
    resolution: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> torch.Tensor:
    """The raster index (row * W + col) of the token in each slot of a block's window order; -1 for padding.

    Slot s = ((wi * nWw + wj) * wh + a) * ww + b is token (a, b) of window (wi, wj) of timm's shifted, padded map
    whose pixel (i, j) = (wi * wh + a, wj * ww + b) holds x[(i + sh) % H, (j + sw) % W] when i < H and j < W
    (torch.roll by -shift), and a zero pad otherwise.
    """
    H, W = resolution
    wh, ww = window
    sh, sw = shift
    Hp, Wp = math.ceil(H / wh) * wh, math.ceil(W / ww) * ww
    rows = torch.arange(Hp).view(Hp // wh, 1, wh, 1).expand(Hp // wh, Wp // ww, wh, ww)  # nWh, nWw, wh, ww
    cols = torch.arange(Wp).view(1, Wp // ww, 1, ww).expand(Hp // wh, Wp // ww, wh, ww)
    src = ((rows + sh) % H) * W + (cols + sw) % W
    return torch.where((rows < H) & (cols < W), src, -1).flatten()


def move_index(src_from: torch.Tensor, src_to: torch.Tensor) -> torch.Tensor | None:
    """Gather index that turns a sequence in order `src_from` into order `src_to` (None when it is the identity).

    Both arguments are `window_order` results over the same H x W map. Padding slots of the target take slot 0
    of the source: their content is never read (see the module docstring).
    """
    num_tokens = int(src_from.max()) + 1
    slot_of = torch.full((num_tokens,), -1, dtype=torch.long)
    real = src_from >= 0
    slot_of[src_from[real]] = torch.nonzero(real).flatten()
    index = torch.where(src_to >= 0, slot_of[src_to.clamp(min=0)], 0)
    if len(index) == len(src_from) and torch.equal(index, torch.arange(len(index))):
        return None
    return index


def raster_order(resolution: tuple[int, int]) -> torch.Tensor:
    return torch.arange(resolution[0] * resolution[1])


class WindowOrderAttention(nn.Module):
    """Multi-head attention over all windows of a sequence kept in window order.

    Input and output: (B, nW * N, C). `bias` is (nW or 1, nH, N, N): relative-position bias plus shift mask.
    Cosine attention (Swin V2) normalizes q and k and multiplies by a per-head constant `logit_scale`; plain
    attention (Swin) has the 1/sqrt(head_dim) scale folded into the q rows of `qkv`.
    """

    def __init__(
        self,
        qkv: nn.Linear,
        proj: nn.Linear,
        num_heads: int,
        num_windows: int,
        bias: torch.Tensor,
        logit_scale: torch.Tensor | None = None,
    ):
        super().__init__()
        self.qkv = qkv
        self.proj = proj
        self.num_heads = num_heads
        self.num_windows = num_windows
        self.head_dim = qkv.out_features // 3 // num_heads
        self.window_area = bias.shape[-1]
        self.register_buffer("bias", bias.detach().clone())
        self.register_buffer("logit_scale", None if logit_scale is None else logit_scale.detach().clone())
        self.fused: str | None = None  # "packed" / "split": one fused-op call (see use_fused_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        nW, N, nH, hd = self.num_windows, self.window_area, self.num_heads, self.head_dim
        if self.fused:
            return self.proj(self._fused(x))
        # one Split, then each of q, k, v straight into the layout its MatMul wants (k already transposed)
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # B, L, nH * hd each
        q = q.reshape(B, nW, N, nH, hd).transpose(2, 3)  # B, nW, nH, N, hd
        k = k.reshape(B, nW, N, nH, hd).permute(0, 1, 3, 4, 2)  # B, nW, nH, hd, N
        v = v.reshape(B, nW, N, nH, hd).transpose(2, 3)  # B, nW, nH, N, hd
        if self.logit_scale is not None:
            attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-2)) * self.logit_scale
        else:
            attn = q @ k
        # B, nW, nH, N, N; in a reduced-precision copy the float32 bias makes it a float32 softmax (export/precision.py)
        attn = (attn + self.bias).softmax(dim=-1).to(v.dtype)
        x = (attn @ v).permute(0, 1, 3, 2, 4).reshape(B, L, nH * hd)  # B, nW, N, nH, hd -> B, L, C
        return self.proj(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        from vitserve.kernels.window_attention import (
            merge_heads,
            split_heads,
            window_attention,
            window_attention_packed,
        )

        B, L, _ = x.shape
        nW, N, nH, hd = self.num_windows, self.window_area, self.num_heads, self.head_dim
        logit_scale = None if self.logit_scale is None else self.logit_scale.view(-1)
        qkv = self.qkv(x).view(B * nW, N, 3 * nH * hd)  # the 1/sqrt(d) scale is folded into q
        if self.fused == "packed":  # the projection's output as it is, and the kernel writes what proj reads
            out = window_attention_packed(qkv, self.bias, logit_scale, 1.0, nH)
        else:  # q, k, v apart, (B * nW, nH, N, hd) each, and the output back
            out = merge_heads(window_attention(*split_heads(qkv, nH), self.bias, logit_scale, 1.0))
        return out.view(B, L, nH * hd)


class WindowOrderBlock(nn.Module):
    """A Swin (pre-norm) or Swin V2 (post-norm) block on a sequence in its own window order.

    `norm3` (Swin V2 CR's extra main-branch norm at the end of some blocks) is applied to the block's output.
    """

    def __init__(
        self,
        norm1: nn.Module,
        attn: WindowOrderAttention,
        norm2: nn.Module,
        mlp: nn.Module,
        order: torch.Tensor,
        resolution: tuple[int, int],
        post_norm: bool,
        norm3: nn.Module | None = None,
    ):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp, self.norm3 = norm1, attn, norm2, mlp, norm3
        self.post_norm = post_norm
        self.resolution = resolution
        has_pad = bool((order < 0).any())
        self.register_buffer("pad_mask", (order >= 0).float().view(-1, 1) if has_pad else None)  # L, 1
        self.register_buffer("raster_slots", move_index(order, raster_order(resolution)), persistent=False)

    def _attn_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.pad_mask is None else x * self.pad_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            x = x + self.norm1(self.attn(self._attn_input(x)))
            x = x + self.norm2(self.mlp(x))
        else:
            x = x + self.attn(self._attn_input(self.norm1(x)))
            x = x + self.mlp(self.norm2(x))
        return x if self.norm3 is None else self.norm3(x)

    def probe_view(self, out: torch.Tensor) -> torch.Tensor:
        """This block's output in timm's layout (B, H, W, C), for block-by-block comparison."""
        if self.raster_slots is not None:
            out = out.index_select(1, self.raster_slots)
        return out.reshape(out.shape[0], self.resolution[0], self.resolution[1], -1)


class EvenPatchMerging(nn.Module):
    """timm's PatchMerging (Swin, Swin V2, Swin V2 CR) for a map of even height and width.

    timm pads by (H % 2, W % 2) unconditionally, which leaves a zero-size Pad in the graph; on an even map the
    2x2 merge needs no padding at all. (B, H, W, C) -> (B, H/2, W/2, C').
    """

    def __init__(self, merge: nn.Module, norm_first: bool):
        super().__init__()
        self.norm, self.reduction, self.norm_first = merge.norm, merge.reduction, norm_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)  # B, H/2, W/2, 4C
        return self.reduction(self.norm(x)) if self.norm_first else self.norm(self.reduction(x))


class WindowOrderStage(nn.Module):
    """A Swin stage: timm's downsample, then the blocks in window order. (B, H, W, C) in and out, like timm's Swin
    and Swin V2 stages; with `channels_first`, (B, C, H, W) in and out, like Swin V2 CR's."""

    def __init__(self, downsample: nn.Module, blocks: list[WindowOrderBlock], orders: list[torch.Tensor],
                 channels_first: bool = False):
        super().__init__()
        self.downsample = downsample
        self.channels_first = channels_first
        self.blocks = nn.ModuleList(blocks)
        self.resolution = blocks[0].resolution
        raster = raster_order(self.resolution)
        self.register_buffer("enter", move_index(raster, orders[0]))
        # move{i}: from block i's order to block i+1's order; the last one back to raster order
        for i, src in enumerate(orders):
            dst = orders[i + 1] if i + 1 < len(orders) else raster
            self.register_buffer(f"move{i}", move_index(src, dst))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            x = x.permute(0, 2, 3, 1)
        x = self.downsample(x)
        B, C = x.shape[0], x.shape[-1]
        H, W = self.resolution
        x = x.reshape(B, H * W, C)
        if self.enter is not None:
            x = x.index_select(1, self.enter)
        for i, block in enumerate(self.blocks):
            x = block(x)
            move = getattr(self, f"move{i}")
            if move is not None:
                x = x.index_select(1, move)
        x = x.reshape(B, H, W, C)
        return x.permute(0, 3, 1, 2) if self.channels_first else x


def rewrite_stages(
    model: nn.Module, stage_type: type, merge_type: type, convert_block, merge_norm_first: bool,
    stages: str = "layers", channels_first: bool = False,
) -> int:
    """Replaces every `stage_type` in `model.<stages>` by a WindowOrderStage; returns how many were replaced.

    `convert_block(timm_block) -> (WindowOrderBlock, order)` knows one family's block; a `merge_type` downsample
    on an even map becomes an EvenPatchMerging. `channels_first`: the stages take and return (B, C, H, W).
    """
    count = 0
    previous: tuple[int, int] | None = None  # the map size entering this stage's downsample
    container = getattr(model, stages)
    for i, stage in enumerate(container):
        if not isinstance(stage, stage_type):
            previous = None
            continue
        converted = [convert_block(block) for block in stage.blocks]
        downsample = stage.downsample
        if isinstance(downsample, merge_type) and previous is not None and previous[0] % 2 == previous[1] % 2 == 0:
            downsample = EvenPatchMerging(downsample, merge_norm_first)
        container[i] = WindowOrderStage(downsample, [b for b, _ in converted], [o for _, o in converted],
                                        channels_first)
        previous = container[i].resolution
        count += 1
    return count


def convert_timm_block(
    block: nn.Module, qkv: nn.Linear, bias: torch.Tensor, post_norm: bool, logit_scale: torch.Tensor | None = None
) -> tuple[WindowOrderBlock, torch.Tensor]:
    """A timm Swin / Swin V2 / Swin V2 CR block -> (WindowOrderBlock, its window order).

    The family-specific parts come in ready-made: `qkv` (one Linear for q, k and v), the position `bias`
    (1, nH, N, N) and, for cosine attention, `logit_scale` (nH, 1, 1). The shift mask is added to the bias here.
    """
    resolution = block_resolution(block)
    window, shift = tuple(block.window_size), tuple(block.shift_size)
    mask = block_attn_mask(block)  # nW, N, N (0 / -100) or None
    if mask is not None:
        bias = bias + mask.unsqueeze(1)  # nW, nH, N, N
    Hp, Wp = padded_size(resolution, window)
    num_windows = (Hp // window[0]) * (Wp // window[1])
    order = window_order(resolution, window, shift)
    attn = WindowOrderAttention(qkv, block.attn.proj, block.attn.num_heads, num_windows, bias, logit_scale)
    norm3 = getattr(block, "norm3", None)  # Swin V2 CR: a LayerNorm at the end of some blocks, else Identity
    norm3 = None if isinstance(norm3, nn.Identity) else norm3
    return WindowOrderBlock(block.norm1, attn, block.norm2, block.mlp, order, resolution, post_norm, norm3), order


def use_fused_kernel(model: nn.Module, layout: str | None = "packed") -> int:
    """Switches the window attentions of a rewritten model to the fused op (GPU deploy form); returns how many.
    layout "packed": `window_attention_packed` on the qkv projection's output as it is, writing the layout the
    output projection reads (what torch.compile / AOTInductor get); "split": `window_attention` on separate q, k, v
    (the form of the TensorRT plugin's node); None: back to the unfused ops."""
    if layout not in ("packed", "split", None):
        raise ValueError(f"unknown fused layout {layout!r}")
    count = 0
    for module in model.modules():
        if isinstance(module, WindowOrderAttention):
            module.fused = layout
            count += bool(layout)
    return count


def padded_size(resolution: tuple[int, int], window: tuple[int, int]) -> tuple[int, int]:
    return (math.ceil(resolution[0] / window[0]) * window[0], math.ceil(resolution[1] / window[1]) * window[1])


def block_resolution(block: nn.Module) -> tuple[int, int]:
    """The (H, W) map a timm block runs on: `input_resolution` in Swin and Swin V2, `feat_size` in Swin V2 CR."""
    return tuple(block.feat_size if hasattr(block, "feat_size") else block.input_resolution)


def block_attn_mask(block: nn.Module) -> torch.Tensor | None:
    """timm's shifted-window mask (nW, N, N) for a Swin / Swin V2 / Swin V2 CR block at its fixed input size, or
    None."""
    if not any(block.shift_size):
        return None
    if getattr(block, "dynamic_mask", False):
        Hp, Wp = padded_size(block_resolution(block), tuple(block.window_size))
        return block.get_attn_mask(torch.zeros(1, Hp, Wp, 1, dtype=block.norm1.weight.dtype))
    return block.attn_mask
