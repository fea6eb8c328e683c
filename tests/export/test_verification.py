"""Verification must catch a wrong export, name the first divergent block, and leave no artifact behind."""

from __future__ import annotations

import json

import pytest

import vitserve.models.rewrite as rewrite_module
from vitserve.errors import VerificationError
from vitserve.export.pipeline import ExportOptions, export_artifact
from vitserve.models.build import build_model
from vitserve.models.registry import SPECS


def _broken_deploy_copy(break_fn):
    original = rewrite_module.deploy_copy

    def deploy_copy(model, rewrite=True):
        deploy, name = original(model, rewrite)
        break_fn(deploy)
        return deploy, name

    return deploy_copy


def _swap_gather(deploy):
    move = deploy.layers[1].move0  # between the two blocks of stage 2
    move[[3, 40]] = move[[40, 3]]


def _transpose_bias(deploy):
    bias = deploy.layers[0].blocks[1].attn.bias
    bias.copy_(bias.transpose(-2, -1).clone())


@pytest.mark.parametrize("break_fn,first_block", [(_swap_gather, "layers.1.blocks.1"),
                                                  (_transpose_bias, "layers.0.blocks.1")],
                         ids=["swapped-gather-index", "transposed-bias"])
def test_wrong_rewrite_fails_and_names_block(tmp_path, monkeypatch, break_fn, first_block):
    monkeypatch.setattr(rewrite_module, "deploy_copy", _broken_deploy_copy(break_fn))
    out = tmp_path / "swin_digits"
    with pytest.raises(VerificationError) as e:
        export_artifact(build_model(SPECS["swin_digits"]), ExportOptions(out=out), progress=lambda m: None)
    report = e.value.report
    assert not report["passed"]
    assert report["first_divergence"]["first_block"] == first_block
    assert "rewrite" in report["first_divergence"]["summary"]
    assert first_block in str(e.value)
    assert not out.exists(), "a failed export must not leave an artifact"
    saved = json.loads((tmp_path / "swin_digits.failed-verification.json").read_text())
    assert saved["first_divergence"]["first_block"] == first_block


def test_failed_export_keeps_previous_artifact(tmp_path, monkeypatch, digits_artifact):
    import shutil

    out = tmp_path / "swin_digits"
    shutil.copytree(digits_artifact, out)
    before = (out / "vitserve.json").read_text()
    monkeypatch.setattr(rewrite_module, "deploy_copy", _broken_deploy_copy(_transpose_bias))
    with pytest.raises(VerificationError):
        export_artifact(build_model(SPECS["swin_digits"]), ExportOptions(out=out), progress=lambda m: None)
    assert (out / "vitserve.json").read_text() == before
    assert not any(p.name.startswith(".swin_digits") for p in tmp_path.iterdir())


def test_manifest_contents(digits_artifact):
    from vitserve.artifact import read_labels, read_manifest

    m = read_manifest(digits_artifact)
    assert m.name == "swin_digits" and m.family == "swin_transformer" and m.rewrite == "swin-window-order"
    assert m.input.name == "pixel_values" and m.input.shape == (-1, 3, 32, 32)
    assert m.output.shape == (-1, 10) and m.num_classes == 10
    assert m.weights["source"] == "bundled" and len(m.weights["sha256"]) == 64
    assert m.weights["timm_kwargs"]["window_size"] == 6
    assert m.graph["nodes"] == sum(m.graph["op_counts"].values())
    assert m.verification["passed"] and m.verification["photos"]
    assert set(m.versions) == {"vitserve", "torch", "timm", "onnx", "onnxruntime"}
    assert read_labels(digits_artifact / m.labels_file) == [str(d) for d in range(10)]
