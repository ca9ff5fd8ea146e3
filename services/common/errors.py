"""The error model at the gRPC boundary: domain errors ↔ gRPC status codes ↔ HTTP statuses.

The services raise the domain vocabulary of `switchboard.app` (`InvalidRequest`, `NotFound`, …).
This module is the one place that maps it to gRPC status codes (`grpc_status`, used by every gRPC
server when it aborts a call) and back (`from_grpc_status`, for a service that calls another one
and passes its failure on), and the one table from gRPC status to HTTP status, which the edge
applies to every failed call.
"""

from __future__ import annotations

import json
from typing import Final

import grpc

from switchboard.app import (
    AlreadyExists,
    Busy,
    Forbidden,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PreconditionFailed,
    SwitchboardError,
    TimedOut,
    Unauthenticated,
    Unavailable,
)

HTTP_STATUS: Final[dict[grpc.StatusCode, int]] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}

GRPC_STATUS: Final[dict[type[SwitchboardError], grpc.StatusCode]] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Busy: grpc.StatusCode.ABORTED,
    LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    TimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
}
_FROM_GRPC: Final = {code: kind for kind, code in GRPC_STATUS.items()}


def grpc_status(error: SwitchboardError) -> grpc.StatusCode:
    """The status a gRPC server answers `error` with (its nearest mapped class; else INTERNAL)."""
    for kind in type(error).__mro__:
        code = GRPC_STATUS.get(kind)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def from_grpc_status(code: grpc.StatusCode, message: str) -> SwitchboardError:
    """The domain error a failed call to another service means (Unavailable for what has none)."""
    return _FROM_GRPC.get(code, Unavailable)(message)


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    """`{"error": {"code": "NOT_FOUND", "message": "..."}}`, the JSON body of every HTTP error."""
    return json.dumps({"error": {"code": code.name, "message": message}}).encode()


def not_found(what: str) -> NotFound:
    return NotFound(f"{what} not found")


def invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message)
