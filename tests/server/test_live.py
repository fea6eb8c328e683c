"""Against a real `vitserve serve` process on 127.0.0.1: the official tritonclient, SIGTERM under load, start-up
errors. Every loop here is bounded in count and time."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT
from tests.live_server import Server, free_port
from vitserve.artifact import read_manifest, write_manifest
from vitserve.models.catalogue import SPECS
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes.onnxruntime import OnnxRuntime

pytestmark = pytest.mark.slow  # live servers

EXAMPLES = {d: (ROOT / "examples" / f"digit_{d}.png").read_bytes() for d in range(10)}


@pytest.fixture
def server(digits_artifact):
    s = Server(digits_artifact, "--max-batch-size", "8", "--threads", "1", "--backend", "onnxruntime")
    s.wait_ready()
    yield s
    s.stop()


def test_official_tritonclient(server, digits_artifact):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("swin_digits")
    meta = client.get_model_metadata("swin_digits")
    assert meta["inputs"][0]["name"] == "pixel_values"

    pre = SPECS["swin_digits"].preprocess
    x = np.stack([transform(decode_image(EXAMPLES[d]), pre) for d in (2, 9)])
    expected = OnnxRuntime(digits_artifact)(x)
    for binary in (True, False):
        inp = httpclient.InferInput("pixel_values", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("logits", binary_data=binary)
        logits = client.infer("swin_digits", [inp], outputs=[out]).as_numpy("logits")
        assert np.abs(logits - expected).max() < 1e-5

    raw = np.array([EXAMPLES[d] for d in (4, 1, 7)], dtype=np.object_)
    inp = httpclient.InferInput("images", [3], "BYTES")
    inp.set_data_from_numpy(raw)
    out = httpclient.InferRequestedOutput("logits", class_count=2)
    top = client.infer("swin_digits", [inp], outputs=[out]).as_numpy("logits")
    assert top.shape == (3, 2)
    assert [row[0].decode().split(":")[2] for row in top] == ["4", "1", "7"]

    bad = httpclient.InferInput("pixel_values", [1, 3, 8, 8], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(Exception, match="must have shape"):
        client.infer("swin_digits", [bad])


@pytest.mark.parametrize("in_flight", ["1", "2"])
def test_sigterm_under_load_loses_nothing(digits_artifact, in_flight):
    """Requests in flight when SIGTERM arrives are all answered, readiness fails at once, the process exits; with
    one batch computing at a time and with two.

    One image per batch on one thread makes the 24 x 8 images take a good fraction of a second, so the signal
    lands while most of them are still queued (checked: some answers must come after the signal).
    """
    server = Server(digits_artifact, "--max-batch-size", "1", "--threads", "1", "--max-images", "8", "--backend",
                    "onnxruntime", "--batches-in-flight", in_flight)
    server.wait_ready()
    files = [("file", (f"{d}.png", EXAMPLES[d], "image/png")) for d in range(8)]

    def one(_: int) -> tuple[int, float]:
        with httpx.Client(timeout=60) as c:
            status = c.post(f"{server.url}/classify", files=files).status_code
            return status, time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(one, i) for i in range(24)]
        time.sleep(0.3)  # every request is connected and queued by now
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        readiness = httpx.get(f"{server.url}/readyz", timeout=5).status_code  # within the drain grace
        results = [f.result(timeout=90) for f in futures]
    code = server.stop()
    output = server.output()
    assert readiness == 503, "readiness must fail as soon as the signal arrives"
    assert [status for status, _ in results] == [200] * 24, output
    assert any(done > signalled for _, done in results), "the signal came after all work was done: test is void"
    # uvicorn re-raises the signal once shut down, so the exit status is the signal's, after a complete drain
    assert code in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output


def test_missing_and_corrupt_artifact_fail_at_start(tmp_path, digits_artifact):
    result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "is not a directory" in result.stderr and "Traceback" not in result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in digits_artifact.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx").write_bytes(b"garbage")
    result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "has 7 bytes where its export wrote" in result.stderr
    assert "Traceback" not in result.stderr
    write_manifest(broken, read_manifest(broken))  # the garbage recorded as the artifact's model: the runtime refuses
    result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "onnxruntime cannot load" in result.stderr
    assert "Traceback" not in result.stderr

    (broken / "vitserve.json").write_text(json.dumps({"format_version": 99}))
    result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "format_version 99" in result.stderr


def test_grpc_under_sigterm_loses_nothing(digits_artifact):
    """`--grpc-port`: gRPC calls in flight when the shutdown begins are all answered: the gRPC server stops taking
    new calls and lets the running ones finish before the batcher stops. No drain grace here, so the shutdown
    starts with the signal, while most calls are still queued (checked: some answers come after the signal)."""
    import tritonclient.grpc as grpcclient

    grpc_port = free_port()
    server = Server(digits_artifact, "--grpc-port", str(grpc_port), "--max-batch-size", "1", "--threads", "1",
                    "--backend", "onnxruntime", "--max-images", "8", "--drain-grace-s", "0")
    server.wait_ready()
    images = np.array([EXAMPLES[d] for d in range(8)], dtype=np.object_)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert client.is_server_ready()

    def one(_: int) -> tuple[list[int], float]:
        tensor = grpcclient.InferInput("images", [8], "BYTES")
        tensor.set_data_from_numpy(images)
        logits = client.infer("swin_digits", [tensor], client_timeout=60).as_numpy("logits")
        return list(logits.argmax(1)), time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(one, i) for i in range(24)]
        time.sleep(0.3)  # every call is sent and queued by now
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=90) for f in futures]
    client.close()
    code = server.stop()
    output = server.output()
    assert [digits for digits, _ in results] == [list(range(8))] * 24, output
    assert any(done > signalled for _, done in results), "the signal came after all work was done: test is void"
    assert code in (0, -signal.SIGTERM), output


def test_ports_in_use_fail_at_start(digits_artifact):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flag in ("--port", "--grpc-port"):
            result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(digits_artifact), flag, port],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 1, result.stderr
            assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
            assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "vitserve", "serve", str(digits_artifact), "--port", "8123",
                             "--grpc-port", "8123"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "give them different ports" in result.stderr
