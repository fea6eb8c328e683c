"""Liveness, readiness and Prometheus metrics (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitserve.server.app import proof_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded, its proof re-run and passed, and warmed; 503 before, when the proof failed
    (`refused`, with the reason), and from the moment a shutdown begins."""
    service = request.app.state.service
    if service is not None and service.refused and not service.draining:
        return JSONResponse({"status": "refused", "model": service.manifest.name, "reason": service.refused},
                            status_code=503)
    if service is None or not service.ready or service.draining:
        state = "draining" if service is not None and service.draining else "loading"
        return JSONResponse({"status": state}, status_code=503)
    body = {"status": "ready", "model": service.manifest.name, "backend": service.backend.description,
            "proof": proof_state(service)}
    if service.choice:  # --backend auto --precision auto
        body["backend_choice"] = service.choice["why"]
    return JSONResponse(body)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    service = request.app.state.service
    if service is None:
        return Response("", media_type=CONTENT_TYPE_LATEST)
    service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
