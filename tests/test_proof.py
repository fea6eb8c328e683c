"""The proof an artifact carries (vitserve/proof.py): written at export, re-run by the serving runtime before the
server calls the model ready, a mismatch kept out of service.

A drifting runtime is made real by giving the shipped model's artifact the proof of a slightly different model
(tests/conftest.py's drifting_artifact): the runtime then answers unlike the proof's reference, as a runtime that
computes differently would, and the manifest's checksums still hold."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import ROOT
from vitserve import proof, runtimes
from vitserve.artifact import read_manifest, write_manifest
from vitserve.models.build import build_model
from vitserve.models.catalogue import SPECS
from vitserve.server.app import create_app
from vitserve.server.settings import Settings


def test_export_keeps_the_fp32_models_answers_to_a_few_inputs(digits_artifact):
    manifest = read_manifest(digits_artifact)
    assert manifest.proof == {"file": "proof.npz", "inputs": {"random": 2, "photos": 2}, "dtype": "fp32",
                              "reference": "the fp32 PyTorch model, before any rewrite", "atol": 1e-4}
    assert "proof.npz" in manifest.files  # its size and SHA-256, checked at every load
    with np.load(digits_artifact / "proof.npz") as saved:
        assert sorted(saved.files) == ["input.photos", "input.random", "reference.photos", "reference.random"]
        assert saved["input.random"].dtype == np.float16 and saved["input.random"].shape == (2, 3, 32, 32)
    inputs, references = proof.read(digits_artifact, manifest.proof)
    model = build_model(SPECS["swin_digits"]).model  # the shipped weights: the model the artifact came from
    with torch.no_grad():
        for name, x in inputs.items():
            assert x.dtype == np.float32
            assert np.array_equal(model(torch.from_numpy(x)).numpy(), references[name])


@pytest.mark.parametrize("backend,precision,dtype", [("onnxruntime", "auto", "fp32"), ("openvino", "f32", "fp32"),
                                                     ("openvino", "bf16", "bf16")])
def test_the_proof_holds_in_every_runtime_that_serves_it(digits_artifact, backend, precision, dtype):
    if precision == "bf16":
        from vitserve.runtimes.openvino import cpu_supports_bf16

        if not cpu_supports_bf16():
            pytest.skip("this CPU computes no bf16 (AVX512_BF16 or AMX)")
    report = runtimes.load(digits_artifact, backend, precision=precision).check_proof()
    assert report["passed"] and report["dtype"] == dtype and "reason" not in report
    assert report["min_cosine_required"] == proof.MIN_COSINE[dtype]
    assert set(report["inputs"]) == {"random", "photos"} and report["inputs"]["random"]["batch"] == 2
    if dtype == "fp32":
        assert report["atol"] == 1e-4 and report["max_abs_diff"] < 1e-4


def test_a_drifting_runtime_fails_the_proof_and_says_how(drifting_artifact):
    report = runtimes.load(drifting_artifact, "onnxruntime").check_proof()
    assert not report["passed"]
    assert report["reason"].startswith("the artifact's proof (2 random, 2 photos images) does not give the fp32 "
                                       "model's answers in onnxruntime CPUExecutionProvider: max |logit difference|")
    assert report["max_abs_diff"] > 1e-3


def test_an_int8_artifact_is_held_to_what_its_quantization_reached(digits_artifact, tmp_path):
    from vitserve.export.quantize import quantize_artifact

    out = tmp_path / "int8"
    quantize_artifact(digits_artifact, ROOT / "examples", out, min_agreement=0, min_speedup=0, progress=lambda m: None)
    entry = read_manifest(out).proof
    assert entry["dtype"] == "int8" and entry["atol"] is None and set(entry["int8_min_cosine"]) == {"random", "photos"}
    report = runtimes.load(out).check_proof()
    assert report["passed"] and report["dtype"] == "int8"
    for name, figures in report["inputs"].items():
        assert figures["min_cosine_required"] == pytest.approx(entry["int8_min_cosine"][name] - proof.INT8_MARGIN)
    # a runtime that answered each photograph with the other's logits: the photographs' set fails, alone
    inputs, references = proof.read(out, entry)
    references["photos"] = references["photos"][::-1]
    manifest = read_manifest(out)
    manifest.proof = proof.write(out, inputs, references, **{k: v for k, v in entry.items()
                                                               if k not in ("file", "inputs")})
    write_manifest(out, manifest)
    report = runtimes.load(out).check_proof()
    assert not report["passed"] and "photos: lowest logit cosine" in report["reason"]
    assert "random:" not in report["reason"]


def _serve(artifact, **settings):
    """The server on onnxruntime, whose fp32 gate the drifting proof fails (how --backend auto deals with a runtime
    that fails the proof: tests/runtimes/test_choose.py)."""
    settings = {"backend": "onnxruntime", **settings}
    return TestClient(create_app(Settings(artifact=artifact, max_batch_size=4, **settings)))


def _digit() -> bytes:
    return (ROOT / "examples" / "digit_3.png").read_bytes()


def test_the_server_keeps_a_drifting_model_out_of_service(drifting_artifact):
    with _serve(drifting_artifact) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "refused"
        assert "does not give the fp32 model's answers" in ready.json()["reason"]
        assert "--allow-drift" in ready.json()["reason"]
        refused = client.post("/classify", content=_digit(), headers={"content-type": "image/png"})
        assert refused.status_code == 503 and "does not give the fp32 model's answers" in refused.text
        assert client.get("/v2/health/ready").status_code == 503
        assert 'vitserve_proof{model="swin_digits",state="failed",version="1"} 1.0' in client.get("/metrics").text


def test_allow_drift_serves_and_says_so(drifting_artifact):
    with _serve(drifting_artifact, allow_drift=True) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["proof"].startswith("failed, serving anyway (--allow-drift)")
        answer = client.post("/classify", content=_digit(), headers={"content-type": "image/png"})
        assert answer.status_code == 200 and answer.json()["results"][0]["predictions"][0]["label"] == "3"


def test_a_passing_proof_and_an_artifact_without_one(digits_artifact, tmp_path):
    with _serve(digits_artifact) as client:
        ready = client.get("/readyz").json()
        assert ready["proof"] == "passed in onnxruntime CPUExecutionProvider" and "backend_choice" not in ready
        assert 'vitserve_proof{model="swin_digits",state="passed",version="1"} 1.0' in client.get("/metrics").text
    old = tmp_path / "old"  # as vitserve wrote artifacts before proofs: served, unchecked, and said so
    shutil.copytree(digits_artifact, old)
    data = json.loads((old / "vitserve.json").read_text())
    del data["proof"]
    (old / "proof.npz").unlink()
    del data["files"]["proof.npz"]
    (old / "vitserve.json").write_text(json.dumps(data))
    with _serve(old) as client:
        assert client.get("/readyz").json()["proof"].startswith("none")
        assert 'vitserve_proof{model="swin_digits",state="none",version="1"} 1.0' in client.get("/metrics").text
