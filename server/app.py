"""The FastAPI application: `create_app(settings)`; the model is loaded and warmed in the lifespan, never at import.

    uvicorn --factory vitserve.server.app:create_app      # settings from VITSERVE_* environment variables
    vitserve serve ARTIFACT_DIR                           # the same app, settings from flags
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vitserve import __version__, runtimes
from vitserve.artifact import Manifest, read_labels
from vitserve.errors import PayloadTooLargeError, RequestError, VitServeError
from vitserve.preprocess import decode_image, draft_side, transform
from vitserve.runtimes.base import Runtime
from vitserve.server.batching import (
    BatchFailedError,
    BatchStats,
    DeadlineExceededError,
    DynamicBatcher,
    QueueFullError,
    ShuttingDownError,
)
from vitserve.server.metrics import Metrics
from vitserve.server.settings import Settings

log = logging.getLogger(__name__)
access_log = logging.getLogger("vitserve.access")  # one line per request, with --access-log


@dataclass
class Service:
    """Everything a request needs: the model, its batcher, limits, metrics, and whether it takes work."""

    settings: Settings
    manifest: Manifest
    labels: list[str]
    backend: Runtime  # the runtime that runs the artifact (vitserve.runtimes; --backend names it)
    batcher: DynamicBatcher
    metrics: Metrics
    ready: bool = False
    draining: bool = False
    warmed_batch_sizes: list[int] = field(default_factory=list)
    proof: dict | None = None  # the artifact's proof re-run by this backend (Runtime.check_proof); None: none
    choice: dict | None = None  # how --backend auto --precision auto chose the backend (runtimes.choose)
    refused: str | None = None  # why the model is kept out of service (its proof failed, without --allow-drift)
    pending: int = 0  # inference requests between arrival and answer (counted by LimitsAndMetrics)

    decode_limiter: anyio.CapacityLimiter | None = None  # decode threads at once (set in the lifespan)

    @property
    def full(self) -> bool:
        """At most max_queue inference requests are in progress (LimitsAndMetrics counts them, from arrival to
        answer, and refuses the next with 503 before routing and before its body is read): under overload the
        server refuses early and cheaply instead of reading and decoding work it cannot finish in time."""
        return self.pending >= self.settings.max_queue

    @property
    def refusal(self) -> str:
        """What a request refused because the server is `full` is told (HTTP 503, gRPC UNAVAILABLE)."""
        return f"{self.pending} requests are in progress, the limit is {self.settings.max_queue}; try again later"

    def decode_one(self, data: bytes) -> np.ndarray:
        preprocess = self.manifest.preprocess
        min_side = draft_side(preprocess) if self.settings.fast_jpeg else None
        return transform(decode_image(data, self.settings.max_pixels, min_side), preprocess)

    async def decode(self, blobs: list[bytes]) -> np.ndarray:
        """Encoded images -> (N, C, H, W), decoded in a worker thread so the event loop stays free."""
        started = time.perf_counter()
        arrays = await anyio.to_thread.run_sync(lambda: [self.decode_one(b) for b in blobs],
                                                limiter=self.decode_limiter)
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        return np.stack(arrays)

    def check_image_count(self, count: int) -> None:
        if count == 0:
            raise RequestError("no images in the request")
        if count > self.settings.max_images:
            raise RequestError(f"{count} images in one request; the limit is {self.settings.max_images}")

    async def infer(self, images: np.ndarray, arrived: float) -> tuple[np.ndarray, BatchStats]:
        """The batch's outputs; DeadlineExceededError once timeout_ms has passed since `arrived` (reading and
        decoding count against it)."""
        # While draining, requests that reached the server are still served; the batcher refuses work only once
        # the lifespan stops it, after uvicorn has answered every open connection.
        remaining = self.settings.timeout_ms / 1000 - (time.perf_counter() - arrived)
        if remaining <= 0:
            raise DeadlineExceededError(f"no answer within {self.settings.timeout_ms:.0f} ms (reading and decoding "
                                        "the request took all of it)")
        try:
            answer = await self.batcher.submit(images, remaining)
            # an answer ready in time whose coroutine resumed late (a busy event loop) is late all the same
            in_time = time.perf_counter() - arrived <= self.settings.timeout_ms / 1000
        except DeadlineExceededError:
            in_time = False
        if not in_time:
            raise DeadlineExceededError(f"no answer within {self.settings.timeout_ms:.0f} ms") from None
        return answer


def load_service(settings: Settings) -> Service:
    """Loads the artifact into a backend and builds the batcher; VitServeError when the artifact is unusable."""
    choice = None
    if settings.backend == runtimes.AUTO and settings.precision == runtimes.AUTO:
        from vitserve.runtimes.choose import choose

        backend, choice = choose(settings.artifact, threads=settings.threads, device=settings.device)
    else:
        backend = runtimes.load(settings.artifact, settings.backend, threads=settings.threads,
                                device=settings.device, precision=settings.precision)
    manifest = backend.manifest
    if settings.max_batch_size > manifest.max_batch:
        raise VitServeError(f"--max-batch-size {settings.max_batch_size} exceeds the artifact's max_batch "
                            f"{manifest.max_batch}; lower it or re-export with --max-batch {settings.max_batch_size}")
    labels = read_labels(settings.artifact / manifest.labels_file)
    metrics = Metrics(settings.max_batch_size)

    def on_batch(size: int, seconds: float, waits: list[float]) -> None:
        metrics.batch_size.observe(size)
        metrics.inference_seconds.observe(seconds)
        for wait in waits:
            metrics.queue_seconds.observe(wait)

    batcher = DynamicBatcher(backend, max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_ms / 1000,
                             max_queue=settings.max_queue,
                             batches_in_flight=settings.batches_in_flight or backend.batches_in_flight,
                             on_batch=on_batch, on_queue_depth=metrics.queue_depth.set,
                             on_computing=metrics.batches_computing.set)
    return Service(settings, manifest, labels, backend, batcher, metrics, choice=choice)


def check_proof(service: Service) -> None:
    """Re-runs the artifact's proof through the backend that will serve it (vitserve.proof): passed, the model may
    serve; failed, it is kept out of service (`refused`, which /readyz and every refused request give) unless
    --allow-drift; the outcome in the log and the vitserve_proof metric."""
    report = service.proof = service.choice["proof"] if service.choice else service.backend.check_proof()
    if service.choice:
        log.info("backend: %s, %s", service.choice["chosen"], service.choice["why"])
    state = "none" if report is None else "passed" if report["passed"] else "failed"
    service.metrics.proof.labels(state).set(1)
    if report is None:
        log.warning("%s has no proof (exported before vitserve kept one): its answers are not re-checked here; "
                    "export it again to have them checked", service.settings.artifact)
    elif report["passed"]:
        log.info("proof: the artifact's images give the fp32 model's answers in %s (max |logit difference| %.3g, "
                 "lowest cosine %.6f)", report["runtime"], report["max_abs_diff"], report["min_cosine"])
    elif service.settings.allow_drift:
        log.warning("%s; serving anyway (--allow-drift)", report["reason"])
    else:
        service.refused = f"{report['reason']}; not serving it (--allow-drift serves anyway)"
        log.error("%s", service.refused)


def proof_state(service: Service) -> str:
    """What /readyz says of the proof."""
    report = service.proof
    if report is None:
        return "none: the artifact was exported before vitserve kept one"
    if report["passed"]:
        return f"passed in {report['runtime']}"
    return f"failed, serving anyway (--allow-drift): {report['reason']}"


def warm_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... up to max_batch_size, and max_batch_size itself."""
    sizes, size = [], 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch_size]


def _warm_up(service: Service) -> None:
    service.backend.reserve(service.batcher.batches_in_flight)  # what each batch in flight keeps of its own
    shape = service.manifest.input.shape[1:]
    for size in warm_batch_sizes(service.settings.max_batch_size):
        service.backend(np.zeros((size, *shape), dtype=np.float32))
        service.warmed_batch_sizes.append(size)


def create_app(settings: Settings | None = None, service: Service | None = None) -> FastAPI:
    """The vitserve app; without `settings`, they are read from VITSERVE_* environment variables.

    The model is loaded in the lifespan, unless `service` (from load_service) is passed in already loaded.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nonlocal service
        service = service or await run_in_threadpool(load_service, settings)
        app.state.service = service
        await run_in_threadpool(check_proof, service)
        await run_in_threadpool(_warm_up, service)
        # decoding is CPU work: more threads than cores only add memory (a malloc arena each) and contention
        service.decode_limiter = anyio.CapacityLimiter(os.cpu_count() or 1)
        service.batcher.start()
        grpc_server = None
        if settings.grpc_port is not None:
            from vitserve.server.kserve_grpc import start_server

            grpc_server, app.state.grpc_port = await start_server(service, settings.host, settings.grpc_port,
                                                                  settings.max_body_bytes)
        service.ready = service.refused is None
        log.info("serving %s (%s), warmed at batch sizes %s, %d batch(es) in flight", service.manifest.name,
                 service.backend.description, ", ".join(map(str, service.warmed_batch_sizes)),
                 service.batcher.batches_in_flight)
        try:
            yield
        finally:
            service.ready = False
            service.draining = True
            if grpc_server is not None:  # no new calls; those in progress get up to the request timeout
                await grpc_server.stop(settings.timeout_ms / 1000)
            await service.batcher.stop(drain_timeout_s=settings.timeout_ms / 1000)

    app = FastAPI(title="vitserve", version=__version__, lifespan=lifespan,
                  description="Image classification with dynamic batching; KServe V2 inference protocol.")
    app.state.settings = settings
    app.state.service = None
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
        """FastAPI's schema, made specific to the loaded model: its name and its V2 input names."""
        from vitserve.server.routes import v2 as v2_routes

        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            if app.state.service is not None:
                v2_routes.specialize_openapi(schema, app.state.service.manifest)
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
        service = getattr(getattr(scope.get("app"), "state", None), "service", None)
        if service is not None and scope["method"] == "POST" and INFERENCE_PATH.fullmatch(scope["path"]):
            if service.full:
                await _error(503, service.refusal, {"Retry-After": "1"})(scope, receive, timed_send)
                route = "/classify" if scope["path"] == "/classify" else "/v2/models/{name}/infer"
                self._record(scope, 503, started, route)
                return
            scope.setdefault("state", {})["arrived"] = started  # the request's deadline counts from here
        else:
            service = None  # not an inference request: not counted
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

        if service is not None:
            service.pending += 1
        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            if service is not None:
                service.pending -= 1
            self._record(scope, status["code"], started)

    def _record(self, scope, status: int, started: float, route_path: str | None = None) -> None:
        if self.access_log:
            client = scope.get("client") or ("-", 0)
            query = f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else ""
            access_log.info("%s %s %s%s %d %.1f ms id=%s", client[0], scope["method"], scope["path"], query, status,
                            (time.perf_counter() - started) * 1000, scope["state"]["request_id"])
        app = scope.get("app")
        service = getattr(getattr(app, "state", None), "service", None) if app is not None else None
        if service is None:
            return
        path = route_path or getattr(scope.get("route"), "path", "unmatched")
        service.metrics.requests.labels(path, str(status)).inc()
        service.metrics.total_seconds.labels(path).observe(time.perf_counter() - started)

