"""The torch-free `tensorrt` backend: clear errors where TensorRT, the CUDA driver or a GPU is missing (what runs
here), and, on a GPU, the CUDA runtime calls it is built from (page-locked and device buffers, copies on a stream).
The engine itself is run by tests/export/test_tensorrt.py where TensorRT and a GPU are present."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from tests.conftest import run_cli
from vitserve.artifact import read_manifest, write_manifest
from vitserve.errors import ArtifactError
from vitserve.runtimes import load as load_backend

HAS_CUDA_BINDINGS = all(importlib.util.find_spec(m) is not None for m in ("cuda", "cuda.bindings"))
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def gpu_visible() -> bool:
    if not HAS_CUDA_BINDINGS:
        return False
    from cuda.bindings import runtime

    err, count = runtime.cudaGetDeviceCount()
    return err == runtime.cudaError_t.cudaSuccess and count > 0


GPU = gpu_visible()


@pytest.fixture
def engine_artifact(digits_artifact, tmp_path):
    """An artifact directory as `--format tensorrt` writes it (manifest and model.engine); the engine file's bytes
    are not an engine, which only matters past the checks these tests are about."""
    out = tmp_path / "swin_digits-trt"
    shutil.copytree(digits_artifact, out)
    manifest = read_manifest(out)
    (out / manifest.model_file).unlink()
    (out / "model.engine").write_bytes(b"not an engine")
    manifest.model_file = "model.engine"
    manifest.package = {"format": "tensorrt", "tensorrt": "10.13.0", "compute_capability": "9.0", "dtype": "fp16",
                        "profiles": [{"min": 1, "opt": 1, "max": 1}, {"min": 2, "opt": 8, "max": 8}]}
    write_manifest(out, manifest)
    return out


def test_engine_on_a_cpu_device_is_refused(engine_artifact):
    with pytest.raises(ArtifactError, match="--device cpu does not apply"):
        load_backend(engine_artifact, "tensorrt", device="cpu")


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed")
def test_serving_without_tensorrt_is_a_clear_error(engine_artifact):
    with pytest.raises(ArtifactError, match="needs TensorRT.*tensorrt-cu12==10.13.0"):
        load_backend(engine_artifact, "tensorrt")
    result = run_cli("serve", str(engine_artifact), "--backend", "tensorrt", "--port", "0")
    assert result.returncode != 0 and "needs TensorRT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(not HAS_CUDA_BINDINGS or GPU, reason="needs cuda-bindings and no visible GPU")
def test_no_gpu_is_a_clear_error():
    from vitserve.runtimes.tensorrt import Cuda

    with pytest.raises(ArtifactError, match="CUDA cannot reach one"):
        Cuda()


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and cuda-bindings")
def test_buffers_round_trip_on_the_gpu():
    """Page-locked host buffer -> device -> another page-locked buffer, on one stream, as each batch travels."""
    from vitserve.runtimes.tensorrt import Cuda

    cuda = Cuda()
    assert cuda.compute_capability().count(".") == 1
    stream = cuda.call("cudaStreamCreateWithFlags", cuda.rt.cudaStreamNonBlocking)
    src_address, src = cuda.pinned((4, 3, 8, 8))
    dst_address, dst = cuda.pinned((4, 3, 8, 8))
    device = cuda.call("cudaMalloc", src.nbytes)
    try:
        src[:] = np.random.default_rng(0).standard_normal(src.shape, dtype=np.float32)
        dst[:] = 0
        cuda.upload(device, src_address, src[:3].nbytes, stream)  # the first three images only
        cuda.download(dst_address, device, src[:3].nbytes, stream)
        cuda.call("cudaStreamSynchronize", stream)
        np.testing.assert_array_equal(dst[:3], src[:3])
        assert not dst[3].any()
    finally:
        cuda.call("cudaFree", device)
        cuda.call("cudaFreeHost", src_address)
        cuda.call("cudaFreeHost", dst_address)
        cuda.call("cudaStreamDestroy", stream)
