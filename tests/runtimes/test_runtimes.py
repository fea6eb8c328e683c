"""Runtimes on the shipped swin_digits artifact: onnxruntime and OpenVINO agree; precision choices and errors."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT
from vitserve.errors import ArtifactError
from vitserve.models.catalogue import SPECS
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes import load as load_backend
from vitserve.runtimes.onnxruntime import OnnxRuntime, check_providers, cuda_build_problem, provider_problem
from vitserve.runtimes.openvino import OpenVINORuntime, cpu_supports_bf16
from vitserve.server.app import create_app
from vitserve.server.settings import Settings


@pytest.fixture(scope="module")
def pixels():
    pre = SPECS["swin_digits"].preprocess
    return np.stack([transform(decode_image((ROOT / "examples" / f"digit_{d}.png").read_bytes()), pre)
                     for d in range(10)])


def test_openvino_f32_matches_onnxruntime(digits_artifact, pixels):
    ort_logits = OnnxRuntime(digits_artifact)(pixels)
    ov_logits = OpenVINORuntime(digits_artifact, precision="f32")(pixels)
    assert np.abs(ort_logits - ov_logits).max() < 1e-4
    assert (ov_logits.argmax(1) == np.arange(10)).all()


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 (AVX512_BF16 / AMX)")
def test_openvino_bf16_agrees_on_top1(digits_artifact, pixels):
    backend = OpenVINORuntime(digits_artifact, precision="auto")
    assert backend.precision == "bf16"
    assert (backend(pixels).argmax(1) == np.arange(10)).all()


def test_precision_errors(digits_artifact, monkeypatch):
    with pytest.raises(ArtifactError, match="needs --backend openvino"):
        load_backend(digits_artifact, "onnxruntime", precision="bf16")
    with pytest.raises(ArtifactError, match="unknown backend"):
        load_backend(digits_artifact, "tensorflow")
    monkeypatch.setattr("vitserve.runtimes.openvino.cpu_supports_bf16", lambda: False)
    with pytest.raises(ArtifactError, match="AVX512_BF16 or AMX"):
        load_backend(digits_artifact, "openvino", precision="bf16")
    assert load_backend(digits_artifact, "openvino", precision="auto").precision == "f32"


@pytest.mark.parametrize("backend_class", [OnnxRuntime, OpenVINORuntime])
def test_backends_take_calls_from_several_threads(digits_artifact, pixels, backend_class):
    """The server may run several batches at once (--batches-in-flight): each call gets its own batch's answers
    (OpenVINO: an infer request runs one call at a time, so concurrent calls each need their own)."""
    backend = backend_class(digits_artifact)
    assert backend.batches_in_flight == 1  # the default on a CPU: batches would only compete for its cores
    batches = [pixels[i:i + 3] for i in range(8)] * 2
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(backend, batches))
    for batch, got in zip(batches, answers):
        assert np.abs(got - backend(batch)).max() < 1e-5


def test_server_on_openvino(digits_artifact):
    settings = Settings(artifact=digits_artifact, backend="openvino", precision="f32", batches_in_flight=2)
    with TestClient(create_app(settings)) as client:
        body = (ROOT / "examples" / "digit_8.png").read_bytes()
        answer = client.post("/classify?top_k=1", content=body, headers={"content-type": "image/png"}).json()
        assert answer["results"][0]["predictions"][0]["label"] == "8"
        assert client.app.state.repository.only.backend.description == "openvino CPU f32"
        assert client.app.state.repository.only.batcher.batches_in_flight == 2  # the setting over the backend's 1
        assert client.app.state.repository.only.backend._requests.size == 2  # a request each, made early
        files = [("file", (f"digit_{d}.png", (ROOT / "examples" / f"digit_{d}.png").read_bytes(), "image/png"))
                 for d in range(10)]
        with concurrent.futures.ThreadPoolExecutor(5) as pool:  # requests at once: batches computing at once
            answers = list(pool.map(lambda d: client.post("/classify?top_k=1", files=files[d:d + 1]).json(),
                                    range(10)))
        assert [a["results"][0]["predictions"][0]["label"] for a in answers] == [str(d) for d in range(10)]


def test_export_openvino_ir_serves_only_on_openvino(tmp_path, pixels):
    from vitserve.export.pipeline import ExportOptions, export_artifact
    from vitserve.models.build import build_model

    out = tmp_path / "ir"
    manifest = export_artifact(build_model(SPECS["swin_digits"]), ExportOptions(out=out, format="openvino"),
                               progress=lambda m: None)
    assert manifest.model_file == "model.xml" and (out / "model.bin").is_file() and not (out / "model.onnx").exists()
    report = manifest.verification
    assert report["passed"] and report["runtime"].startswith("openvino") and report["onnx_before_conversion"]["passed"]
    logits = OpenVINORuntime(out, precision="f32")(pixels)
    assert (logits.argmax(1) == np.arange(10)).all()
    with pytest.raises(ArtifactError, match="--backend openvino"):
        OnnxRuntime(out)
    # `vitserve bench` leaves out the backends that cannot run the IR
    from vitserve.export.bench import runners_for

    assert list(runners_for(out, ["onnxruntime", "openvino"], ["f32"], threads=1, eager=False)) == ["openvino f32"]
    # auto (the default of `vitserve serve` and `classify`): the backend the artifact was exported for
    assert isinstance(load_backend(out, precision="f32"), OpenVINORuntime)
    with TestClient(create_app(Settings(artifact=out, precision="f32"))) as client:
        body = (ROOT / "examples" / "digit_5.png").read_bytes()
        answer = client.post("/classify?top_k=1", content=body, headers={"content-type": "image/png"}).json()
        assert answer["results"][0]["predictions"][0]["label"] == "5"
        assert client.app.state.repository.only.backend.description == "openvino CPU f32"
        assert client.get("/v2/models/swin_digits").json()["platform"] == "openvino"


def test_auto_backend_of_an_onnx_artifact_is_onnxruntime(digits_artifact):
    assert isinstance(load_backend(digits_artifact), OnnxRuntime)
    assert Settings(artifact=digits_artifact).backend == "auto"


def test_gpu_provider_fallback_is_refused_when_asked_for(caplog):
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert check_providers("cuda", cuda, cuda) == cuda
    with pytest.raises(ArtifactError, match="could not start CUDAExecutionProvider"):
        check_providers("cuda", cuda, ["CPUExecutionProvider"])
    trt = ["TensorrtExecutionProvider", *cuda]
    with pytest.raises(ArtifactError, match="--device tensorrt"):
        check_providers("tensorrt", trt, cuda)
    assert check_providers("auto", cuda, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "serving on CPUExecutionProvider" in caplog.text
    with pytest.raises(ArtifactError, match="start CUDAExecutionProvider: libcudart.so.13 is missing. It would run"):
        check_providers("cuda", cuda, ["CPUExecutionProvider"], "libcudart.so.13 is missing")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to make the shared libraries")
def test_provider_problem_names_the_missing_library(tmp_path):
    """A provider library linked against a CUDA library the system lacks, as onnxruntime-gpu's is where CUDA is
    not installed (or is another major version): the reason names the missing library and the CUDA version."""
    capi = tmp_path / "capi"
    capi.mkdir()
    (tmp_path / "stub.c").write_text("int stub(void) { return 0; }\n")

    def library(path, *link):
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(path), str(tmp_path / "stub.c"), *link], check=True)

    absent = tmp_path / "libvitserve_absent.so.13"  # as libcudart.so.13 is, where CUDA 13 is not installed
    library(absent, f"-Wl,-soname,{absent.name}")
    library(capi / "libonnxruntime_providers_cuda.so", "-Wl,--no-as-needed", str(absent))
    library(capi / "libonnxruntime_providers_tensorrt.so")  # links nothing missing
    absent.unlink()

    problem = provider_problem("CUDAExecutionProvider", capi, "13.0")
    assert f"libonnxruntime_providers_cuda.so does not load ({absent.name}: cannot open shared object" in problem
    assert "built for CUDA 13.0" in problem
    assert provider_problem("TensorrtExecutionProvider", capi, "13.0") == ""  # it loads: another reason
    assert provider_problem("CPUExecutionProvider", capi) == ""
    assert provider_problem("CUDAExecutionProvider", tmp_path / "elsewhere") == ""  # onnxruntime's CPU build


def test_cuda_build_problem_matches_onnxruntime_gpu_to_the_cuda_libraries():
    """The GPU image's build check: PyPI's onnxruntime-gpu 1.31.1 is built for CUDA 13.0, 1.26.0 for CUDA 12.8."""
    assert cuda_build_problem("13.1.1", ("1.31.1", "13.0")) == ""
    assert cuda_build_problem("13.0.2", ("1.31.1", "13.0")) == ""
    assert cuda_build_problem("12.9.1", ("1.26.0", "12.8")) == ""
    old_libraries = cuda_build_problem("12.6.3", ("1.31.1", "13.0"))
    assert "onnxruntime-gpu 1.31.1 is built for CUDA 13.0 and cannot run on CUDA 12.6.3's libraries" in old_libraries
    assert "built for CUDA 12.x" in old_libraries
    assert "built for CUDA 12.8" in cuda_build_problem("12.6.3", ("1.26.0", "12.8"))  # a later minor version
    assert "built for CUDA 12.8" in cuda_build_problem("13.1.1", ("1.26.0", "12.8"))
    assert "CPU build" in cuda_build_problem("13.1.1", ("1.32.0", ""))  # onnxruntime, not onnxruntime-gpu
