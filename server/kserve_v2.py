"""KServe V2 / Open Inference Protocol (REST) request decoding and response encoding, with Triton's binary tensor
extension and classification extension, as `tritonclient.http` speaks them.

A request carries exactly one of two inputs:
  - `pixel_values` (the manifest's input name), FP32 [N, C, H, W]: images already preprocessed;
  - `images`, BYTES [N]: encoded image files (PNG, JPEG, ...), preprocessed by the server. In JSON, each element
    is base64 text; in the binary extension, each element is a 4-byte little-endian length and the bytes.
The output is `logits`, FP32 [N, classes]. Asking for it with `"classification": k` returns instead a BYTES
[N, k] tensor of "value:index:label" strings, best first (Triton's format: the value is the logit).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitserve import runtimes
from vitserve.artifact import Manifest
from vitserve.errors import RequestError

IMAGES_INPUT = "images"
HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferRequest:
    id: str | None
    pixel_values: np.ndarray | None  # N, C, H, W float32
    images: list[bytes] | None  # encoded files
    outputs: list[dict[str, Any]]  # requested outputs (name, parameters)
    binary_output_default: bool

    @property
    def count(self) -> int:
        return len(self.pixel_values) if self.pixel_values is not None else len(self.images or [])


def model_metadata(name: str, versions: list[int], manifest: Manifest, backend: str) -> dict[str, Any]:
    """The V2 model metadata of a served model: its `versions` loaded, `backend` the name of the runtime that serves
    (onnxruntime, openvino, torch, tensorrt)."""
    return {
        "name": name,
        "versions": [str(v) for v in sorted(versions)],
        "platform": runtimes.info(backend).platform,
        "inputs": [
            {"name": manifest.input.name, "datatype": "FP32", "shape": list(manifest.input.shape)},
            {"name": IMAGES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": manifest.output.name, "datatype": "FP32", "shape": list(manifest.output.shape)}],
    }


def parse_request(body: bytes, header_length: str | None, manifest: Manifest, max_images: int) -> InferRequest:
    """Splits JSON header and binary tensors, and checks every input against the model. RequestError on misuse."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise RequestError(f"Inference-Header-Content-Length {header_length!r} does not fit a "
                               f"{len(body)}-byte body")
        head, binary = body[: int(header_length)], body[int(header_length):]
    else:
        head, binary = body, b""
    try:
        request = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request is not valid JSON: {e}") from e
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError("the request must be a JSON object with an 'inputs' list")
    inputs = request["inputs"]
    if len(inputs) != 1:
        raise RequestError(f"send exactly one input ('{manifest.input.name}' FP32 or '{IMAGES_INPUT}' BYTES), "
                           f"got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise RequestError("each input must be a JSON object")
    pixel_values, images = read_input(tensor, _binary_chunk(tensor, binary), manifest, max_images)
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RequestError("'outputs' must be a list of objects")
    check_outputs(outputs, manifest)
    params = _parameters(request, "request")
    request_id = request.get("id")
    return InferRequest(str(request_id) if request_id is not None else None, pixel_values, images, outputs,
                        bool(params.get("binary_data_output", False)))


def read_input(tensor: dict[str, Any], chunk: bytes | None, manifest: Manifest,
               max_images: int) -> tuple[np.ndarray | None, list[bytes] | None]:
    """(pixel_values, None) or (None, encoded images) from one input tensor: a dict with name, datatype and shape,
    its values in `chunk` (the raw little-endian tensor; a BYTES tensor length-prefixed) or else in its "data"."""
    name = tensor.get("name")
    if name == manifest.input.name:
        return _fp32_input(tensor, chunk, manifest, max_images), None
    if name == IMAGES_INPUT:
        return None, _bytes_input(tensor, chunk, max_images)
    raise RequestError(f"unknown input {name!r}; this model takes '{manifest.input.name}' (FP32 "
                       f"{list(manifest.input.shape)}) or '{IMAGES_INPUT}' (BYTES [-1])")


def check_outputs(outputs: list[dict[str, Any]], manifest: Manifest) -> None:
    """Each requested output is the model's, with a positive integer `classification` parameter or none."""
    for output in outputs:
        if output.get("name") != manifest.output.name:
            raise RequestError(f"unknown output {output.get('name')!r}; this model has '{manifest.output.name}'")
        k = _parameters(output, "output").get("classification")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise RequestError(f"classification must be a positive integer, got {k!r}")


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(f"the {where}'s 'parameters' must be a JSON object, got {type(params).__name__}")
    return params


def _binary_chunk(tensor: dict[str, Any], binary: bytes) -> bytes | None:
    size = _parameters(tensor, "input").get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise RequestError(f"input {tensor.get('name')!r} has neither 'data' nor binary_data_size")
        return None
    if not isinstance(size, int) or size < 0 or size != len(binary):
        raise RequestError(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the JSON header")
    return binary


def _shape(tensor: dict[str, Any]) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise RequestError(f"input shape must be a list of non-negative integers, got {shape!r}")
    return shape


def _fp32_input(tensor: dict[str, Any], chunk: bytes | None, manifest: Manifest, max_images: int) -> np.ndarray:
    if tensor.get("datatype") != "FP32":
        raise RequestError(f"input '{manifest.input.name}' must be FP32, got {tensor.get('datatype')!r}")
    shape = _shape(tensor)
    expected = list(manifest.input.shape[1:])
    if len(shape) != 4 or shape[1:] != expected or shape[0] < 1:
        raise RequestError(f"input '{manifest.input.name}' must have shape [N, {', '.join(map(str, expected))}] "
                           f"with N >= 1, got {shape}")
    if shape[0] > max_images:
        raise RequestError(f"{shape[0]} images in one request; the limit is {max_images}")
    count = math.prod(shape)
    if chunk is not None:
        if len(chunk) != 4 * count:
            raise RequestError(f"shape {shape} needs {4 * count} bytes of FP32 data, got {len(chunk)}")
        array = np.frombuffer(chunk, dtype="<f4")
    else:
        try:
            array = np.asarray(tensor["data"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise RequestError(f"input data is not a list of numbers: {e}") from e
        if array.size != count:
            raise RequestError(f"shape {shape} needs {count} values, got {array.size}")
    array = array.reshape(shape).astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise RequestError("input contains NaN or infinite values")
    return array


def _bytes_input(tensor: dict[str, Any], chunk: bytes | None, max_images: int) -> list[bytes]:
    if tensor.get("datatype") != "BYTES":
        raise RequestError(f"input '{IMAGES_INPUT}' must be BYTES, got {tensor.get('datatype')!r}")
    shape = _shape(tensor)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise RequestError(f"input '{IMAGES_INPUT}' must have shape [N] or [N, 1] with N >= 1, got {shape}")
    if shape[0] > max_images:
        raise RequestError(f"{shape[0]} images in one request; the limit is {max_images}")
    elements = _split_bytes(chunk) if chunk is not None else _base64_elements(tensor["data"])
    if len(elements) != shape[0]:
        raise RequestError(f"shape {shape} says {shape[0]} images, the data holds {len(elements)}")
    return elements


def serialize_bytes(elements: list[bytes]) -> bytes:
    """Triton's serialized BYTES tensor (the inverse of _split_bytes)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def classification(logits: np.ndarray, k: int, labels: list[str]) -> list[str]:
    """The classification extension's [N, k] "value:index:label" strings, best first, flattened row by row."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [f"{logits[n, i]:f}:{i}:{labels[i]}" for n, idx in enumerate(order) for i in idx]


def _split_bytes(chunk: bytes) -> list[bytes]:
    """Triton's serialized BYTES tensor: per element a uint32 little-endian length, then the bytes."""
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise RequestError("truncated BYTES tensor: a length prefix is cut off")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise RequestError("truncated BYTES tensor: an element is shorter than its length prefix")
        elements.append(chunk[offset : offset + length])
        offset += length
    return elements


def _base64_elements(data: Any) -> list[bytes]:
    flat = data if isinstance(data, list) else [data]
    if flat and all(isinstance(d, list) for d in flat):  # [[a], [b]] for shape [N, 1]
        flat = [x for row in flat for x in row]
    out = []
    for i, element in enumerate(flat):
        if not isinstance(element, str):
            raise RequestError(f"'{IMAGES_INPUT}' element {i} must be a base64 string in JSON")
        try:
            out.append(base64.b64decode(element, validate=True))
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"'{IMAGES_INPUT}' element {i} is not valid base64: {e}") from e
    return out


def encode_response(
    request: InferRequest, manifest: Manifest, logits: np.ndarray, labels: list[str], served: tuple[str, int]
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is pure JSON); `served`: the model's name and version."""
    wanted = request.outputs or [{"name": manifest.output.name}]
    outputs, blobs = [], []
    for requested in wanted:
        params = _parameters(requested, "output")
        binary = bool(params.get("binary_data", request.binary_output_default))
        k = params.get("classification")
        if k is not None:
            k = min(k, logits.shape[1])
            strings = classification(logits, k, labels)
            tensor = {"name": manifest.output.name, "datatype": "BYTES", "shape": [len(logits), k]}
            if binary:
                blob = serialize_bytes([s.encode() for s in strings])
            else:
                tensor["data"] = strings
        else:
            tensor = {"name": manifest.output.name, "datatype": "FP32", "shape": list(logits.shape)}
            if binary:
                blob = np.ascontiguousarray(logits, dtype="<f4").tobytes()
            else:
                tensor["data"] = logits.astype(np.float32).ravel().tolist()
        if binary:
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        outputs.append(tensor)
    response: dict[str, Any] = {"model_name": served[0], "model_version": str(served[1]), "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    head = json.dumps(response).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
