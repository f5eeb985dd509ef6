"""The API's error shape and the DRF exception handler that produces it.

Every error response is ``{"error": <message>, "etcd_error": <etcd's message or null>,
"code": <gRPC status code name or null>}``, sometimes with extra fields (``fields`` for
validation errors, ``mod_revision`` for a failed precondition). ``cluster.client`` errors map
to HTTP statuses in :data:`ETCD_STATUS`; DRF's own errors keep their status.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from cluster.client import (
    AuthenticationError,
    CompactedError,
    DeadlineExceededError,
    EtcdError,
    FutureRevisionError,
    InvalidArgumentError,
    KeyNotFoundError,
    LeaseExistsError,
    LeaseNotFoundError,
    NoSpaceError,
    PermissionDeniedError,
    TooManyRequestsError,
    UnavailableError,
)

__all__ = [
    "ETCD_STATUS",
    "ApiError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "PreconditionFailed",
    "error_body",
    "exception_handler",
]

# Most specific first: the first class the error is an instance of decides.
ETCD_STATUS: list[tuple[type[EtcdError], HTTPStatus]] = [
    (CompactedError, HTTPStatus.GONE),
    (FutureRevisionError, HTTPStatus.BAD_REQUEST),
    (LeaseNotFoundError, HTTPStatus.NOT_FOUND),
    (KeyNotFoundError, HTTPStatus.NOT_FOUND),
    (LeaseExistsError, HTTPStatus.CONFLICT),
    (InvalidArgumentError, HTTPStatus.BAD_REQUEST),
    (UnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (DeadlineExceededError, HTTPStatus.SERVICE_UNAVAILABLE),
    (TooManyRequestsError, HTTPStatus.TOO_MANY_REQUESTS),
    (NoSpaceError, HTTPStatus.INSUFFICIENT_STORAGE),
    # The console's own etcd credentials are refused: a gateway problem, not the caller's.
    (PermissionDeniedError, HTTPStatus.BAD_GATEWAY),
    (AuthenticationError, HTTPStatus.BAD_GATEWAY),
]

_SUMMARY = {
    HTTPStatus.GONE: "the requested revision has been compacted",
    HTTPStatus.SERVICE_UNAVAILABLE: "the cluster is unavailable",
    HTTPStatus.BAD_GATEWAY: "the cluster refused the console's request",
}


def error_body(
    message: str, etcd_error: str | None = None, code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": message, "etcd_error": etcd_error, "code": code, **extra}


class ApiError(exceptions.APIException):  # type: ignore[misc]  # DRF is untyped
    """An API error with a message and optional extra body fields (``extra``)."""

    status_code = HTTPStatus.BAD_REQUEST
    default_detail = "bad request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class BadRequest(ApiError):
    """400: the request is malformed (the message says how)."""


class NotFound(ApiError):
    """404: no such key or lease (or member)."""

    status_code = HTTPStatus.NOT_FOUND


class Conflict(ApiError):
    """409: the request conflicts with the current state."""

    status_code = HTTPStatus.CONFLICT


class PreconditionFailed(ApiError):
    """412: an ``If-Match`` / ``If-None-Match`` precondition does not hold."""

    status_code = HTTPStatus.PRECONDITION_FAILED


def http_status(err: EtcdError) -> HTTPStatus:
    """The HTTP status for a cluster error (502 for anything unexpected)."""
    for cls, code in ETCD_STATUS:
        if isinstance(err, cls):
            return code
    return HTTPStatus.BAD_GATEWAY


def _etcd_response(err: EtcdError) -> Response:
    code = http_status(err)
    name = getattr(err.code, "name", None)
    summary = _SUMMARY.get(code, err.message or "etcd error")
    extra: dict[str, Any] = {}
    if isinstance(err, CompactedError) and err.compact_revision is not None:
        extra["compact_revision"] = err.compact_revision
    headers = {"Retry-After": "1"} if code == HTTPStatus.SERVICE_UNAVAILABLE else None
    return Response(
        error_body(summary, err.message or None, name, **extra), status=int(code), headers=headers
    )


def _flatten(detail: Any, path: str = "") -> list[str]:
    """Validation details as ``"field: message"`` lines."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            name = f"{path}.{key}" if path else str(key)
            if key == "non_field_errors":
                name = path
            lines.extend(_flatten(value, name))
        return lines
    if isinstance(detail, list):
        return [line for item in detail for line in _flatten(item, path)]
    return [f"{path}: {detail}" if path else str(detail)]


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped to the API's error body; cluster errors mapped to statuses."""
    if isinstance(exc, EtcdError):
        return _etcd_response(exc)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, ApiError):
        response.data = error_body(exc.message, **exc.extra)
    elif isinstance(exc, exceptions.ValidationError):
        response.data = error_body("; ".join(_flatten(exc.detail)), fields=exc.detail)
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else None
        response.data = error_body(str(detail if detail is not None else response.data))
    return response
