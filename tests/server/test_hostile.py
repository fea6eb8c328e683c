"""Hostile and unusual input against a real `vitserve serve` process over HTTP.

Every bad request must get a 4xx with a JSON {"error": ...} body; odd but valid images (CMYK, 16-bit, palette,
EXIF-rotated, animated, ...) must be classified like their plain version; nothing may produce a 5xx, and the
server must still answer a good request after all of it. The case count is printed for the README.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import struct

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.crafted_png import png_bomb, png_header_only
from tests.live_server import Server

pytestmark = pytest.mark.slow  # a live server under hostile input

MAX_BODY_MB = 2
MAX_IMAGES = 8
DIGIT = (ROOT / "examples" / "digit_3.png").read_bytes()
INFER = "/v2/models/swin_digits/infer"


# --- crafted files -----------------------------------------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def digit_image() -> Image.Image:
    return Image.open(io.BytesIO(DIGIT)).convert("RGB")


def exif_rotated() -> bytes:
    """The digit stored rotated 90 degrees, with the EXIF orientation that turns it upright again."""
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    return encode(digit_image().transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def sixteen_bit() -> bytes:
    gray = np.asarray(digit_image().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def animated(fmt: str) -> bytes:
    first = digit_image()
    return encode(first, fmt, save_all=True, append_images=[Image.new("RGB", first.size, "white")] * 2, duration=50)


def multipart(parts: list[tuple[str, str | None, bytes, str | None]], boundary: str = "vitserveboundary") -> bytes:
    out = b""
    for name, filename, data, ctype in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART = "multipart/form-data; boundary=vitserveboundary"


def upload(data: bytes, name: str = "x.png", ctype: str = "image/png") -> dict:
    return {"path": "/classify", "content": multipart([("file", name, data, ctype)]), "content_type": MULTIPART}


def v2(body: dict | list | str | bytes, header_length: str | None = None) -> dict:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": header_length} if header_length is not None else {}
    return {"path": INFER, "content": content, "content_type": "application/json", "headers": headers}


def fp32(shape, data=None, name="pixel_values", datatype="FP32", **extra) -> dict:
    count = int(np.prod(shape)) if all(isinstance(d, int) and d >= 0 for d in shape) else 1
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                        "data": data if data is not None else [0.0] * min(count, 100_000)}], **extra}


def images_input(data, shape=None) -> dict:
    return {"inputs": [{"name": "images", "datatype": "BYTES", "shape": shape or [len(data)], "data": data}]}


GOOD_B64 = base64.b64encode(DIGIT).decode()
BAD = {  # case -> (request, expected status)
    # /classify: broken, hostile or oversized files
    "zero-byte file": (upload(b""), 400),
    "garbage bytes": (upload(os.urandom(2048)), 400),
    "truncated PNG": (upload(DIGIT[: len(DIGIT) // 2]), 400),
    "truncated JPEG": (upload(encode(digit_image(), "JPEG")[:300], "x.jpg", "image/jpeg"), 400),
    "PNG signature only": (upload(b"\x89PNG\r\n\x1a\n"), 400),
    "text named .png": (upload(b"hello, I am not an image\n" * 10), 400),
    "SVG": (upload(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "x.svg", "image/svg+xml"), 400),
    "PDF": (upload(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "x.pdf", "application/pdf"), 400),
    "HTML": (upload(b"<html><body>hi</body></html>", "x.html", "text/html"), 400),
    "BMP header only": (upload(b"BM" + b"\x00" * 12), 400),
    "GIF header only": (upload(b"GIF89a\x10\x00\x10\x00"), 400),
    "30000x30000 PNG header": (upload(png_header_only(30_000, 30_000)), 413),
    "1x2000000000 PNG header": (upload(png_header_only(1, 2_000_000_000)), 413),
    "decompression bomb (10000x10000 PNG, 100 kB)": (upload(png_bomb()), 413),
    "body over the size limit": (upload(os.urandom(MAX_BODY_MB * 1024 * 1024 + 10)), 413),
    "too many files": ({"path": "/classify", "content": multipart([("file", f"{i}.png", DIGIT, "image/png")
                                                                   for i in range(MAX_IMAGES + 1)]),
                        "content_type": MULTIPART}, 400),
    "text in the file field": ({"path": "/classify", "content": multipart([("file", None, b"abc", None)]),
                                "content_type": MULTIPART}, 400),
    "no file field": ({"path": "/classify", "content": multipart([("other", "x.png", DIGIT, "image/png")]),
                       "content_type": MULTIPART}, 400),
    "empty multipart": ({"path": "/classify", "content": b"--vitserveboundary--\r\n", "content_type": MULTIPART}, 400),
    "multipart without boundary": ({"path": "/classify", "content": b"abc", "content_type": "multipart/form-data"},
                                   400),
    "multipart with a wrong boundary": ({"path": "/classify", "content": multipart([("file", "x", DIGIT, None)]),
                                         "content_type": "multipart/form-data; boundary=other"}, 400),
    "content type text/plain": ({"path": "/classify", "content": DIGIT, "content_type": "text/plain"}, 415),
    "content type application/json": ({"path": "/classify", "content": b"{}", "content_type": "application/json"},
                                      415),
    "no content type": ({"path": "/classify", "content": DIGIT, "content_type": None}, 415),
    "raw body of garbage as image/png": ({"path": "/classify", "content": os.urandom(500), "content_type": "image/png"},
                                         400),
    "raw empty body as image/jpeg": ({"path": "/classify", "content": b"", "content_type": "image/jpeg"}, 400),
    "top_k=0": ({**upload(DIGIT), "path": "/classify?top_k=0"}, 400),
    "top_k=abc": ({**upload(DIGIT), "path": "/classify?top_k=abc"}, 400),
    "top_k=10^9": ({**upload(DIGIT), "path": "/classify?top_k=1000000000"}, 400),
    "GET /classify": ({"path": "/classify", "method": "GET"}, 405),
    "unknown route": ({"path": "/nope", "method": "GET"}, 404),
    # KServe V2: wrong shapes, types, names, values, encodings, sizes
    "V2 invalid JSON": (v2(b"{not json"), 400),
    "V2 JSON list": (v2([1, 2, 3]), 400),
    "V2 no inputs": (v2({"outputs": []}), 400),
    "V2 two inputs": (v2({"inputs": [fp32([1, 3, 32, 32])["inputs"][0]] * 2}), 400),
    "V2 input not an object": (v2({"inputs": ["x"]}), 400),
    "V2 wrong shape": (v2(fp32([1, 3, 31, 32])), 400),
    "V2 three dims": (v2(fp32([3, 32, 32])), 400),
    "V2 negative dim": (v2(fp32([-1, 3, 32, 32], data=[0.0])), 400),
    "V2 float dim": (v2(fp32([1.5, 3, 32, 32], data=[0.0])), 400),
    "V2 batch of zero": (v2(fp32([0, 3, 32, 32], data=[])), 400),
    "V2 batch over the limit": (v2(fp32([MAX_IMAGES + 1, 3, 32, 32], data=[0.0])), 400),
    "V2 huge declared batch, little data": (v2(fp32([10**12, 3, 32, 32], data=[0.0])), 400),
    "V2 datatype FP64": (v2(fp32([1, 3, 32, 32], datatype="FP64")), 400),
    "V2 datatype INT8": (v2(fp32([1, 3, 32, 32], datatype="INT8")), 400),
    "V2 unknown input name": (v2(fp32([1, 3, 32, 32], name="pixels")), 400),
    "V2 too few values": (v2(fp32([1, 3, 32, 32], data=[0.0] * 100)), 400),
    "V2 strings as data": (v2(fp32([1, 3, 32, 32], data=["a"] * 3072)), 400),
    "V2 data is an object": (v2(fp32([1, 3, 32, 32], data={"a": 1})), 400),
    "V2 NaN": (v2(b'{"inputs":[{"name":"pixel_values","datatype":"FP32","shape":[1,3,32,32],"data":[NaN'
                  + b",0" * 3071 + b"]}]}"), 400),
    "V2 Infinity": (v2(b'{"inputs":[{"name":"pixel_values","datatype":"FP32","shape":[1,3,32,32],"data":[1e400'
                       + b",0" * 3071 + b"]}]}"), 400),
    "V2 no data": (v2({"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 32, 32]}]}), 400),
    "V2 parameters not an object": (v2({**fp32([1, 3, 32, 32]), "parameters": [1]}), 400),
    "V2 input parameters not an object": (v2({"inputs": [{**fp32([1, 3, 32, 32])["inputs"][0], "parameters": "x"}]}),
                                          400),
    "V2 output parameters not an object": (v2({**fp32([1, 3, 32, 32]),
                                               "outputs": [{"name": "logits", "parameters": 5}]}), 400),
    "V2 unknown output": (v2({**fp32([1, 3, 32, 32]), "outputs": [{"name": "probs"}]}), 400),
    "V2 classification=0": (v2({**fp32([1, 3, 32, 32]),
                                "outputs": [{"name": "logits", "parameters": {"classification": 0}}]}), 400),
    "V2 classification='3'": (v2({**fp32([1, 3, 32, 32]),
                                  "outputs": [{"name": "logits", "parameters": {"classification": "3"}}]}), 400),
    "V2 bad base64": (v2(images_input(["@@not base64@@"])), 400),
    "V2 base64 of garbage": (v2(images_input([base64.b64encode(b"garbage").decode()])), 400),
    "V2 base64 of an empty file": (v2(images_input([""])), 400),
    "V2 BYTES element not a string": (v2(images_input([123])), 400),
    "V2 BYTES shape says 2, data holds 1": (v2(images_input([GOOD_B64], shape=[2])), 400),
    "V2 BYTES as FP32": (v2({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": [GOOD_B64]}]}),
                         400),
    "V2 header length not a number": (v2(fp32([1, 3, 32, 32]), header_length="abc"), 400),
    "V2 header length past the body": (v2(fp32([1, 3, 32, 32]), header_length="99999999"), 400),
    "V2 binary size mismatch": (v2(json.dumps({"inputs": [{"name": "pixel_values", "datatype": "FP32",
                                                          "shape": [1, 3, 32, 32],
                                                          "parameters": {"binary_data_size": 12288}}]}).encode()
                                   + b"\x00" * 100, header_length=None), 400),
    "V2 truncated BYTES tensor": (v2(json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                                            "parameters": {"binary_data_size": 6}}]}).encode()
                                     + struct.pack("<I", 1000) + b"ab", header_length=None), 400),
    "V2 unknown model": ({**v2(fp32([1, 3, 32, 32])), "path": "/v2/models/other/infer"}, 404),
    "V2 unknown version": ({**v2(fp32([1, 3, 32, 32])), "path": "/v2/models/swin_digits/versions/7/infer"}, 404),
    "V2 body over the size limit": ({**v2(b"[" + b"0," * (MAX_BODY_MB * 1024 * 1024) + b"0]")}, 413),
}
# The binary cases need their header length: the JSON part only.
for _case in ("V2 binary size mismatch", "V2 truncated BYTES tensor"):
    _content = BAD[_case][0]["content"]
    BAD[_case][0]["headers"] = {"Inference-Header-Content-Length": str(_content.index(b"}]}") + 3)}

ODD_BUT_VALID = {  # case -> encoded image that must classify like examples/digit_3.png
    "grayscale PNG": encode(digit_image().convert("L"), "PNG"),
    "palette PNG": encode(digit_image().convert("P"), "PNG"),
    "palette PNG with transparency": encode(digit_image().convert("P"), "PNG", transparency=0),
    "RGBA PNG": encode(digit_image().convert("RGBA"), "PNG"),
    "LA PNG": encode(digit_image().convert("LA"), "PNG"),
    "16-bit grayscale PNG": sixteen_bit(),
    "CMYK JPEG": encode(digit_image().convert("CMYK"), "JPEG", quality=95),
    "progressive JPEG": encode(digit_image(), "JPEG", quality=95, progressive=True),
    "EXIF-rotated JPEG": exif_rotated(),
    "animated GIF": animated("GIF"),
    "animated PNG": animated("PNG"),
    "WebP": encode(digit_image(), "WEBP", lossless=True),
    "TIFF": encode(digit_image(), "TIFF"),
    "BMP": encode(digit_image(), "BMP"),
    "upscaled 1024x1024": encode(digit_image().resize((1024, 1024), Image.Resampling.NEAREST), "PNG"),
}


@pytest.fixture(scope="module")
def server(digits_artifact):
    s = Server(digits_artifact, "--threads", "1", "--max-body-mb", str(MAX_BODY_MB), "--max-images",
               str(MAX_IMAGES), "--max-batch-size", "8")
    s.wait_ready()
    yield s
    assert s.stop() in (0, -signal.SIGTERM), s.output()  # uvicorn re-raises the signal after a clean shutdown


def send(server: Server, case: dict) -> httpx.Response:
    headers = dict(case.get("headers") or {})
    if case.get("content_type"):
        headers["content-type"] = case["content_type"]
    return httpx.request(case.get("method", "POST"), server.url + case["path"], content=case.get("content"),
                         headers=headers, timeout=60)


def classify_one(server: Server, data: bytes) -> httpx.Response:
    return httpx.post(f"{server.url}/classify", files={"file": ("x", data)}, timeout=60)


def test_case_counts():
    print(f"\nhostile-input cases: {len(BAD)} bad requests, {len(ODD_BUT_VALID)} odd but valid images")
    assert len(BAD) + len(ODD_BUT_VALID) >= 40


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_a_json_4xx(server, case):
    request, status = BAD[case]
    response = send(server, request)
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert isinstance(response.json().get("error"), str) and response.json()["error"]


@pytest.mark.parametrize("case", list(ODD_BUT_VALID))
def test_odd_but_valid_image_is_classified(server, case):
    response = classify_one(server, ODD_BUT_VALID[case])
    assert response.status_code == 200, response.text[:500]
    assert response.json()["results"][0]["predictions"][0]["label"] == "3"


def test_v2_images_input_and_elongated_image(server):
    response = send(server, v2(images_input([GOOD_B64])))
    assert response.status_code == 200, response.text
    strip = encode(Image.new("RGB", (40_000, 1), "white"), "PNG")
    assert classify_one(server, strip).status_code == 200


def test_still_healthy_after_all_of_it(server):
    """Runs last in this module: no 5xx was counted, and a good request is answered."""
    response = classify_one(server, DIGIT)
    assert response.status_code == 200 and response.json()["results"][0]["predictions"][0]["label"] == "3"
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    server_errors = [line for line in metrics.splitlines()
                     if line.startswith("vitserve_requests_total") and 'status="5' in line]
    assert server_errors == []
