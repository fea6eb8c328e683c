"""Verification must catch a wrong export, name the first divergent block, and leave no artifact behind; a
runtime checked in a child process reports the child's failure or crash."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import vitserve.models.rewrites as rewrite_module
from vitserve.errors import ExportError, VerificationError
from vitserve.export.pipeline import ExportOptions, export_artifact
from vitserve.export.verify import outputs_in_child
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.proof import compare, gate


def _broken_deploy_copy(break_fn):
    original = rewrite_module.deploy_copy

    def deploy_copy(model, rewrite=True, explicit=True):
        deploy, name = original(model, rewrite, explicit)
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


@pytest.mark.slow  # exports that fail verification
def test_wrong_rewrite_fails_when_the_logits_are_smaller_than_atol(tmp_path, monkeypatch):
    """timm starts some classifiers near zero (a random-init LeViT's logits stay below 1e-4): there every logit
    difference is below atol however wrong the export, and only the logits' direction can tell."""
    built = build_model(SPECS["swin_digits"])
    with torch.no_grad():
        built.model.head.fc.weight.mul_(1e-7)
        built.model.head.fc.bias.mul_(1e-7)
    monkeypatch.setattr(rewrite_module, "deploy_copy", _broken_deploy_copy(_transpose_bias))
    with pytest.raises(VerificationError, match="lowest logit cosine") as e:
        export_artifact(built, ExportOptions(out=tmp_path / "tiny"), progress=lambda m: None)
    report = e.value.report
    assert report["max_abs_diff"] < report["atol"], "the difference alone would have passed"
    assert report["first_divergence"]["first_block"] == "layers.0.blocks.1"


def test_the_gate_compares_directions():
    ref = np.array([[2e-6, -1e-6, 5e-7], [0.0, 0.0, 0.0]])
    same = compare(ref, ref * (1 + 1e-7))
    assert same["min_cosine"] > 0.99999 and gate(same, "fp32", atol=1e-4) is None
    zeros = compare(ref, np.zeros_like(ref))
    assert zeros["max_abs_diff"] < 1e-4
    assert "lowest logit cosine" in gate(zeros, "fp32", atol=1e-4)
    shifted = compare(ref + 1.0, ref + 1.0 + 2e-4)
    assert "max |logit difference|" in gate(shifted, "fp32", atol=1e-4)
    assert gate(shifted, "fp16", atol=1e-4) is None


@pytest.mark.slow  # exports that fail verification
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


CHILDREN = {  # module text -> what outputs_in_child must make of it
    "doubles": "import sys, numpy as np\nx = np.load(sys.argv[1])\n"
               "np.savez(sys.argv[2], **{n: 2 * x[n] for n in x.files})\n",
    "raises": "raise RuntimeError('no such kernel image')\n",
    "crashes": "import ctypes\n\ndef read_address_zero():\n    ctypes.string_at(0)\n\nread_address_zero()\n",
    "hangs": "import time\n\ndef wait_forever():\n    time.sleep(3600)\n\nwait_forever()\n",
}


@pytest.fixture
def child_modules(tmp_path, monkeypatch):
    for name, text in CHILDREN.items():
        (tmp_path / f"child_{name}.py").write_text(text)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_outputs_in_child_returns_the_childs_arrays(child_modules):
    inputs = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((1, 4), np.float32)}
    outputs = outputs_in_child("child_doubles", [], inputs, what="the doubler")
    assert set(outputs) == {"a", "b"} and all(np.array_equal(outputs[n], 2 * inputs[n]) for n in inputs)


def test_outputs_in_child_reports_an_exception(child_modules):
    with pytest.raises(ExportError, match=r"the runner failed \(exit status 1\)(.|\n)*RuntimeError: no such kernel"):
        outputs_in_child("child_raises", [], {"a": np.zeros(1)}, what="the runner")


def test_outputs_in_child_reports_a_crash_with_its_stack(child_modules):
    """A segmentation fault in native code: the error names the signal and carries faulthandler's Python stack,
    down to the function that crashed."""
    with pytest.raises(ExportError) as e:
        outputs_in_child("child_crashes", [], {"a": np.zeros(1)}, what="the runner")
    message = str(e.value)
    assert "the runner crashed (SIGSEGV" in message and "Fatal Python error: Segmentation fault" in message
    assert "child_crashes.py\", line 4 in read_address_zero" in message


def test_outputs_in_child_stops_a_stuck_child_and_shows_where(child_modules):
    with pytest.raises(ExportError) as e:
        outputs_in_child("child_hangs", [], {"a": np.zeros(1)}, what="the runner", timeout_s=5)
    message = str(e.value)
    assert "the runner did not finish within 5 s and was stopped" in message
    assert "child_hangs.py\", line 4 in wait_forever" in message
