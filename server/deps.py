"""Request dependencies: the loaded service, and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from vitserve.errors import UnauthorizedError
from vitserve.server.app import Service
from vitserve.server.batching import ShuttingDownError


def get_service(request: Request) -> Service:
    service = request.app.state.service
    if service is None or not service.ready:
        raise ShuttingDownError(f"the model is not ready: {service.refused}" if service and service.refused else
                                "the model is not ready")
    return service


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


ServiceDep = Annotated[Service, Depends(get_service)]
Authorized = Depends(check_api_key)
