"""POST /classify: images in (multipart `file` fields, or one raw image/* body), top-k classes out."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile

from vitserve.errors import RequestError, UnsupportedMediaTypeError
from vitserve.scores import softmax, top_k
from vitserve.server.deps import Authorized, ClassifyService

router = APIRouter(tags=["classify"])

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "array", "items": {
                "type": "string", "format": "binary"}}}, "required": ["file"]},
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


async def _read_images(request: Request, max_images: int, max_bytes: int) -> tuple[list[str], list[bytes]]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=max_images + 1, max_fields=max_images + 16, max_part_size=max_bytes)
        uploads = form.getlist("file")
        if any(not isinstance(u, UploadFile) for u in uploads):
            raise RequestError("the multipart field 'file' must carry files, not text")
        if len(uploads) > max_images:
            raise RequestError(f"{len(uploads)} images in one request; the limit is {max_images}")
        return [u.filename or f"file{i}" for i, u in enumerate(uploads)], [await u.read() for u in uploads]
    if content_type.startswith("image/") or content_type == "application/octet-stream":
        return ["body"], [await request.body()]
    raise UnsupportedMediaTypeError(
        f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with 'file' fields, "
        "or a single image with an image/* content type")


@router.post("/classify", dependencies=[Authorized], openapi_extra={"requestBody": REQUEST_BODY})
async def classify(
    request: Request,
    service: ClassifyService,
    top_k_: int = Query(5, alias="top_k", ge=1, le=1000, description="classes per image"),
) -> dict:
    """Classifies one or more images; per image the top-k classes as {label, index, score} (softmax). With several
    models served, `model` names the one to ask (and `version` one of its versions)."""
    settings = service.settings
    started = request.state.arrived  # set by LimitsAndMetrics, which admitted the request
    with service.batcher.expecting():  # an open batch waits for this request while it is read and decoded
        names, blobs = await _read_images(request, settings.max_images, settings.max_body_bytes)
        service.check_image_count(len(blobs))
        decode_started = time.perf_counter()
        images = await service.decode(blobs)
        decoded = time.perf_counter()
    logits, stats = await service.infer(images, started)
    predictions = top_k(softmax(logits), service.labels, top_k_)
    return {
        "model": service.name,
        "version": service.version,
        "results": [{"image": name, "predictions": p} for name, p in zip(names, predictions)],
        "timings_ms": {
            "decode": round((decoded - decode_started) * 1e3, 3),
            "queue": round(stats.queue_wait_s * 1e3, 3),
            "inference": round(stats.inference_s * 1e3, 3),
            "total": round((time.perf_counter() - started) * 1e3, 3),
        },
    }
