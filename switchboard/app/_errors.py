"""The error vocabulary of Switchboard: what went wrong, in domain terms, with a message for people.

Apps raise these from tools and action handlers, and the core raises them from the store and the
conversation. None of them knows a transport: each transport maps them once at its boundary (gRPC
status codes in `services.common.errors`, HTTP statuses at the edge from the gRPC status).

Inside a stream (a tool, a streaming action handler) the message is shown to the user as the
ChatKit `error` event that ends the stream, with a retry button when `retryable` is true. Before a
stream starts (validation) it becomes the call's status: `InvalidRequest` is gRPC
INVALID_ARGUMENT and HTTP 400, `NotFound` NOT_FOUND and 404, and so on (see each class).

Write messages for the person who reads them: they reach clients verbatim, so they must never carry
secrets, stack traces or another tenant's data.
"""

from __future__ import annotations

from typing import ClassVar


class SwitchboardError(Exception):
    """An expected failure whose `message` is safe and useful to show to the caller."""

    retryable: ClassVar[bool] = False
    """Whether trying the same request again later may succeed (the `error` event's retry button)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SwitchboardError):
    """The request is malformed or names something it may not (INVALID_ARGUMENT, HTTP 400)."""


class PreconditionFailed(SwitchboardError):
    """The request is well formed but the thread is not in a state that allows it, e.g. a locked
    thread or a tool output nobody asked for (FAILED_PRECONDITION, HTTP 400)."""


class NotFound(SwitchboardError):
    """The thing does not exist for this caller: another tenant's resources are not found either,
    so ids cannot be probed (NOT_FOUND, HTTP 404)."""


class Forbidden(SwitchboardError):
    """The caller is known but their role does not allow this (PERMISSION_DENIED, HTTP 403)."""


class Unauthenticated(SwitchboardError):
    """The request carries no usable credentials (UNAUTHENTICATED, HTTP 401)."""


class AlreadyExists(SwitchboardError):
    """Something with this id exists already (ALREADY_EXISTS, HTTP 409)."""


class Busy(SwitchboardError):
    """Another operation holds what this one needs, e.g. a thread that is answering; retry when it
    ends (ABORTED, HTTP 409)."""

    retryable = True


class LimitExceeded(SwitchboardError):
    """A limit or quota is used up (RESOURCE_EXHAUSTED, HTTP 429)."""

    retryable = True


class Unavailable(SwitchboardError):
    """A dependency (database, upload service, the app's own backend) cannot be reached now
    (UNAVAILABLE, HTTP 503)."""

    retryable = True


class TimedOut(SwitchboardError):
    """A dependency did not answer in time (DEADLINE_EXCEEDED, HTTP 504)."""

    retryable = True


__all__ = [
    "AlreadyExists",
    "Busy",
    "Forbidden",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "PreconditionFailed",
    "SwitchboardError",
    "TimedOut",
    "Unauthenticated",
    "Unavailable",
]
