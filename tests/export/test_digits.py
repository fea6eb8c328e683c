"""The shipped swin_digits model: trained weights, exported with and without the rewrite, judged on held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitserve.export.pipeline import ExportOptions, export_artifact
from vitserve.export.verify import run_artifact
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.models.digits import load_split
from vitserve.preprocess import transform

SPEC = SPECS["swin_digits"]


@pytest.fixture(scope="module")
def held_out():
    _, _, images, labels = load_split()
    return np.stack([transform(img, SPEC.preprocess) for img in images]), labels


@pytest.fixture(scope="module")
def torch_predictions(held_out):
    model = build_model(SPEC).model
    with torch.no_grad():
        return model(torch.from_numpy(held_out[0])).argmax(1).numpy()


@pytest.fixture(scope="module")
def plain_artifact(tmp_path_factory):
    """swin_digits exported without the rewrite (timm's own graph), once for this module's tests."""
    artifact = tmp_path_factory.mktemp("plain") / "swin_digits"
    export_artifact(build_model(SPEC), ExportOptions(out=artifact, rewrite=False), progress=lambda m: None)
    return artifact


def test_bundled_weights_reach_95_percent(held_out, torch_predictions):
    assert (torch_predictions == held_out[1]).mean() >= 0.95


@pytest.mark.parametrize("rewrite", [True, False], ids=["rewrite", "no-rewrite"])
def test_export_agrees_on_every_held_out_image(held_out, torch_predictions, rewrite, digits_artifact, plain_artifact):
    artifact = digits_artifact if rewrite else plain_artifact
    manifest = json.loads((artifact / "vitserve.json").read_text())
    logits = run_artifact(artifact, "onnxruntime", {"x": held_out[0]}, device="cpu")[0]["x"]
    onnx_predictions = logits.argmax(1)
    assert np.array_equal(onnx_predictions, torch_predictions)
    assert (onnx_predictions == held_out[1]).mean() >= 0.95
    assert manifest["rewrite"] == ("swin-window-order" if rewrite else None)


def test_rewrite_removes_roll_pad_and_mask_ops(digits_artifact, plain_artifact):
    rewritten = json.loads((digits_artifact / "vitserve.json").read_text())["graph"]["op_counts"]
    original = json.loads((plain_artifact / "vitserve.json").read_text())["graph"]["op_counts"]
    assert "Pad" in original and "Pad" not in rewritten
    assert sum(rewritten.values()) < sum(original.values())


@pytest.mark.slow  # a second export
def test_fp16_onnx_keeps_the_held_out_accuracy(tmp_path, held_out, torch_predictions):
    """--dtype fp16 (for onnxruntime's CUDA and TensorRT providers), run here by onnxruntime's CPU kernels: fp16
    weights and activations, float32 LayerNorm and attention bias, float32 in and out."""
    import onnx

    artifact = tmp_path / "fp16"
    manifest = export_artifact(build_model(SPEC), ExportOptions(out=artifact, dtype="fp16"), progress=lambda m: None)
    assert manifest.package == {"dtype": "fp16", "float32_layer_norms": 16}
    assert manifest.verification["min_cosine"] >= 0.999 and manifest.verification["min_cosine_required"] == 0.999
    graph = onnx.load(str(artifact / "model.onnx")).graph
    weights = [t for t in graph.initializer if len(t.dims) == 2]  # the Linear layers' matrices
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [onnx.TensorProto.FLOAT] * 2
    logits = run_artifact(artifact, "onnxruntime", {"x": held_out[0]}, device="cpu")[0]["x"]
    assert (logits.argmax(1) == torch_predictions).mean() >= 0.99
    assert (logits.argmax(1) == held_out[1]).mean() >= 0.95


def test_fp16_onnx_gate_catches_a_wrong_rewrite(tmp_path, monkeypatch):
    import vitserve.models.rewrites as rewrite_module
    from vitserve.errors import VerificationError

    original = rewrite_module.deploy_copy

    def broken(model, rewrite=True, explicit=True):  # the first shifted block's attention bias transposed
        deploy, name = original(model, rewrite, explicit)
        attn = deploy.layers[0].blocks[1].attn
        bias = attn.bias
        bias.copy_(bias.transpose(-2, -1).clone())
        return deploy, name

    monkeypatch.setattr(rewrite_module, "deploy_copy", broken)
    with pytest.raises(VerificationError, match="fp16 ONNX model does not match.*lowest logit cosine"):
        export_artifact(build_model(SPEC), ExportOptions(out=tmp_path / "bad", dtype="fp16"), progress=lambda m: None)
