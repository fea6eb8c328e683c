"""KServe V2 / Open Inference Protocol over REST (see v2.py for the tensor formats)."""

from __future__ import annotations

import copy
import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from vitserve import __version__
from vitserve.errors import RequestError
from vitserve.server import kserve_v2 as v2
from vitserve.server.deps import Authorized, RepositoryDep, V2Service
from vitserve.server.repository import check_load_parameters

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

# The request of the KServe V2 / Open Inference Protocol (REST), as /docs shows it and as fuzzers generate it.
_PARAMETERS = {"type": "object", "additionalProperties": {"type": ["string", "number", "integer", "boolean"]}}
INFER_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {**_PARAMETERS, "properties": {"binary_data_output": {"type": "boolean"}}},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string", "description": "the model's input name (FP32 [N, C, H, W]) or 'images' "
                         "(BYTES [N]: encoded image files)"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": ["FP32", "BYTES"]},
                "parameters": {**_PARAMETERS, "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
                "data": {"type": "array", "description": "row-major values; base64 strings for BYTES"},
            },
        }},
        "outputs": {"type": "array", "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "parameters": {**_PARAMETERS, "properties": {"classification": {"type": "integer", "minimum": 1},
                                                             "binary_data": {"type": "boolean"}}},
            },
        }},
    },
}
INFER_BODY = {"required": True, "content": {
    "application/json": {"schema": INFER_REQUEST_SCHEMA},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": "binary tensor extension: the JSON request, then the tensors; "
                                 "Inference-Header-Content-Length gives the JSON part's length"},
}}


def specialize_openapi(schema: dict, services: list) -> None:
    """Puts the served models' names, versions and input names into the V2 routes' OpenAPI description (/docs
    shows them, and schema-driven clients and fuzzers send requests that reach a model)."""
    if not services:
        return
    names = list(dict.fromkeys(n for s in services for n in (s.manifest.input.name, v2.IMAGES_INPUT)))
    for path, item in schema.get("paths", {}).items():
        if not path.startswith("/v2/models/{name}"):
            continue
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("name") == "name" and parameter.get("in") == "path":
                    parameter["schema"] = {**parameter.get("schema", {}), "enum": sorted({s.name for s in services})}
                elif parameter.get("name") == "version" and parameter.get("in") == "path":
                    parameter["schema"] = {**parameter.get("schema", {}),
                                           "enum": sorted({str(s.version) for s in services})}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "schema" in body:
                body["schema"] = copy.deepcopy(body["schema"])
                tensor = body["schema"]["properties"]["inputs"]["items"]["properties"]
                tensor["name"] = {**tensor["name"], "enum": names}


@router.get("")
def server_metadata() -> dict:
    return {"name": "vitserve", "version": __version__,
            "extensions": ["binary_tensor_data", "classification", "model_repository"]}


@router.get("/health/live")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    repository = request.app.state.repository
    is_ready = bool(repository and repository.ready)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
def model_metadata(service: V2Service, repository: RepositoryDep) -> dict:
    return v2.model_metadata(service.name, repository.versions(service.name), service.manifest,
                             service.backend.name)


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
def model_ready(service: V2Service, repository: RepositoryDep) -> dict:
    return {"name": service.name, "version": str(service.version), "ready": not repository.draining}


@router.post("/models/{name}/infer", dependencies=[Authorized], openapi_extra={"requestBody": INFER_BODY})
@router.post("/models/{name}/versions/{version}/infer", dependencies=[Authorized],
             openapi_extra={"requestBody": INFER_BODY})
async def infer(request: Request, service: V2Service) -> Response:
    with service.batcher.expecting():  # an open batch waits for this request while it is read and decoded
        body = await request.body()
        parsed = v2.parse_request(body, request.headers.get(v2.HEADER_LENGTH), service.manifest,
                                  service.settings.max_images)
        images = parsed.pixel_values if parsed.pixel_values is not None else await service.decode(parsed.images)
    logits, _ = await service.infer(images, request.state.arrived)  # arrival noted by LimitsAndMetrics
    payload, header_length = v2.encode_response(parsed, service.manifest, logits, service.labels,
                                                (service.name, service.version))
    if header_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


# The model repository extension (Triton's, which tritonclient's get_model_repository_index, load_model and
# unload_model call), behind the API key. tritonclient sends its JSON bodies without a content type: read as such.
async def _json_object(request: Request) -> dict:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as e:
        raise RequestError(f"the body is not JSON: {e}") from e
    if not isinstance(value, dict):
        raise RequestError("the body must be a JSON object")
    return value


@router.post("/repository/index", dependencies=[Authorized], tags=["model-repository"])
async def repository_index(request: Request, repository: RepositoryDep) -> list[dict]:
    """Every model version on disk with its state (READY or UNAVAILABLE) and the reason; `{"ready": true}`: the
    READY ones only."""
    return repository.index(ready_only=bool((await _json_object(request)).get("ready")))


@router.post("/repository/models/{name}/load", dependencies=[Authorized], tags=["model-repository"])
async def repository_load(name: str, request: Request, repository: RepositoryDep) -> dict:
    """Loads the model, or reloads it: the versions its policy selects on disk now load (proof re-run, warmed)
    before the versions it no longer selects leave; requests already routed to those finish on them."""
    check_load_parameters((await _json_object(request)).get("parameters"))
    await repository.load(name)
    return {}


@router.post("/repository/models/{name}/unload", dependencies=[Authorized], tags=["model-repository"])
async def repository_unload(name: str, repository: RepositoryDep) -> dict:
    """Takes every version of the model out of service; the requests already routed to them are answered, then
    their runtimes are released."""
    await repository.unload(name)
    return {}
