"""Every route and every client error, in process (ASGI app with its lifespan), on the shipped swin_digits model."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import ROOT
from tests.crafted_png import png_header_only
from vitserve.errors import VitServeError
from vitserve.models.catalogue import SPECS
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes.onnxruntime import OnnxRuntime
from vitserve.server.app import create_app
from vitserve.server.settings import Settings

EXAMPLES = {d: (ROOT / "examples" / f"digit_{d}.png").read_bytes() for d in range(10)}


# The server's routes and protocols, on onnxruntime (whose answers the tests compare with); how --backend auto
# chooses: tests/runtimes/test_choose.py
@pytest.fixture(scope="module")
def client(digits_artifact):
    with TestClient(create_app(Settings(artifact=digits_artifact, max_images=8, backend="onnxruntime"))) as c:
        yield c


def _client(artifact, **settings) -> TestClient:
    return TestClient(create_app(Settings(artifact=artifact, **{"backend": "onnxruntime", **settings})))


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _error(response, status: int, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert fragment.lower() in response.json()["error"].lower()


# ---- health, metrics, docs ---------------------------------------------------------------------------------


def test_health_ready_metrics_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    backend, proof = "onnxruntime CPUExecutionProvider", "passed in onnxruntime CPUExecutionProvider"
    assert client.get("/readyz").json() == {
        "status": "ready", "model": "swin_digits", "backend": backend, "proof": proof,
        "models": [{"name": "swin_digits", "version": 1, "backend": backend, "proof": proof}]}
    client.post("/classify", files={"file": ("3.png", EXAMPLES[3], "image/png")})
    metrics = client.get("/metrics").text
    # the batch of that request has finished
    assert 'vitserve_batches_computing{model="swin_digits",version="1"} 0.0' in metrics
    for name in ("vitserve_requests_total", "vitserve_queue_depth", "vitserve_batch_size_bucket",
                 "vitserve_decode_seconds_bucket", "vitserve_queue_wait_seconds_bucket",
                 "vitserve_inference_seconds_bucket", "vitserve_request_seconds_bucket"):
        assert name in metrics
    assert 'model="swin_digits",route="/classify",status="200",version="1"' in metrics
    assert client.get("/docs").status_code == 200
    assert "/classify" in client.get("/openapi.json").json()["paths"]


def test_model_is_warmed_before_ready(digits_artifact):
    with _client(digits_artifact, max_batch_size=12) as c:
        assert c.app.state.repository.only.warmed_batch_sizes == [1, 2, 4, 8, 12]


# ---- /classify -----------------------------------------------------------------------------------------------


def test_classify_multipart_many(client):
    files = [("file", (f"{d}.png", EXAMPLES[d], "image/png")) for d in (0, 4, 9)]
    body = client.post("/classify?top_k=3", files=files).json()
    assert body["model"] == "swin_digits"
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["0", "4", "9"]
    assert [r["image"] for r in body["results"]] == ["0.png", "4.png", "9.png"]
    first = body["results"][0]["predictions"]
    assert len(first) == 3 and first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "total"}


def test_classify_raw_body(client):
    body = client.post("/classify?top_k=1", content=EXAMPLES[6], headers={"content-type": "image/png"}).json()
    assert body["results"][0]["predictions"][0]["label"] == "6"


def test_scores_are_softmax_of_the_model(client, digits_artifact):
    backend = OnnxRuntime(digits_artifact)
    x = transform(decode_image(EXAMPLES[2]), backend.manifest.preprocess)[None]
    logits = backend(x)[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    got = client.post("/classify?top_k=10", content=EXAMPLES[2], headers={"content-type": "image/png"}).json()
    for p in got["results"][0]["predictions"]:
        assert abs(p["score"] - probs[p["index"]]) < 1e-6


@pytest.mark.parametrize("make", [
    lambda img: _encode(img.convert("L"), "PNG"),
    lambda img: _encode(img.convert("P"), "PNG"),
    lambda img: _encode(img.convert("RGBA"), "PNG"),
    lambda img: _encode(img.convert("CMYK"), "JPEG"),
    lambda img: _encode(Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257), "PNG"),
    lambda img: _encode(img, "GIF", save_all=True, append_images=[img.rotate(90)]),
    lambda img: _encode(img, "WEBP"),
    lambda img: _encode(img, "BMP"),
], ids=["grayscale", "palette", "rgba", "cmyk", "16-bit", "animated-gif", "webp", "bmp"])
def test_classify_image_modes(client, make):
    data = make(Image.open(io.BytesIO(EXAMPLES[7])))
    response = client.post("/classify?top_k=1", content=data, headers={"content-type": "image/x-any"})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"][0]["label"] == "7"


def test_exif_orientation_is_applied(client):
    upright = Image.open(io.BytesIO(EXAMPLES[4])).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 8  # the viewer rotates 90 degrees counter-clockwise
    stored = upright.rotate(-90, expand=True)  # what a camera would store for that orientation
    data = _encode(stored, "JPEG", exif=exif, quality=100)
    body = client.post("/classify?top_k=1", content=data, headers={"content-type": "image/jpeg"}).json()
    assert body["results"][0]["predictions"][0]["label"] == "4"


@pytest.mark.parametrize("content,ctype,status,fragment", [
    (b"hello", "text/plain", 415, "unsupported content type"),
    (b"\x89PNG", None, 415, "unsupported content type"),
    (b"", "image/png", 400, "empty image"),
    (b"this is not an image", "image/png", 400, "not a readable image"),
    (EXAMPLES[1][: len(EXAMPLES[1]) // 2], "image/png", 400, "not a readable image"),
    (png_header_only(30000, 30000), "image/png", 413, "pixels"),
])
def test_classify_bad_bodies(client, content, ctype, status, fragment):
    headers = {"content-type": ctype} if ctype else {}
    _error(client.post("/classify", content=content, headers=headers), status, fragment)


def test_classify_multipart_errors(client):
    _error(client.post("/classify", data={"other": "x"}, files={"other_file": ("a.png", EXAMPLES[1])}), 400,
           "no images")
    _error(client.post("/classify", data={"file": "just text"}, files={"x": ("a.png", EXAMPLES[1])}), 400,
           "must carry files")
    too_many = [("file", (f"{i}.png", EXAMPLES[1], "image/png")) for i in range(9)]
    _error(client.post("/classify", files=too_many), 400, "limit is 8")
    _error(client.post("/classify?top_k=0", content=EXAMPLES[1], headers={"content-type": "image/png"}), 400,
           "top_k")


def test_limits(digits_artifact):
    with _client(digits_artifact, max_body_mb=0.002, max_pixels=500) as c:
        _error(c.post("/classify", content=b"x" * 5000, headers={"content-type": "image/png"}), 413, "limit")
        _error(c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}), 413, "pixels")

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(10):
                yield b"x" * 1000

        _error(c.post("/classify", content=chunks(), headers={"content-type": "image/png"}), 413, "limit")


def test_fast_jpeg_decodes_smaller_and_classifies_the_same(digits_artifact, monkeypatch):
    import vitserve.server.service as service_module

    decoded = []

    def recording(data, max_pixels=None, min_side=None):
        image = decode_image(data, max_pixels, min_side)
        decoded.append(image.size)
        return image

    monkeypatch.setattr(service_module, "decode_image", recording)
    big = _encode(Image.open(io.BytesIO(EXAMPLES[3])).convert("RGB").resize((1024, 1024)), "JPEG", quality=95)
    answers = {}
    for fast in (False, True):
        with _client(digits_artifact, fast_jpeg=fast) as c:
            response = c.post("/classify", content=big, headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
            answers[fast] = response.json()["results"][0]["predictions"][0]
    # swin_digits resizes to 32: the fast decode keeps 128 x 128 (1/8), at least twice that
    assert decoded == [(1024, 1024), (128, 128)]
    assert answers[False]["label"] == answers[True]["label"] == "3"


def test_api_key(digits_artifact):
    with _client(digits_artifact, api_key="s3cret") as c:
        headers = {"content-type": "image/png"}
        _error(c.post("/classify", content=EXAMPLES[1], headers=headers), 401, "api key")
        _error(c.post("/classify", content=EXAMPLES[1], headers={**headers, "x-api-key": "wrong"}), 401)
        assert c.post("/classify", content=EXAMPLES[1], headers={**headers, "x-api-key": "s3cret"}).status_code == 200
        assert c.post("/classify", content=EXAMPLES[1],
                      headers={**headers, "authorization": "Bearer s3cret"}).status_code == 200
        _error(c.post("/v2/models/swin_digits/infer", json={}), 401)
        assert c.get("/readyz").status_code == 200 and c.get("/v2/health/ready").status_code == 200


# ---- overload, deadlines, backend failures ---------------------------------------------------------------------


def test_queue_full_is_503_with_retry_after(digits_artifact):
    with _client(digits_artifact, max_queue=1, max_images=4) as c:
        files = [("file", (f"{i}.png", EXAMPLES[i], "image/png")) for i in range(2)]
        response = c.post("/classify", files=files)
        _error(response, 503, "queue is full")
        assert response.headers["retry-after"] == "1"


def test_admission_limit_refuses_before_reading(digits_artifact):
    """max_queue inference requests in progress: the next gets 503 from the middleware; probes still answer."""
    with _client(digits_artifact, max_queue=3) as c:
        repository = c.app.state.repository
        repository.pending = 3  # three requests in progress
        for path in ("/classify", "/v2/models/swin_digits/infer", "/v2/models/swin_digits/versions/1/infer"):
            response = c.post(path, content=b"never read", headers={"content-type": "image/png"})
            _error(response, 503, "3 requests are in progress")
            assert response.headers["retry-after"] == "1"
        assert c.get("/readyz").status_code == 200 and c.get("/healthz").status_code == 200
        assert 'route="/classify",status="503"' in c.get("/metrics").text
        repository.pending = 2
        assert c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}).status_code == 200
        assert repository.pending == 2  # the request was counted while in progress, and released


def test_deadline_is_504(digits_artifact):
    with _client(digits_artifact, timeout_ms=50) as c:
        batcher = c.app.state.repository.only.batcher
        real = batcher.infer
        batcher.infer = lambda x: (time.sleep(0.3), real(x))[1]
        _error(c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}), 504, "within 50 ms")
        batcher.infer = real
        time.sleep(0.4)  # the slow batch finishes in the background; its answer is discarded
        c.app.state.repository.only.settings.timeout_ms = 10_000  # time to spare for the next
        assert c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}).status_code == 200


def test_an_answer_that_resumes_after_the_deadline_is_504(digits_artifact):
    """The batch answered in time, but the request's coroutine resumed only after its deadline (an event loop busy
    elsewhere): 504 all the same, so that no 200 ever leaves the server later than its timeout after arrival."""
    with _client(digits_artifact, timeout_ms=200) as c:
        service = c.app.state.repository.only
        real = service.batcher.submit

        async def resumes_late(images, timeout_s):
            answer = await real(images, timeout_s)
            await asyncio.sleep(timeout_s + 0.05)
            return answer

        service.batcher.submit = resumes_late
        _error(c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}), 504, "within 200 ms")
        service.batcher.submit = real
        service.settings.timeout_ms = 10_000  # time to spare for the next
        assert c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}).status_code == 200


def test_server_timing_header(client, digits_artifact):
    """Every answer carries the server's own time for it (from arrival to the response's start), which a client
    cannot measure itself: its clock also counts the network and a connection's wait to be accepted. Answers
    refused before routing (413 by the declared length, 503 at the admission limit) carry it too."""
    started = time.perf_counter()
    response = client.post("/classify", content=EXAMPLES[5], headers={"content-type": "image/png"})
    round_trip_ms = (time.perf_counter() - started) * 1000
    served_ms = float(re.fullmatch(r"app;dur=(\d+\.\d)", response.headers["server-timing"]).group(1))
    assert response.status_code == 200 and 0 < served_ms <= round_trip_ms
    answers = [client.post("/classify", content=b"", headers={"content-type": "image/png"}), client.get("/healthz")]
    with _client(digits_artifact, max_body_mb=0.001, max_queue=1) as c:
        answers.append(c.post("/classify", content=EXAMPLES[5], headers={"content-type": "image/png"}))
        c.app.state.repository.pending = 1
        answers.append(c.post("/classify", content=b"x", headers={"content-type": "image/png"}))
        c.app.state.repository.pending = 0
    assert [a.status_code for a in answers] == [400, 200, 413, 503]
    assert all(re.fullmatch(r"app;dur=\d+\.\d", a.headers["server-timing"]) for a in answers)


def test_request_ids_and_access_log(digits_artifact, caplog):
    """Every answer carries an X-Request-ID: the client's when it looks like an identifier, else a new one; with
    access_log each request is one log line naming it, refusals before routing included."""
    import logging

    caplog.set_level(logging.INFO, logger="vitserve.access")
    with _client(digits_artifact, access_log=True, max_body_mb=0.01) as c:
        mine = c.post("/classify?top_k=2", content=EXAMPLES[5], headers={"content-type": "image/png",
                                                                        "x-request-id": "order-17/a"})
        made = [c.get("/healthz"), c.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})]
        too_big = c.post("/classify", content=b"x" * 20_000, headers={"content-type": "image/png"})
    assert mine.headers["x-request-id"] == "order-17/a"
    ids = [a.headers["x-request-id"] for a in made]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    lines = [r.getMessage() for r in caplog.records if r.name == "vitserve.access"]
    assert len(lines) == 4
    assert re.fullmatch(r"\S+ POST /classify\?top_k=2 200 \d+\.\d ms id=order-17/a", lines[0]), lines[0]
    assert lines[1].endswith(f"id={ids[0]}") and " GET /healthz 200 " in lines[1]
    assert too_big.status_code == 413
    assert re.fullmatch(rf"\S+ POST /classify 413 \d+\.\d ms id={too_big.headers['x-request-id']}", lines[3])
    caplog.clear()
    with _client(digits_artifact) as c:  # off by default
        c.get("/healthz")
    assert not [r for r in caplog.records if r.name == "vitserve.access"]


def test_backend_failure_is_500_and_server_keeps_serving(digits_artifact):
    with _client(digits_artifact) as c:
        batcher = c.app.state.repository.only.batcher
        real = batcher.infer

        def broken(x):
            batcher.infer = real  # fails once
            raise RuntimeError("GPU fell off the bus")

        batcher.infer = broken
        _error(c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}), 500, "fell off")
        assert c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"}).status_code == 200


# ---- KServe V2 ---------------------------------------------------------------------------------------------------


def _pixels(*digits: int) -> np.ndarray:
    """Preprocessed examples, as a client that preprocesses itself would send them."""
    return np.stack([transform(decode_image(EXAMPLES[d]), SPECS["swin_digits"].preprocess) for d in digits])


def test_v2_metadata_and_health(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification",
                                                         "model_repository"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/swin_digits").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}
    assert meta["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}
    assert client.get("/v2/models/swin_digits/versions/1").json() == meta
    assert client.get("/v2/models/swin_digits/ready").json()["ready"] is True
    _error(client.get("/v2/models/resnet50"), 404, "unknown model")
    _error(client.get("/v2/models/swin_digits/versions/2/ready"), 404, "no version '2' loaded; loaded: 1")


def test_v2_infer_json_fp32(client, digits_artifact):
    x = _pixels(3, 8)
    request = {"id": "abc", "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": list(x.shape),
                                        "data": x.ravel().tolist()}]}
    body = client.post("/v2/models/swin_digits/infer", json=request).json()
    assert body["id"] == "abc" and body["model_name"] == "swin_digits"
    out = body["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [2, 10] and out["datatype"] == "FP32"
    expected = OnnxRuntime(digits_artifact)(x)
    assert np.abs(np.array(out["data"]).reshape(2, 10) - expected).max() < 1e-5


def test_v2_infer_bytes_base64_with_classification(client):
    request = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                           "data": [base64.b64encode(EXAMPLES[d]).decode() for d in (5, 0)]}],
               "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}
    out = client.post("/v2/models/swin_digits/infer", json=request).json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["shape"] == [2, 2]
    best = [s.split(":") for s in out["data"][::2]]
    assert [(idx, label) for _, idx, label in best] == [("5", "5"), ("0", "0")]


def test_v2_infer_binary_request_and_response(client, digits_artifact):
    x = _pixels(1, 2, 3)
    head = {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes}}],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}
    head_bytes = json.dumps(head).encode()
    response = client.post("/v2/models/swin_digits/infer", content=head_bytes + x.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(head_bytes)),
                                    "content-type": "application/octet-stream"})
    n = int(response.headers["inference-header-content-length"])
    meta = json.loads(response.content[:n])
    logits = np.frombuffer(response.content[n:], dtype="<f4").reshape(meta["outputs"][0]["shape"])
    assert np.abs(logits - OnnxRuntime(digits_artifact)(x)).max() < 1e-5


def _fp32(shape, data=None, datatype="FP32", name="pixel_values"):
    count = int(np.prod(shape)) if shape and all(isinstance(d, int) and d >= 0 for d in shape) else 1
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                        "data": data if data is not None else [0.0] * count}]}


@pytest.mark.parametrize("request_body,fragment", [
    (_fp32([1, 3, 32, 31]), "must have shape"),
    (_fp32([1, 3, 32, 32], datatype="INT64"), "must be FP32"),
    (_fp32([1, 3, 32, 32], name="input0"), "unknown input"),
    (_fp32([1, 3, 32, 32], data=[0.0] * 10), "needs 3072 values"),
    (_fp32([1, 3, 32, 32], data=["a"] * 3072), "not a list of numbers"),
    (_fp32([1, 3, 32, 32], data=[float("nan")] + [0.0] * 3071), "nan"),
    (_fp32([1, 3, 32, 32], data=[float("inf")] + [0.0] * 3071), "infinite"),
    (_fp32([9, 3, 32, 32]), "limit is 8"),
    (_fp32(["a", 3, 32, 32]), "shape must be"),
    ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["%%%not base64%%%"]}]},
     "not valid base64"),
    ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}, "holds 1"),
    ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}]},
     "not a readable image"),
    ({"inputs": []}, "exactly one input"),
    ({"nothing": 1}, "'inputs' list"),
    ({**_fp32([1, 3, 32, 32]), "outputs": [{"name": "probs"}]}, "unknown output"),
    ({**_fp32([1, 3, 32, 32]), "outputs": [{"name": "logits", "parameters": {"classification": 0}}]},
     "positive integer"),
])
def test_v2_bad_requests(client, request_body, fragment):
    body = json.dumps(request_body).encode()  # json.dumps writes NaN / Infinity literals, as some clients do
    response = client.post("/v2/models/swin_digits/infer", content=body, headers={"content-type": "application/json"})
    _error(response, 400, fragment)


def test_v2_bad_framing(client):
    _error(client.post("/v2/models/swin_digits/infer", content=b"{not json"), 400, "not valid json")
    _error(client.post("/v2/models/swin_digits/infer", content=b"{}",
                       headers={"Inference-Header-Content-Length": "99"}), 400, "does not fit")
    head = b'{"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1,3,32,32], ' \
           b'"parameters": {"binary_data_size": 12288}}]}'
    _error(client.post("/v2/models/swin_digits/infer", content=head + b"\0" * 100,
                       headers={"Inference-Header-Content-Length": str(len(head))}), 400, "binary_data_size")


def test_draining_fails_readiness_but_serves_what_arrives(digits_artifact):
    with _client(digits_artifact) as c:
        c.app.state.repository.draining = True
        assert c.get("/readyz").status_code == 503 and c.get("/readyz").json()["status"] == "draining"
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/healthz").status_code == 200
        response = c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"})
        assert response.status_code == 200, "a request that reached the server is not dropped while draining"
        c.app.state.repository.draining = False


def test_stopped_batcher_refuses_with_503(digits_artifact):
    """Once the lifespan has stopped the batcher (the end of a shutdown), inference answers 503 + Retry-After."""
    with _client(digits_artifact) as c:
        c.portal.call(c.app.state.repository.only.batcher.stop)
        response = c.post("/classify", content=EXAMPLES[1], headers={"content-type": "image/png"})
        _error(response, 503, "shutting down")
        assert "retry-after" in response.headers


def test_openapi_names_the_served_model(digits_artifact):
    with _client(digits_artifact) as c:
        paths = c.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert next(p for p in infer["parameters"] if p["name"] == "name")["schema"]["enum"] == ["swin_digits"]
    tensor = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert tensor["properties"]["name"]["enum"] == ["pixel_values", "images"]
    assert "/classify" in paths and "/readyz" in paths


def test_a_port_that_cannot_be_listened_on_fails_before_the_model_loads():
    """`vitserve serve` checks its ports first (server/run.py), so a taken port fails at once with the reason."""
    import socket

    from vitserve.server.run import check_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(VitServeError, match=f"cannot listen on 127.0.0.1:{port}: .*another process uses it"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", None)  # gRPC off: nothing to check
