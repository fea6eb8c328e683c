"""Request dependencies: the loaded service, and the API key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from vitserve.errors import UnauthorizedError
from vitserve.server.app import Service
from vitserve.server.batching import ShuttingDownError


def get_service(request: Request) -> Service:
    service = request.app.state.service
    if service is None or not service.ready:
        raise ShuttingDownError("the model is not ready")
    return service


def check_api_key(request: Request) -> None:
    """With VITSERVE_API_KEY set, inference needs `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None or not secrets.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise UnauthorizedError("missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")


ServiceDep = Annotated[Service, Depends(get_service)]
Authorized = Depends(check_api_key)
