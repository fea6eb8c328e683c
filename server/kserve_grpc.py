"""The KServe V2 / Open Inference Protocol over gRPC (`vitserve serve --grpc-port N`), beside the HTTP routes.

gRPC requests go to the same models, and join the same batches, limits, metrics and shutdown as HTTP ones. The
service is `inference.GRPCInferenceService` (open_inference.proto): ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata, ModelInfer, and the model repository extension's RepositoryIndex,
RepositoryModelLoad and RepositoryModelUnload (behind the API key); beside it gRPC's standard health check
(`grpc.health.v1.Health/Check`, for Kubernetes' gRPC probes and load balancers): SERVING when ServerReady would say
ready.

A ModelInfer request carries exactly one input, as on REST (v2.py): `pixel_values` FP32 [N, C, H, W], or `images`
BYTES [N] (encoded image files, no base64), in `raw_input_contents` (what `tritonclient.grpc` sends) or in typed
`contents`. The answer is `logits` FP32 [N, classes] in `raw_output_contents`; requesting `logits` with the int64
parameter `classification` k returns BYTES [N, k] "value:index:label" strings instead.

Status codes: INVALID_ARGUMENT for a client's mistake, NOT_FOUND for an unknown model or version, UNAUTHENTICATED
for a missing API key, RESOURCE_EXHAUSTED for an image over the pixel limit (gRPC itself refuses messages over
the body limit with the same code), UNAVAILABLE when the server is full or shutting down (retry later),
DEADLINE_EXCEEDED past the request timeout, INTERNAL when the backend failed on the request's batch.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from grpc import aio

from vitserve import __version__
from vitserve.artifact import Manifest
from vitserve.errors import NotFoundError, RequestError, UnauthorizedError, VitServeError
from vitserve.server import grpc_health_pb2 as health_pb
from vitserve.server import kserve_v2 as v2
from vitserve.server import open_inference_pb2 as pb
from vitserve.server.app import access_log, request_id
from vitserve.server.batching import BatchFailedError, DeadlineExceededError, QueueFullError, ShuttingDownError
from vitserve.server.deps import api_key_matches
from vitserve.server.repository import Repository, check_load_parameters

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"
EXTENSIONS = ["classification", "model_repository"]
# the model and version the current call was routed to (for its metrics), set where it is resolved
SERVED: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("served", default=("", ""))

# RequestError.status (HTTP) -> gRPC status; other client mistakes are INVALID_ARGUMENT
CLIENT_STATUSES = {401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
                   413: grpc.StatusCode.RESOURCE_EXHAUSTED}
SERVER_STATUSES = {QueueFullError: grpc.StatusCode.UNAVAILABLE, ShuttingDownError: grpc.StatusCode.UNAVAILABLE,
                   DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED, BatchFailedError: grpc.StatusCode.INTERNAL}


def parse_infer(request: pb.ModelInferRequest, manifest: Manifest, max_images: int) -> v2.InferRequest:
    """The request in v2.InferRequest form, checked exactly as a REST request is; RequestError on misuse."""
    if len(request.inputs) != 1:
        raise RequestError(f"send exactly one input ('{manifest.input.name}' FP32 or '{v2.IMAGES_INPUT}' BYTES), "
                           f"got {len(request.inputs)}")
    tensor = request.inputs[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise RequestError(f"raw_input_contents must hold one entry per input (1), got "
                               f"{len(request.raw_input_contents)}")
        if tensor.HasField("contents"):
            raise RequestError("the input has both contents and raw_input_contents; send one of the two")
        chunk = request.raw_input_contents[0]
    elif tensor.datatype == "BYTES":
        chunk = v2.serialize_bytes(list(tensor.contents.bytes_contents))
    else:
        chunk = np.asarray(tensor.contents.fp32_contents, dtype="<f4").tobytes()
    as_dict = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
    pixel_values, images = v2.read_input(as_dict, chunk, manifest, max_images)
    outputs = [{"name": o.name, "parameters": {key: _value(p) for key, p in o.parameters.items()}}
               for o in request.outputs]
    v2.check_outputs(outputs, manifest)
    return v2.InferRequest(request.id or None, pixel_values, images, outputs, binary_output_default=False)


def _value(parameter: pb.InferParameter) -> Any:
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def encode_infer(request: v2.InferRequest, manifest: Manifest, logits: np.ndarray, labels: list[str],
                 served: tuple[str, int]) -> pb.ModelInferResponse:
    """The requested outputs (all of them when none was named), each in raw_output_contents; `served`: the model's
    name and version."""
    response = pb.ModelInferResponse(model_name=served[0], model_version=str(served[1]), id=request.id or "")
    for requested in request.outputs or [{"name": manifest.output.name, "parameters": {}}]:
        k = requested["parameters"].get("classification")
        if k is not None:
            k = min(k, logits.shape[1])
            response.outputs.add(name=manifest.output.name, datatype="BYTES", shape=[len(logits), k])
            strings = v2.classification(logits, k, labels)
            response.raw_output_contents.append(v2.serialize_bytes([s.encode() for s in strings]))
        else:
            response.outputs.add(name=manifest.output.name, datatype="FP32", shape=list(logits.shape))
            response.raw_output_contents.append(np.ascontiguousarray(logits, dtype="<f4").tobytes())
    return response


class Servicer:
    """The V2 RPCs and the health check, on the app's Repository; `handlers()` registers them with a grpc.aio
    server."""

    def __init__(self, repository: Repository):
        self.repository = repository
        self.settings = repository.settings

    async def server_live(self, request: pb.ServerLiveRequest, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.repository.ready)

    async def health_check(self, request: health_pb.HealthCheckRequest, context) -> health_pb.HealthCheckResponse:
        if request.service not in ("", SERVICE):
            raise NotFoundError(f"unknown service {request.service!r}; ask for '' (the server) or {SERVICE!r}")
        status = health_pb.HealthCheckResponse
        return status(status=status.SERVING if self.repository.ready else status.NOT_SERVING)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="vitserve", version=__version__, extensions=EXTENSIONS)

    def _resolve(self, name: str, version: str):
        service = self.repository.resolve(name, version)
        SERVED.set((service.name, str(service.version)))
        return service

    async def model_ready(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        try:
            self._resolve(request.name, request.version)
        except ShuttingDownError:
            return pb.ModelReadyResponse(ready=False)
        except NotFoundError:
            if request.name in self.repository.sources:  # in the repository, not loaded (or not that version)
                return pb.ModelReadyResponse(ready=False)
            raise
        return pb.ModelReadyResponse(ready=not self.repository.draining)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        service = self._resolve(request.name, request.version)
        meta = v2.model_metadata(service.name, self.repository.versions(service.name), service.manifest,
                                 service.backend.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"],
                                        inputs=[tensor(**t) for t in meta["inputs"]],
                                        outputs=[tensor(**t) for t in meta["outputs"]])

    def _authorize(self, context) -> None:
        metadata = dict(context.invocation_metadata() or ())
        if not api_key_matches(self.settings.api_key, metadata.get("x-api-key"), metadata.get("authorization")):
            raise UnauthorizedError("missing or wrong API key: send the metadata `authorization: Bearer KEY` or "
                                    "`x-api-key: KEY`")

    async def model_infer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        repository, arrived = self.repository, time.perf_counter()
        self._authorize(context)
        if repository.full:
            raise QueueFullError(repository.refusal)
        repository.pending += 1
        try:
            with self._resolve(request.model_name, request.model_version).serving() as service:
                with service.batcher.expecting():  # an open batch waits for this request while it is decoded
                    parsed = parse_infer(request, service.manifest, service.settings.max_images)
                    images = parsed.pixel_values if parsed.pixel_values is not None else await service.decode(
                        parsed.images)
                logits, _ = await service.infer(images, arrived)
        finally:
            repository.pending -= 1
        return encode_infer(parsed, service.manifest, logits, service.labels, (service.name, service.version))

    async def repository_index(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        self._authorize(context)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[entry(**row) for row in self.repository.index(request.ready)])

    async def repository_load(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        self._authorize(context)
        check_load_parameters(dict(request.parameters))
        await self.repository.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(self, request: pb.RepositoryModelUnloadRequest,
                                context) -> pb.RepositoryModelUnloadResponse:
        self._authorize(context)
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        services = {
            SERVICE: {
                "ServerLive": (self.server_live, pb.ServerLiveRequest),
                "ServerReady": (self.server_ready, pb.ServerReadyRequest),
                "ModelReady": (self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
                "ModelInfer": (self.model_infer, pb.ModelInferRequest),
                "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
                "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest),
                "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest),
            },
            HEALTH_SERVICE: {"Check": (self.health_check, health_pb.HealthCheckRequest)},
        }
        return tuple(grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(self._observed(f"/{service}/{name}", method),
                                                      request_deserializer=request_type.FromString,
                                                      response_serializer=lambda m: m.SerializeToString())
            for name, (method, request_type) in methods.items()}) for service, methods in services.items())

    def _observed(self, route: str, method: Callable[[Any, Any], Awaitable[Any]]):
        """The RPC with what every HTTP request gets too: errors turned into status codes with the same messages,
        an x-request-id (the client's, or a new one) in the answer's metadata, metrics, the access log line."""

        async def call(request, context):
            started, code = time.perf_counter(), grpc.StatusCode.OK
            given = dict(context.invocation_metadata() or ()).get("x-request-id", "")
            rid = request_id(given.encode()).decode()
            await context.send_initial_metadata((("x-request-id", rid),))
            SERVED.set(("", ""))
            try:
                return await method(request, context)
            except RequestError as e:
                code = CLIENT_STATUSES.get(e.status, grpc.StatusCode.INVALID_ARGUMENT)
                await context.abort(code, str(e))
            except tuple(SERVER_STATUSES) as e:
                code = next(c for t, c in SERVER_STATUSES.items() if isinstance(e, t))
                await context.abort(code, str(e))
            except asyncio.CancelledError:  # the client cancelled or its deadline passed
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("%s failed", route)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal error; the server log has the details")
            finally:
                self._record(route, code, started, context.peer(), rid)

        return call

    def _record(self, route: str, code: grpc.StatusCode, started: float, peer: str, rid: str) -> None:
        took = time.perf_counter() - started
        if self.settings.access_log:
            access_log.info("%s gRPC %s %s %.1f ms id=%s", peer, route, code.name, took * 1000, rid)
        metrics = self.repository.metrics
        metrics.requests.labels(route, code.name, *SERVED.get()).inc()
        metrics.total_seconds.labels(route).observe(took)


async def start_server(repository: Repository, host: str, port: int, max_message_bytes: int) -> tuple[aio.Server, int]:
    """A started grpc.aio server on the running event loop, and the port it listens on (`port` 0: a free one)."""
    server = aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),  # a port already in use is an error, not silently shared with another server
    ])
    server.add_generic_rpc_handlers(Servicer(repository).handlers())
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise VitServeError(f"cannot listen for gRPC on {address} ({e}); choose another --grpc-port") from e
    await server.start()
    log.info("KServe V2 over gRPC on %s", address if port else f"{host}:{bound}")
    return server, bound
