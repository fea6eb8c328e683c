"""Unfold and fold (im2col and its adjoint, col2im) in slices, pads, stacks and reshapes only.

F.fold exports as ONNX Col2Im, which TensorRT's ONNX parser does not take; F.unfold as a gather built from index
arithmetic. Both are sums and stacks of shifted, strided slices of the input, written out here for 4-D maps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def blocks(size: int, kernel: int, padding: int, stride: int) -> int:
    """How many kernel positions fit along an axis of `size` (padded on both sides)."""
    return (size + 2 * padding - kernel) // stride + 1


def tap(i: int, count: int, stride: int) -> slice:
    """The padded input rows that kernel row `i` reads, one per block: i, i + stride, ... (`count` of them)."""
    return slice(i, i + stride * (count - 1) + 1, stride)


def shift(i: int, residue: int, stride: int) -> int:
    """How many blocks kernel row `i` lands below the first row of its residue class (i = residue + stride*shift)."""
    return (i - residue) // stride


def unfold(x: torch.Tensor, kernel_size, padding=0, stride=1) -> torch.Tensor:
    """F.unfold(x, kernel_size, padding=padding, stride=stride) for x (B, C, H, W): (B, C*kh*kw, blocks)."""
    (kh, kw), (ph, pw), (sh, sw) = _pair(kernel_size), _pair(padding), _pair(stride)
    b, c, height, width = x.shape
    h, w = blocks(height, kh, ph, sh), blocks(width, kw, pw, sw)
    x = F.pad(x, (pw, pw, ph, ph))
    taps = [x[:, :, tap(i, h, sh), tap(j, w, sw)] for i in range(kh) for j in range(kw)]
    return torch.stack(taps, dim=2).reshape(b, c * kh * kw, h * w)  # channel c, kernel row i, column j: c*kh*kw+i*kw+j


def fold(x: torch.Tensor, output_size, kernel_size, padding=0, stride=1) -> torch.Tensor:
    """F.fold(x, output_size, kernel_size, padding=padding, stride=stride) for x (B, C*kh*kw, blocks): (B, C, H, W).

    Padded output row Y sums kernel row i of block row y over every (i, y) with Y = i + stride*y. Split by Y's
    residue r modulo the stride, rows Y = r + stride*m take kernel rows i = r + stride*d from block row m - d:
    block rows shifted down by d. So each residue class is a sum of shifted maps, and the classes interleave into
    the output by a stack and a reshape; columns likewise."""
    (height, width), (kh, kw) = _pair(output_size), _pair(kernel_size)
    (ph, pw), (sh, sw) = _pair(padding), _pair(stride)
    h, w = blocks(height, kh, ph, sh), blocks(width, kw, pw, sw)
    b, c = x.shape[0], x.shape[1] // (kh * kw)
    maps = x.reshape(b, c, kh, kw, h, w)
    rows, cols = math.ceil((height + 2 * ph) / sh), math.ceil((width + 2 * pw) / sw)  # rows a residue class has
    classes = []
    for r in range(sh):
        row_classes = []
        for q in range(sw):
            shifted = [F.pad(maps[:, :, i, j], (shift(j, q, sw), cols - w - shift(j, q, sw),
                                                shift(i, r, sh), rows - h - shift(i, r, sh)))
                       for i in range(r, kh, sh) for j in range(q, kw, sw)]
            row_classes.append(sum(shifted[1:], shifted[0]) if shifted else x.new_zeros(b, c, rows, cols))
        classes.append(torch.stack(row_classes, dim=-1).reshape(b, c, rows, cols * sw))  # columns interleaved
    padded = torch.stack(classes, dim=3).reshape(b, c, rows * sh, cols * sw)  # then rows
    return padded[:, :, ph:ph + height, pw:pw + width]
