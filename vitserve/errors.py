"""Errors vitserve raises on purpose. The CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

from typing import Any


class VitServeError(Exception):
    """Base class: something the user can fix, with a message that says how."""

    exit_code = 1


class UnknownModelError(VitServeError):
    """The model name is neither a vitserve alias nor a timm architecture."""


class WeightsError(VitServeError):
    """A weights file could not be read (missing, corrupt, wrong format)."""


class WeightsUnavailableError(WeightsError):
    """Pretrained weights were asked for but cannot be fetched (no network, no cache)."""


class CheckpointMismatchError(WeightsError):
    """The checkpoint's tensors do not fit the architecture."""


class LabelsError(VitServeError):
    """A labels file is unreadable or does not match the number of classes."""


class ExportError(VitServeError):
    """The model could not be exported."""


class VerificationError(ExportError):
    """The exported model does not give the same answers as the source model.

    Attributes:
        report: the verification report (the same dict that lands in the manifest).
    """

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


class ArtifactError(VitServeError):
    """An artifact directory is missing, incomplete or of an unknown format."""


class RequestError(VitServeError):
    """A client sent something the server cannot use; `status` is the HTTP status it answers with."""

    status = 400


class PayloadTooLargeError(RequestError):
    status = 413


class UnsupportedMediaTypeError(RequestError):
    status = 415


class UnauthorizedError(RequestError):
    status = 401


class NotFoundError(RequestError):
    status = 404
