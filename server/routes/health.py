"""Liveness, readiness and Prometheus metrics (never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vitserve.server.service import Service, proof_state

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up (liveness)."""
    return {"status": "ok"}


def _describe(service: Service) -> dict:
    about = {"name": service.name, "version": service.version, "backend": service.backend.description}
    if service.refused:
        about["refused"] = service.refused
    else:
        about["proof"] = proof_state(service)
    if service.choice:  # --backend auto --precision auto
        about["backend_choice"] = service.choice["why"]
    return about


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 once every model marked to load is loaded, its proof re-run and passed, and warmed; 503 before, when a
    proof failed (`refused`, with the reason), and from the moment a shutdown begins. `models` lists each version
    served; with one, its `model`, `backend` and `proof` are also given at the top level."""
    repository = request.app.state.repository
    if repository is None or not repository.started or repository.draining:
        state = "draining" if repository is not None and repository.draining else "loading"
        return JSONResponse({"status": state}, status_code=503)
    services = repository.loaded()
    models = [_describe(s) for s in services]
    body: dict = {"models": models}
    if len(services) == 1:
        one = models[0]
        body.update({"model": one["name"], "backend": one["backend"]})
        body.update({k: one[k] for k in ("proof", "backend_choice") if k in one})
    if refused := repository.refused:
        reason = "; ".join(f"{s.name} version {s.version}: {s.refused}" for s in refused)
        return JSONResponse({"status": "refused", **body, "reason": reason if len(services) > 1 else
                             refused[0].refused}, status_code=503)
    if not repository.ready:
        return JSONResponse({"status": "loading", **body, "missing": repository.missing}, status_code=503)
    return JSONResponse({"status": "ready", **body})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    repository = request.app.state.repository
    if repository is None:
        return Response("", media_type=CONTENT_TYPE_LATEST)
    for service in repository.loaded():
        service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(generate_latest(repository.metrics.registry), media_type=CONTENT_TYPE_LATEST)
