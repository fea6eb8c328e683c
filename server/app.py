"""The FastAPI application: `create_app(settings)`; the models are loaded and warmed in the lifespan, never at import.

    uvicorn --factory vitserve.server.app:create_app      # settings from VITSERVE_* environment variables
    vitserve serve ARTIFACT_DIR                           # the same app, settings from flags
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vitserve import __version__
from vitserve.errors import PayloadTooLargeError, RequestError
from vitserve.server.batching import (
    BatchFailedError,
    DeadlineExceededError,
    QueueFullError,
    ShuttingDownError,
)
from vitserve.server.metrics import Metrics
from vitserve.server.repository import Repository
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("vitserve.access")  # one line per request, with --access-log


def create_app(settings: Settings | None = None, repository: Repository | None = None) -> FastAPI:
    """The vitserve app; without `settings`, they are read from VITSERVE_* environment variables.

    The models are loaded in the lifespan, unless `repository` is passed in with them loaded already
    (Repository.load_all, which `vitserve serve` runs before it opens a port).
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal repository
        if repository is None:
            repository = Repository(settings, Metrics(settings.max_batch_size))
            await run_in_threadpool(repository.load_all)
        app.state.repository = repository
        repository.start()
        grpc_server = None
        if settings.grpc_port is not None:
            from vitserve.server.kserve_grpc import start_server

            grpc_server, app.state.grpc_port = await start_server(repository, settings.host, settings.grpc_port,
                                                                  settings.max_body_bytes)
        for service in repository.loaded():
            log.info("serving %s version %d (%s), warmed at batch sizes %s, %d batch(es) in flight", service.name,
                     service.version, service.backend.description, ", ".join(map(str, service.warmed_batch_sizes)),
                     service.batcher.batches_in_flight)
        poller = asyncio.create_task(repository.watch(settings.poll_s)) if settings.poll_s else None
        try:
            yield
        finally:
            repository.draining = True
            if poller is not None:
                poller.cancel()
            if grpc_server is not None:  # no new calls; those in progress get up to the request timeout
                await grpc_server.stop(settings.timeout_ms / 1000)
            await repository.stop()

    app = FastAPI(title="vitserve", version=__version__, lifespan=lifespan,
                  description="Image classification with dynamic batching; KServe V2 inference protocol.")
    app.state.settings = settings
    app.state.repository = None
    app.state.grpc_port = None  # the port gRPC listens on, once started (settings.grpc_port 0: a free one)
    _install_error_handlers(app)
    app.add_middleware(LimitsAndMetrics, max_body_bytes=settings.max_body_bytes,
                       access_log=settings.access_log)

    from vitserve.server.routes import ROUTERS, ui

    for router in ROUTERS:
        app.include_router(router)
    if not settings.no_ui:
        app.include_router(ui.router)

    def openapi() -> dict:
        """FastAPI's schema, made specific to the loaded models: their names, versions and V2 input names."""
        from vitserve.server.routes import v2 as v2_routes

        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            if app.state.repository is not None:
                v2_routes.specialize_openapi(schema, app.state.repository.loaded())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error body is {"error": message}: the KServe V2 error format, used on every route."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    statuses: dict[type[Exception], tuple[int, dict[str, str] | None]] = {
        QueueFullError: (503, {"Retry-After": "1"}),
        ShuttingDownError: (503, {"Retry-After": "5"}),
        DeadlineExceededError: (504, None),
        BatchFailedError: (500, None),
    }
    for exc_type, (status, headers) in statuses.items():
        app.add_exception_handler(exc_type, lambda r, e, s=status, h=headers: _error(s, str(e), h))
    app.add_exception_handler(RequestError, lambda r, e: _error(e.status, str(e)))

    async def validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(400, f"invalid request: {problems}")

    app.add_exception_handler(RequestValidationError, validation)
    # unknown routes (404) and methods (405) answer in the same format
    app.add_exception_handler(StarletteHTTPException,
                              lambda r, e: _error(e.status_code, str(e.detail), getattr(e, "headers", None)))


INFERENCE_PATH = re.compile(r"/classify|/v2/models/[^/]+(/versions/[^/]+)?/infer")


# A client's X-Request-ID is kept if it looks like an identifier; otherwise the server makes one.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id(given: bytes) -> bytes:
    """The client's request id (an HTTP header or gRPC metadata) if it looks like an identifier, else a new one."""
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex.encode()


class LimitsAndMetrics:
    """ASGI middleware: refuses inference requests beyond the admission limit (503) and bodies over the size limit
    (413) before any routing, notes each request's arrival time, counts requests by route and status, and tells
    the client the server's own time for each answer: `Server-Timing: app;dur=MS` (from arrival to the response's
    start; a client's clock adds the network and the time a connection waited to be accepted). Every answer carries
    an `X-Request-ID` (the client's, or a new one), which the access log (`access_log`) names too."""

    def __init__(self, app, max_body_bytes: int, access_log: bool = False):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}
        limit = self.max_body_bytes
        headers = dict(scope.get("headers") or [])
        rid = request_id(headers.get(b"x-request-id", b""))
        scope.setdefault("state", {})["request_id"] = rid.decode()

        async def timed_send(message):
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", took),
                                                  (b"x-request-id", rid)]}
            await send(message)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _error(413, f"request body is {int(declared)} bytes; the limit is {limit}")(scope, receive,
                                                                                              timed_send)
            self._record(scope, 413, started)
            return
        repository = _repository(scope)
        if repository is not None and scope["method"] == "POST" and INFERENCE_PATH.fullmatch(scope["path"]):
            if repository.full:
                await _error(503, repository.refusal, {"Retry-After": "1"})(scope, receive, timed_send)
                route = "/classify" if scope["path"] == "/classify" else "/v2/models/{name}/infer"
                self._record(scope, 503, started, route)
                return
            scope.setdefault("state", {})["arrived"] = started  # the request's deadline counts from here
        else:
            repository = None  # not an inference request: not counted
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            return message

        async def tracking_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await timed_send(message)

        if repository is not None:
            repository.pending += 1
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            if repository is not None:
                repository.pending -= 1
            self._record(scope, status["code"], started)

    def _record(self, scope, status: int, started: float, route_path: str | None = None) -> None:
        if self.access_log:
            client = scope.get("client") or ("-", 0)
            query = f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else ""
            access_log.info("%s %s %s%s %d %.1f ms id=%s", client[0], scope["method"], scope["path"], query, status,
                            (time.perf_counter() - started) * 1000, scope["state"]["request_id"])
        repository = _repository(scope)
        if repository is None:
            return
        path = route_path or getattr(scope.get("route"), "path", "unmatched")
        model, version = scope["state"].get("served", ("", ""))  # set where a request is routed to a model
        repository.metrics.requests.labels(path, str(status), model, version).inc()
        repository.metrics.total_seconds.labels(path).observe(time.perf_counter() - started)


def _repository(scope) -> Repository | None:
    app = scope.get("app")
    return getattr(getattr(app, "state", None), "repository", None) if app is not None else None

