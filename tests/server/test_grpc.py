"""KServe V2 over gRPC (`--grpc-port`): the official tritonclient.grpc client, raw protocol messages, errors, limits
and shutdown, on the shipped swin_digits model. The app runs in process (its lifespan starts the gRPC server on a
free port); one test runs `vitserve serve` itself."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from fastapi.testclient import TestClient
from google.protobuf import descriptor_pool
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT
from tests.server.test_app import EXAMPLES
from vitserve.preprocess import decode_image, transform
from vitserve.runtimes.onnxruntime import OnnxRuntime
from vitserve.server import grpc_health_pb2 as health_pb
from vitserve.server import open_inference_pb2 as pb
from vitserve.server.app import create_app
from vitserve.server.settings import Settings

SERVICE = "/inference.GRPCInferenceService/"


def _start(artifact, **settings):
    """(TestClient, tritonclient.grpc client) for an app serving gRPC on a free port."""
    settings = {"backend": "onnxruntime", **settings}  # the answers compared are onnxruntime's
    client = TestClient(create_app(Settings(artifact=artifact, grpc_port=0, **settings)))
    client.__enter__()
    return client, tg.InferenceServerClient(f"127.0.0.1:{client.app.state.grpc_port}")


@pytest.fixture(scope="module")
def served(digits_artifact):
    client, triton = _start(digits_artifact, max_images=8)
    yield client, triton
    triton.close()
    client.__exit__(None, None, None)


def _raw_call(port: int, method: str, request, response_type, metadata=()):
    """A call with vitserve's own message classes (no tritonclient): (response, initial metadata). `method`: a
    name of the V2 service, or a full path; `response_type` None: bytes in and out, as they go over the wire."""
    path = method if method.startswith("/") else SERVICE + method
    serialize = (lambda m: m) if response_type is None else (lambda m: m.SerializeToString())
    deserialize = (lambda b: b) if response_type is None else response_type.FromString
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(path, request_serializer=serialize, response_deserializer=deserialize)
        response, rpc = call.with_call(request, metadata=metadata, timeout=30)
        return response, dict(rpc.initial_metadata())


def _images_input(blobs: list[bytes]) -> tg.InferInput:
    tensor = tg.InferInput("images", [len(blobs)], "BYTES")
    tensor.set_data_from_numpy(np.array(blobs, dtype=object))
    return tensor


def _expected_logits(artifact, blobs: list[bytes]) -> np.ndarray:
    backend = OnnxRuntime(artifact, threads=1)
    pixels = np.stack([transform(decode_image(b), backend.manifest.preprocess) for b in blobs])
    return backend(pixels)


def _status(excinfo) -> str:
    return excinfo.value.status()


# ---- tritonclient.grpc ---------------------------------------------------------------------------------------


def test_health_and_metadata(served):
    _, triton = served
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("swin_digits") and triton.is_model_ready("swin_digits", "1")
    server = triton.get_server_metadata(as_json=True)
    assert server["name"] == "vitserve" and "classification" in server["extensions"]
    model = triton.get_model_metadata("swin_digits", as_json=True)
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
        ("pixel_values", "FP32", ["-1", "3", "32", "32"]), ("images", "BYTES", ["-1"])]
    assert [(t["name"], t["datatype"]) for t in model["outputs"]] == [("logits", "FP32")]
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("resnet50")
    assert _status(e) == "StatusCode.NOT_FOUND" and "swin_digits" in e.value.message()
    assert not triton.is_model_ready("swin_digits", "2")  # a version not loaded is not ready; its metadata: unknown
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata("swin_digits", "2")
    assert _status(e) == "StatusCode.NOT_FOUND" and "no version '2' loaded; loaded: 1" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.is_model_ready("resnet50")
    assert _status(e) == "StatusCode.NOT_FOUND"


def test_images_give_the_same_logits_as_the_backend(served, digits_artifact):
    _, triton = served
    blobs = [EXAMPLES[3], EXAMPLES[7], EXAMPLES[0]]
    result = triton.infer("swin_digits", [_images_input(blobs)], request_id="req-1")
    logits = result.as_numpy("logits")
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _expected_logits(digits_artifact, blobs), rtol=1e-5, atol=1e-5)
    assert list(logits.argmax(1)) == [3, 7, 0]
    assert result.get_response().id == "req-1"


def test_pixel_values_and_classification(served, digits_artifact):
    _, triton = served
    backend = OnnxRuntime(digits_artifact, threads=1)
    pixels = np.stack([transform(decode_image(EXAMPLES[d]), backend.manifest.preprocess) for d in (5, 9)])
    tensor = tg.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = triton.infer("swin_digits", [tensor], model_version="1",
                          outputs=[tg.InferRequestedOutput("logits", class_count=2)])
    top = result.as_numpy("logits")
    assert top.shape == (2, 2)
    expected = backend(pixels)
    for row, logits in zip(top, expected):
        best = np.argsort(-logits)[:2]
        value, index, label = row[0].decode().split(":")
        assert int(index) == best[0] and label == str(best[0]) and abs(float(value) - logits[best[0]]) < 1e-4
        assert int(row[1].decode().split(":")[1]) == best[1]


def test_grpc_and_rest_answer_alike(served):
    client, triton = served
    rest = client.post("/v2/models/swin_digits/infer", json={"inputs": [{
        "name": "images", "datatype": "BYTES", "shape": [1],
        "data": [base64.b64encode(EXAMPLES[4]).decode()]}]}).json()
    grpc_logits = triton.infer("swin_digits", [_images_input([EXAMPLES[4]])]).as_numpy("logits")
    np.testing.assert_allclose(grpc_logits.ravel(), np.array(rest["outputs"][0]["data"], dtype=np.float32),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("inputs", "fragment"), [
    ([("pixel_values", [1, 3, 64, 64], "FP32")], "must have shape [N, 3, 32, 32]"),
    ([("pixel_values", [1, 3, 32, 32], "FP16")], "must be FP32"),
    ([("image", [1], "BYTES")], "unknown input 'image'"),
    ([("images", [9], "BYTES")], "limit is 8"),
    ([("images", [1], "BYTES"), ("images", [1], "BYTES")], "exactly one input"),
])
def test_bad_inputs_are_invalid_argument(served, inputs, fragment):
    _, triton = served
    tensors = []
    for name, shape, datatype in inputs:
        tensor = tg.InferInput(name, shape, datatype)
        if datatype == "BYTES":
            tensor.set_data_from_numpy(np.array([EXAMPLES[1]] * shape[0], dtype=object))
        else:
            tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float16 if datatype == "FP16" else np.float32))
        tensors.append(tensor)
    with pytest.raises(InferenceServerException) as e:
        triton.infer("swin_digits", tensors)
    assert _status(e) == "StatusCode.INVALID_ARGUMENT"
    assert fragment in e.value.message()


def test_not_an_image_unknown_model_and_output(served):
    _, triton = served
    with pytest.raises(InferenceServerException) as e:
        triton.infer("swin_digits", [_images_input([b"not an image"])])
    assert _status(e) == "StatusCode.INVALID_ARGUMENT" and "not a readable image" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton.infer("swin_digits", [_images_input([EXAMPLES[1]])], model_version="2")
    assert _status(e) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as e:
        triton.infer("swin_digits", [_images_input([EXAMPLES[1]])], outputs=[tg.InferRequestedOutput("probs")])
    assert _status(e) == "StatusCode.INVALID_ARGUMENT" and "unknown output 'probs'" in e.value.message()


# ---- the protocol's other forms, with vitserve's own messages ----------------------------------------------


def test_typed_contents_instead_of_raw(served, digits_artifact):
    client, _ = served
    port = client.app.state.grpc_port
    request = pb.ModelInferRequest(model_name="swin_digits", id="typed")
    tensor = request.inputs.add(name="images", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([EXAMPLES[2], EXAMPLES[6]])
    response, metadata = _raw_call(port, "ModelInfer", request, pb.ModelInferResponse,
                                   metadata=(("x-request-id", "abc-123"),))
    assert response.id == "typed" and metadata["x-request-id"] == "abc-123"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("logits", "FP32", [2, 10])]
    logits = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(logits, _expected_logits(digits_artifact, [EXAMPLES[2], EXAMPLES[6]]),
                               rtol=1e-5, atol=1e-5)

    pixels = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    request = pb.ModelInferRequest(model_name="swin_digits")
    request.inputs.add(name="pixel_values", datatype="FP32", shape=[1, 3, 32, 32]).contents.fp32_contents.extend(
        pixels.ravel().tolist())
    response, metadata = _raw_call(port, "ModelInfer", request, pb.ModelInferResponse)
    assert len(metadata["x-request-id"]) == 32  # none given: a new one
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], dtype="<f4"),
                               OnnxRuntime(digits_artifact, threads=1)(pixels).ravel(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("build", "fragment"), [
    (lambda r: r.raw_input_contents.extend([b"\0" * 4, b"\0" * 4]), "one entry per input"),
    (lambda r: (r.raw_input_contents.append(b"\0" * 4),
                r.inputs[0].contents.bytes_contents.append(b"x")), "both contents and raw_input_contents"),
    (lambda r: r.raw_input_contents.append(b"\x05\0\0\0ab"), "truncated BYTES tensor"),
    (lambda r: r.inputs[0].contents.bytes_contents.extend([EXAMPLES[1], EXAMPLES[2]]), "the data holds 2"),
])
def test_malformed_raw_and_typed_contents(served, build, fragment):
    client, _ = served
    request = pb.ModelInferRequest(model_name="swin_digits")
    request.inputs.add(name="images", datatype="BYTES", shape=[1])
    build(request)
    with pytest.raises(grpc.RpcError) as e:
        _raw_call(client.app.state.grpc_port, "ModelInfer", request, pb.ModelInferResponse)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in e.value.details()


def test_metrics_count_grpc_calls(served):
    client, triton = served
    triton.infer("swin_digits", [_images_input([EXAMPLES[8]])])
    with pytest.raises(InferenceServerException):
        triton.infer("swin_digits", [_images_input([b"junk"])])
    metrics = client.get("/metrics").text
    ok = 'model="swin_digits",route="/inference.GRPCInferenceService/ModelInfer",status="OK",version="1"'
    bad = ('model="swin_digits",route="/inference.GRPCInferenceService/ModelInfer",status="INVALID_ARGUMENT",'
           'version="1"')
    assert f"vitserve_requests_total{{{ok}}}" in metrics and f"vitserve_requests_total{{{bad}}}" in metrics


# ---- limits, keys, batching ----------------------------------------------------------------------------------


def test_standard_health_check(served):
    """grpc.health.v1.Health/Check on the wire, written out by hand: request field 1 `service` (a string),
    response field 1 `status` (SERVING = 1, NOT_SERVING = 2), as Kubernetes' gRPC probes send and read them."""
    client, _ = served
    port = client.app.state.grpc_port
    check = "/grpc.health.v1.Health/Check"
    service_field = b"\x0a" + bytes([len(b"inference.GRPCInferenceService")]) + b"inference.GRPCInferenceService"
    assert _raw_call(port, check, b"", None)[0] == b"\x08\x01"  # the whole server: SERVING
    assert _raw_call(port, check, service_field, None)[0] == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as e:
        _raw_call(port, check, b"\x0a\x03foo", None)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "'foo'" in e.value.details()
    client.app.state.repository.draining = True
    try:
        assert _raw_call(port, check, b"", None)[0] == b"\x08\x02"  # NOT_SERVING
    finally:
        client.app.state.repository.draining = False


def test_admission_limit_and_draining(served):
    client, triton = served
    service = client.app.state.repository
    assert service.pending == 0  # every call so far, failed ones included, has been counted out again
    service.pending = service.settings.max_queue  # as if that many requests were in progress
    try:
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([EXAMPLES[1]])])
        assert _status(e) == "StatusCode.UNAVAILABLE" and "try again later" in e.value.message()
    finally:
        service.pending = 0
    service.draining = True  # what SIGTERM sets: readiness fails, calls are still answered
    try:
        assert not triton.is_server_ready() and not triton.is_model_ready("swin_digits")
        assert triton.infer("swin_digits", [_images_input([EXAMPLES[1]])]).as_numpy("logits").argmax() == 1
    finally:
        service.draining = False
    assert triton.is_server_ready()


def test_api_key_message_size_pixel_limits_and_access_log(digits_artifact, caplog):
    client, triton = _start(digits_artifact, api_key="s3cret", max_body_mb=0.05, max_pixels=32 * 32, access_log=True)
    caplog.set_level(logging.INFO, logger="vitserve.access")
    try:
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([EXAMPLES[1]])])
        assert _status(e) == "StatusCode.UNAUTHENTICATED"
        for headers in ({"authorization": "Bearer s3cret"}, {"x-api-key": "s3cret"}):
            with pytest.raises(InferenceServerException) as e:  # the key passes; the "image" does not
                triton.infer("swin_digits", [_images_input([b"\0"])], headers=headers)
            assert _status(e) == "StatusCode.INVALID_ARGUMENT" and "not a readable image" in e.value.message()
        key = {"x-api-key": "s3cret"}
        fits = tg.InferInput("pixel_values", [4, 3, 32, 32], "FP32")  # 48 KiB: under the limit of 51.2 KiB
        fits.set_data_from_numpy(np.zeros((4, 3, 32, 32), np.float32))
        assert triton.infer("swin_digits", [fits], headers=key).as_numpy("logits").shape == (4, 10)
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([b"\0" * 60_000])], headers=key)
        assert _status(e) == "StatusCode.RESOURCE_EXHAUSTED"
        buf = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buf, format="PNG")  # 4096 pixels, over the limit of 1024
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([buf.getvalue()])], headers=key)
        assert _status(e) == "StatusCode.RESOURCE_EXHAUSTED" and "pixels" in e.value.message()
        triton.infer("swin_digits", [fits], headers={**key, "x-request-id": "trace-7"})
        lines = [r.getMessage() for r in caplog.records if r.name == "vitserve.access"]
        assert any(" gRPC /inference.GRPCInferenceService/ModelInfer UNAUTHENTICATED " in line for line in lines)
        assert any(line.endswith("id=trace-7") and " OK " in line for line in lines), lines
    finally:
        triton.close()
        client.__exit__(None, None, None)


def test_concurrent_grpc_requests_share_batches(digits_artifact):
    client, triton = _start(digits_artifact, max_batch_size=8, max_wait_ms=200)
    try:
        results = [None] * 8

        def one(i):
            results[i] = triton.infer("swin_digits", [_images_input([EXAMPLES[i]])]).as_numpy("logits")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [int(r.argmax()) for r in results] == list(range(8))
        metrics = client.get("/metrics").text
        executed = {line.split("{")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
                    if line.startswith("vitserve_batch_size_count") or line.startswith("vitserve_batch_size_sum")}
        assert executed["vitserve_batch_size_sum"] == 8  # the warm-up bypasses the batcher
        assert executed["vitserve_batch_size_count"] < 8  # in fewer batches than requests
    finally:
        triton.close()
        client.__exit__(None, None, None)


@pytest.mark.parametrize("module", [pb, health_pb], ids=["open_inference", "grpc_health"])
def test_generated_modules_match_the_protos(module, tmp_path):
    """server/NAME_pb2.py is what scripts/gen_proto.py makes of server/NAME.proto today."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    proto = module.DESCRIPTOR.name
    assert proto in gen_proto.PROTOS
    fresh = importlib.util.spec_from_file_location(f"fresh_{module.__name__}", gen_proto.generate(proto, tmp_path))
    regenerated = importlib.util.module_from_spec(fresh)
    fresh.loader.exec_module(regenerated)  # in a pool of its own, beside the committed module's
    assert regenerated.DESCRIPTOR.serialized_pb == module.DESCRIPTOR.serialized_pb, "run: python scripts/gen_proto.py"
    assert module.DESCRIPTOR.pool is not descriptor_pool.Default()  # beside tritonclient's copy of the protocol


def test_deadline_and_backend_failure(digits_artifact):
    client, triton = _start(digits_artifact, timeout_ms=50)
    try:
        batcher = client.app.state.repository.only.batcher
        real = batcher.infer
        batcher.infer = lambda x: (time.sleep(0.3), real(x))[1]
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([EXAMPLES[1]])])
        assert _status(e) == "StatusCode.DEADLINE_EXCEEDED" and "within 50 ms" in e.value.message()
        batcher.infer = real
        time.sleep(0.4)  # the slow batch finishes in the background; its answer is discarded
        client.app.state.repository.only.settings.timeout_ms = 10_000

        def broken(x):
            batcher.infer = real  # fails once
            raise RuntimeError("GPU fell off the bus")

        batcher.infer = broken
        with pytest.raises(InferenceServerException) as e:
            triton.infer("swin_digits", [_images_input([EXAMPLES[1]])])
        assert _status(e) == "StatusCode.INTERNAL" and "fell off" in e.value.message()
        assert triton.infer("swin_digits", [_images_input([EXAMPLES[1]])]).as_numpy("logits").argmax() == 1
        assert client.app.state.repository.pending == 0
    finally:
        triton.close()
        client.__exit__(None, None, None)
