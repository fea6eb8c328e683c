"""VOLO's deploy rewrite: outlook attention's unfold and fold in plain ops (models/rewrites/folds.py), exact against
PyTorch's own, and a tap or a shift off by one must break the comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from timm.models.volo import VOLO, OutlookAttention

from tests.weights import perturb
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.models.rewrites import deploy_copy, folds

# (kernel, padding, stride, H, W): VOLO's own (3, 1, 2) on even and odd maps, strides above and below the kernel
SHAPES = [(3, 1, 2, 28, 28), (3, 1, 2, 7, 9), (3, 1, 1, 6, 5), (2, 0, 2, 8, 8), (1, 0, 3, 7, 8), (4, 2, 3, 9, 6),
          (7, 3, 4, 14, 14), (3, 0, 2, 10, 7)]


def _pair_of_tensors(kernel, padding, stride, height, width):
    torch.manual_seed(0)
    x = torch.randn(2, 5, height, width, dtype=torch.float64)
    blocks = folds.blocks(height, kernel, padding, stride) * folds.blocks(width, kernel, padding, stride)
    return x, torch.randn(2, 5 * kernel * kernel, blocks, dtype=torch.float64)


@pytest.mark.parametrize("kernel,padding,stride,height,width", SHAPES)
def test_unfold_and_fold_are_torchs(kernel, padding, stride, height, width):
    x, columns = _pair_of_tensors(kernel, padding, stride, height, width)
    assert torch.equal(folds.unfold(x, kernel, padding, stride), F.unfold(x, kernel, padding=padding, stride=stride))
    ours = folds.fold(columns, (height, width), kernel, padding, stride)
    torchs = F.fold(columns, (height, width), kernel, padding=padding, stride=stride)
    assert (ours - torchs).abs().max() < 1e-12


def test_a_tap_off_by_one_breaks_unfold(monkeypatch):
    x, _ = _pair_of_tensors(3, 1, 2, 28, 28)
    right = F.unfold(x, 3, padding=1, stride=2)
    tap = folds.tap
    monkeypatch.setattr(folds, "tap", lambda i, count, stride: tap(i + (i == 1), count, stride))
    assert (folds.unfold(x, 3, 1, 2) - right).abs().max() > 0.1


def test_a_shift_off_by_one_breaks_fold(monkeypatch):
    _, columns = _pair_of_tensors(3, 1, 2, 28, 28)
    right = F.fold(columns, (28, 28), 3, padding=1, stride=2)
    shift = folds.shift
    monkeypatch.setattr(folds, "shift", lambda i, residue, stride: shift(i, residue, stride) + (i == 2))
    assert (folds.fold(columns, (28, 28), 3, 1, 2) - right).abs().max() > 0.1


def _volo(img_size: int) -> VOLO:
    """A small VOLO (one block a stage) with random weights, norms perturbed so that every block counts."""
    torch.manual_seed(0)
    model = VOLO(layers=(1, 1, 1, 1), img_size=img_size, embed_dims=(32, 64, 64, 64), num_heads=(2, 4, 4, 4),
                 stem_hidden_dim=16, num_classes=10)
    return perturb(model.eval())


@pytest.mark.parametrize("img_size", [64, 56])  # 8x8 and 7x7 maps in the outlook stage
def test_rewrite_is_equivalent(img_size):
    model = _volo(img_size)
    deploy, name = deploy_copy(model)
    assert name == "volo-fold-slices"
    x = torch.randn(3, 3, img_size, img_size)
    with torch.no_grad():
        reference, rewritten = model(x), deploy(x)
    assert (reference - rewritten).abs().max() < 1e-5 * reference.abs().max()
    assert all("forward" not in vars(m) for m in model.modules() if isinstance(m, OutlookAttention)), \
        "the original must stay untouched"


def test_a_shift_off_by_one_breaks_the_model(monkeypatch):
    model = _volo(64)
    deploy, _ = deploy_copy(model)
    shift = folds.shift
    monkeypatch.setattr(folds, "shift", lambda i, residue, stride: shift(i, residue, stride) + (i == 2))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference, rewritten = model(x), deploy(x)
    assert (reference - rewritten).abs().max() > 1e-3 * reference.abs().max()


def test_the_deploy_graph_has_no_col2im(tmp_path):
    """timm's graph exports F.fold as ONNX Col2Im (no TensorRT parser takes it); the deploy form's has none and
    computes the same logits in onnxruntime."""
    import onnxruntime

    from vitserve.export.onnx import export_onnx, graph_stats

    model = _volo(64)
    ops = {}
    for name, rewrite in (("timm", False), ("deploy", True)):
        export_onnx(deploy_copy(model, rewrite=rewrite)[0], (3, 64, 64), tmp_path / f"{name}.onnx", max_batch=4,
                    opset=18)
        ops[name] = graph_stats(tmp_path / f"{name}.onnx")["op_counts"]
    assert ops["timm"].get("Col2Im") == 1 and "Col2Im" not in ops["deploy"], ops
    x = torch.randn(3, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(tmp_path / "deploy.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        reference = model(x)
    assert abs(logits - reference.numpy()).max() < 1e-4 * reference.abs().max().item()


def test_parameter_names_and_shapes_are_the_official_ones():
    """volo_d1's state dict, key by key, as sail-sg/volo's own volo_d1 names and shapes it (tests/models/official/
    volo_d1.json, read from the official code's model): a checkpoint trained there loads as it is."""
    official = json.loads((Path(__file__).parent / "official" / "volo_d1.json").read_text())
    model = build_model(SPECS["volo_d1"], random_init=True).model
    assert {name: list(value.shape) for name, value in model.state_dict().items()} == official
