"""A grpc.aio server interceptor that counts calls and their status codes, and times them.

grpc's documented way to observe every call of a server: the interceptor resolves the real handler,
then returns a handler of the same shape whose behaviour wraps the real one. The status comes from
the servicer context (`context.code()`, set by `abort` or `set_code`); a handler that returns
without one is OK, a cancelled one CANCELLED, one that raised anything else UNKNOWN (what grpc
sends then). Health checks and reflection are not counted (long-lived health watches would only
blur the latencies). Each call also sets `current_operation` (the method name) for the logs.

Metrics (labels `grpc_service`, `grpc_method`, and `grpc_code` on the handled counter), after
go-grpc-prometheus:
- `switchboard_grpc_server_started_total`
- `switchboard_grpc_server_handled_total`
- `switchboard_grpc_server_handling_seconds` (histogram; streams: until the last message)

Servers take their interceptors from `server_interceptors`, which has none when metrics are off
(`services.common.metrics.setup_metrics`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc import aio
from prometheus_client import Counter, Histogram

from services.common import metrics
from services.common.logs import current_operation
from services.common.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # grpc's RpcMethodHandler is generic only in its type stubs
    Handler = grpc.RpcMethodHandler

_SKIPPED: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

STARTED: Final = Counter(
    "switchboard_grpc_server_started_total", "gRPC calls started", ["grpc_service", "grpc_method"]
)
HANDLED: Final = Counter(
    "switchboard_grpc_server_handled_total",
    "gRPC calls finished, by status code",
    ["grpc_service", "grpc_method", "grpc_code"],
)
SECONDS: Final = Histogram(
    "switchboard_grpc_server_handling_seconds",
    "Time from a call's start to its status (streams: the whole stream)",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)


def _code_name(context: aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):  # some grpc versions give the numeric code
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), "UNKNOWN")
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"


class _Call:
    """The pre-bound metric children of one method."""

    __slots__ = ("handled", "method", "seconds", "service", "started")

    def __init__(self, full_method: str) -> None:
        self.service, _, self.method = full_method.lstrip("/").rpartition("/")
        self.started = STARTED.labels(self.service, self.method)
        self.seconds = SECONDS.labels(self.service, self.method)

    def finish(
        self, context: aio.ServicerContext[Any, Any], began: float, error: BaseException | None
    ) -> None:
        self.seconds.observe(time.perf_counter() - began)
        HANDLED.labels(self.service, self.method, _code_name(context, error)).inc()


def _wrap_unary(behaviour: Callable[..., Awaitable[Any]], call: _Call) -> Callable[..., Awaitable[Any]]:
    async def observed(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        current_operation.set(call.method)
        call.started.inc()
        began = time.perf_counter()
        error: BaseException | None = None
        try:
            return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            call.finish(context, began, error)

    return observed


def _wrap_stream(
    behaviour: Callable[..., AsyncIterator[Any]], call: _Call
) -> Callable[..., AsyncIterator[Any]]:
    async def observed(request: Any, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        current_operation.set(call.method)
        call.started.inc()
        began = time.perf_counter()
        error: BaseException | None = None
        try:
            async for response in behaviour(request, context):
                yield response
        except BaseException as raised:
            error = raised
            raise
        finally:
            call.finish(context, began, error)

    return observed


class MetricsInterceptor(aio.ServerInterceptor):
    """Counts and times every call (module docstring); put it first, before the auth interceptor,
    so that refused tokens are counted as UNAUTHENTICATED."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_SKIPPED):
            return handler
        call = self._calls.get(method)
        if call is None:
            call = self._calls[method] = _Call(method)
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(_wrap(handler.stream_stream, call), **kwargs)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(_wrap(handler.stream_unary, call), **kwargs)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_wrap(handler.unary_stream, call), **kwargs)
        return grpc.unary_unary_rpc_method_handler(_wrap(handler.unary_unary, call), **kwargs)


def _wrap(behaviour: Any, call: _Call) -> Any:
    """Streaming handlers are either async generators or coroutines that use `context.write`."""
    if inspect.isasyncgenfunction(behaviour):
        return _wrap_stream(behaviour, call)
    return _wrap_unary(behaviour, call)


def server_interceptors() -> list[aio.ServerInterceptor]:
    """The metrics interceptor for a grpc.aio server (put it after tracing's, before the auth
    interceptor); none when metrics are off."""
    return [MetricsInterceptor()] if metrics.enabled() else []
