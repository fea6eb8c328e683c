"""The CPU serving image, built from the Dockerfile with buildah and run: it answers like the artifact outside it.
The GPU image (Dockerfile.gpu, without TensorRT, whose libraries come from pypi.nvidia.com), built on the same base
without CUDA: its onnxruntime-gpu matches the image's CUDA version, and serving on CUDA names what is missing.

Building needs root, buildah and debootstrap (or BASE_IMAGE naming a local base) and the package registries; CI
installs them. Elsewhere these tests skip, saying so.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess

import httpx
import numpy as np
import pytest
import skimage.data
import tritonclient.grpc as grpcclient
from PIL import Image

from tests.conftest import ROOT, run_cli
from tests.live_server import Server, free_port

BUILDAH_ENV = {**os.environ, "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs")}
MAX_IMAGE_MB = 800

# one worker builds the image, once, for every test here (pyproject.toml's --dist loadgroup)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("image"), pytest.mark.skipif(
    shutil.which("buildah") is None or os.geteuid() != 0
    or (shutil.which("debootstrap") is None and "BASE_IMAGE" not in os.environ),
    reason="building the image needs root, buildah and debootstrap (apt-get install buildah debootstrap)",
)]  # image builds


def buildah(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, env=BUILDAH_ENV, check=check,
                          timeout=timeout)


def build(flavour: str, tag: str, *args: str) -> str:
    result = subprocess.run([str(ROOT / "deploy" / "build-image.sh"), flavour, tag, *args], capture_output=True,
                            text=True, env=BUILDAH_ENV, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    return tag


@pytest.fixture(scope="session")
def image() -> str:
    return build("cpu", "localhost/vitserve:test")


def container_of(image: str):
    name = buildah("from", "--pull=never", image).stdout.strip()
    yield name
    buildah("rm", name, check=False)


@pytest.fixture
def container(image):
    yield from container_of(image)


@pytest.fixture(scope="module")
def gpu_container():
    tag = build("gpu", "localhost/vitserve:gpu-test", "--build-arg", "TENSORRT=0")
    yield from container_of(tag)
    buildah("rmi", tag, check=False)


def run_in(container: str, *command: str, mounts: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    volumes = [arg for mount in mounts for arg in ("-v", mount)]
    return buildah("run", "--isolation", "chroot", *volumes, container, "--", *command, check=False)


def test_image_config(image):
    config = json.loads(buildah("inspect", "--type", "image", image).stdout)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert {"8000/tcp", "8001/tcp"} <= config["ExposedPorts"].keys()
    assert {"VITSERVE_PORT=8000", "VITSERVE_GRPC_PORT=8001"} <= set(config["Env"])
    assert config["Healthcheck"]["Test"] == ["CMD", "vitserve", "healthcheck"]
    assert config["Entrypoint"] == ["vitserve", "serve"] and config["Cmd"] == ["/models"]
    size = json.loads(buildah("images", "--json", image).stdout)[0]["size"]
    value, unit = re.fullmatch(r"([\d.]+) (kB|MB|GB)", size).groups()
    megabytes = float(value) * {"kB": 1e-3, "MB": 1, "GB": 1e3}[unit]
    assert megabytes <= MAX_IMAGE_MB, size


def test_image_has_no_torch(container):
    modules = ("torch", "timm", "onnx", "onnxruntime")
    probe = run_in(container, "python", "-c", "import importlib.util as u, json; "
                   f"print(json.dumps({{m: u.find_spec(m) is not None for m in {modules!r}}}))")
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"torch": False, "timm": False, "onnx": False, "onnxruntime": True}


def test_missing_artifact_is_a_clear_error(container):
    result = run_in(container, "vitserve", "serve", "/models")  # nothing mounted: /models is empty
    assert result.returncode != 0
    assert "error:" in result.stderr and "vitserve.json" in result.stderr and "Traceback" not in result.stderr


def test_container_answers_like_the_artifact_outside(container, digits_artifact, tmp_path):
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=90)
    outside = run_cli("classify", str(digits_artifact), str(photo), "--top-k", "10", "--json", "--backend",
                      "onnxruntime")  # the image has onnxruntime alone
    assert outside.returncode == 0, outside.stderr
    expected = json.loads(outside.stdout)["results"][0]["top_k"]

    command = ["buildah", "run", "--isolation", "chroot", "-v", f"{digits_artifact}:/models:ro", container, "--",
               "vitserve", "serve", "/models", "--host", "127.0.0.1"]
    grpc_port = free_port()  # the host's network: not the image's 8001, which may be taken here
    server = Server(digits_artifact, "--threads", "1", "--grpc-port", str(grpc_port), command=command,
                    env={"STORAGE_DRIVER": "vfs"})
    try:
        server.wait_ready(timeout_s=120)
        health = run_in(container, "vitserve", "healthcheck", "--url", f"{server.url}/readyz")
        assert health.returncode == 0, health.stderr
        files = {"file": ("chelsea.jpg", io.BytesIO(photo.read_bytes()), "image/jpeg")}
        response = httpx.post(f"{server.url}/classify", params={"top_k": 10}, files=files, timeout=30)
        page, script = (httpx.get(f"{server.url}{path}", timeout=10) for path in ("/", "/ui/app.js"))
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            tensor = grpcclient.InferInput("images", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([photo.read_bytes()], dtype=np.object_))
            logits = client.infer("swin_digits", [tensor]).as_numpy("logits")[0]
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    assert page.status_code == 200 and script.status_code == 200 and "classify" in script.text  # the try-it page
    assert list(np.argsort(-logits, kind="stable")) == [p["index"] for p in expected]
    got = response.json()["results"][0]["predictions"]
    assert [p["index"] for p in got] == [p["index"] for p in expected]
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    for g, e in zip(got, expected):
        assert g["score"] == pytest.approx(e["score"], abs=1e-5)


def test_gpu_image_onnxruntime_matches_its_cuda_and_names_what_is_missing(gpu_container, digits_artifact):
    """The build's check passed for the image's CUDA version (13.x by default); the same check refuses CUDA 12's
    libraries. On this base there are none, so --device cuda stops, naming the first missing library."""
    installed = run_in(gpu_container, "python", "-c", "from vitserve.runtimes.onnxruntime import onnxruntime_build; "
                       "print(*onnxruntime_build())")
    assert installed.returncode == 0, installed.stderr
    version, cuda = installed.stdout.split()
    assert cuda.split(".")[0] == "13", (version, cuda)
    check = run_in(gpu_container, "python", "-c", "import sys; from vitserve.runtimes.onnxruntime import "
                   "cuda_build_problem as p; sys.exit(p('12.9.1') or None)")
    assert check.returncode == 1 and f"built for CUDA {cuda} and cannot run on CUDA 12.9.1" in check.stderr

    cuda_only = run_in(gpu_container, "vitserve", "serve", "/models", "--device", "cuda",
                       mounts=(f"{digits_artifact}:/models:ro",))
    assert cuda_only.returncode == 1
    errors = [line for line in cuda_only.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, cuda_only.stderr[-2000:]
    error = errors[0]
    assert "could not start CUDAExecutionProvider: libonnxruntime_providers_cuda.so does not load" in error, error
    assert re.search(r"\(lib\w+\.so\.\d+: cannot open shared object file", error), error
    assert f"built for CUDA {cuda}" in error and "Traceback" not in cuda_only.stderr
