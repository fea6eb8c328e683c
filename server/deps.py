"""Request dependencies: the model version a request goes to, and the API key check."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import SecretStr

from vitserve.errors import UnauthorizedError
from vitserve.server.batching import ShuttingDownError
from vitserve.server.repository import Repository
from vitserve.server.service import Service


def get_repository(request: Request) -> Repository:
    repository = request.app.state.repository
    if repository is None or not repository.started:
        raise ShuttingDownError("the server is not ready")
    return repository


def _resolve(request: Request, name: str | None, version: str | None) -> Service:
    service = get_repository(request).resolve(name, version)
    request.scope["state"]["served"] = (service.name, str(service.version))  # for the request metrics
    return service


# Async generators, so that they run on the event loop: the chosen Service is counted as in use until the request is
# answered (an unload waits for it).
async def classify_service(request: Request, model: str | None = Query(
        None, description="the model to ask; needed when the server serves several"), version: str | None = Query(
        None, description="its version (default: the highest that serves)")) -> AsyncIterator[Service]:
    with _resolve(request, model, version).serving() as service:
        yield service


async def v2_service(request: Request, name: str, version: str | None = None) -> AsyncIterator[Service]:
    """The model and version of a /v2/models/{name}[/versions/{version}] path."""
    with _resolve(request, name, version).serving() as service:
        yield service


def check_api_key(request: Request) -> None:
    """With VITSERVE_API_KEY set, inference needs `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    if not api_key_matches(request.app.state.settings.api_key, request.headers.get("x-api-key"),
                           request.headers.get("authorization")):
        raise UnauthorizedError("missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")


def api_key_matches(expected: SecretStr | None, x_api_key: str | None, authorization: str | None) -> bool:
    """True without a configured key, else when `X-API-Key` or `Authorization: Bearer` carries it (HTTP headers
    and gRPC metadata alike)."""
    if expected is None:
        return True
    given = x_api_key
    if given is None and (authorization or "").lower().startswith("bearer "):
        given = authorization[7:].strip()
    return given is not None and secrets.compare_digest(given.encode(), expected.get_secret_value().encode())


RepositoryDep = Annotated[Repository, Depends(get_repository)]
ClassifyService = Annotated[Service, Depends(classify_service)]
V2Service = Annotated[Service, Depends(v2_service)]
Authorized = Depends(check_api_key)
