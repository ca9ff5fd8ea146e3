"""OpenTelemetry traces for every service: off by default, switched on by the standard `OTEL_*` variables.

Tracing is ON when `OTEL_TRACES_EXPORTER` names an exporter other than `none` (`otlp`, `console`, or
both, comma-separated), or, with `OTEL_TRACES_EXPORTER` unset, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. `OTEL_SDK_DISABLED=true` turns it off whatever else is
set. (The OpenTelemetry specification makes `otlp` the default exporter; Switchboard does not: with no
variable set nothing is traced, and nothing of the SDK or the instrumentations is even imported.)

When on, `setup_tracing` (called once by each service at start) installs an SDK `TracerProvider`
with a batch span processor per exporter. Everything else comes from the standard variables, read
by the SDK itself: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (the default service name is
`switchboard-edge`, `switchboard-agent` or `switchboard-upload`), `OTEL_EXPORTER_OTLP_*` (endpoint,
headers, timeout, compression; OTLP over HTTP with protobuf, the only protocol installed),
`OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*` (batching), `OTEL_PROPAGATORS` (W3C `traceparent` by
default).

What is traced (the ecosystem's instrumentations, wired here so each service has one call to make):
- the edge's HTTP requests (aiohttp server; `/healthz`, `/readyz` and `/metrics` are left out unless
  `OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS` or `OTEL_PYTHON_EXCLUDED_URLS` says otherwise);
- every gRPC call, client side (`client_interceptors`, used by the one channel factory in
  `grpc_tls.py`) and server side (`server_interceptors`); the client interceptor sends `traceparent`
  in the call's metadata, so one ChatKit request is one trace across the processes. Health checks
  and reflection are not traced. The request id (`x-request-id`) becomes the attribute
  `switchboard.request_id` of the edge's span and of each server span, and the server span of
  `ChatService.Stream` names the streaming operation it ran in `switchboard.operation`;
- the store: one span per transaction (`store <operation>`), the SQL statements under it
  (SQLAlchemy instrumentation: the statement text with placeholders, never parameter values);
- the Agents SDK's runs, model calls, tool calls and handoffs
  (`services/agent_service/agents/otel_bridge.py`).

No message content goes into a span. Spans are exported in batches in the background; a service
flushes what is pending when it stops (`shutdown_tracing`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc import aio

from services.common import logs

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from sqlalchemy import Engine

    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

log = logging.getLogger(__name__)

REQUEST_ID_ATTRIBUTE: Final = "switchboard.request_id"
OPERATION_ATTRIBUTE: Final = "switchboard.operation"
EXPORTERS: Final = ("otlp", "console")
DEFAULT_EXCLUDED_URLS: Final = "/healthz,/readyz,/metrics"
_UNTRACED_GRPC: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_provider: TracerProvider | None = None


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the `OTEL_*` variables ask for traces (module docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(name.strip() not in ("", "none") for name in exporters.split(","))
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


def enabled() -> bool:
    """Whether this process traces (`setup_tracing` installed a provider)."""
    return _provider is not None


def setup_tracing(service: str, *, http_server: bool = False) -> bool:
    """Install the tracer provider when the environment asks for traces; whether it did.

    `service` is the default `service.name` suffix (`switchboard-<service>`); `http_server`
    instruments aiohttp's `web.Application` (the edge): call this before the application is made.
    """
    global _provider
    if _provider is not None or not wanted():
        return _provider is not None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    attributes: dict[str, str] = {}
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named:
        attributes[SERVICE_NAME] = f"switchboard-{service}"
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]
    for name in dict.fromkeys(n for n in names if n and n != "none"):
        exporter: SpanExporter
        if name == "otlp":
            exporter = _otlp_exporter()
        elif name == "console":
            exporter = ConsoleSpanExporter()
        else:
            log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored (known: %s)", name, EXPORTERS)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _provider = provider
    logs.trace_ids = _current_trace_ids
    if http_server:
        if not (
            os.environ.get("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS")
            or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
        ):
            os.environ["OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS"] = DEFAULT_EXCLUDED_URLS
        from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor

        AioHttpServerInstrumentor().instrument(tracer_provider=provider)
    log.info("tracing on: %s", ", ".join(_describe(provider)) or "no exporter")
    return True


def _otlp_exporter() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: exporting with http/protobuf", protocol)
    return OTLPSpanExporter()


def _describe(provider: TracerProvider) -> list[str]:
    described = []
    for processor in getattr(provider._active_span_processor, "_span_processors", ()):
        exporter = getattr(getattr(processor, "_batch_processor", processor), "_exporter", None)
        endpoint = getattr(exporter, "_endpoint", None)
        described.append(type(exporter).__name__ + (f" to {endpoint}" if endpoint else ""))
    return described


def shutdown_tracing() -> None:
    """Export what is pending and stop the exporters (a service's last step; a no-op when off)."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def _current_trace_ids() -> tuple[str, str]:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return "-", "-"
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


# --------------------------------------------------------------------------- request ids


def set_request_id(request_id: str) -> None:
    """Record the request id on the current span (the edge's request span)."""
    if _provider is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attribute(REQUEST_ID_ATTRIBUTE, request_id)


def set_operation(operation: str) -> None:
    """Record the streaming operation on the current span (the server span of `ChatService.Stream`,
    whose name is the RPC's, not the operation's)."""
    if _provider is not None:
        from opentelemetry import trace

        trace.get_current_span().set_attribute(OPERATION_ATTRIBUTE, operation)


# --------------------------------------------------------------------------- gRPC


def _traced(details: Any) -> bool:
    method = getattr(details, "method", None)
    if isinstance(method, bytes):
        method = method.decode()
    return not str(method or "").startswith(_UNTRACED_GRPC)


def client_interceptors() -> list[aio.ClientInterceptor]:
    """The OpenTelemetry client interceptors for a grpc.aio channel; none when tracing is off."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors(tracer_provider=_provider, filter_=_traced))  # type: ignore[no-untyped-call]


def server_interceptors() -> list[aio.ServerInterceptor]:
    """The interceptors to put FIRST on a grpc.aio server: the OpenTelemetry server span (parent
    taken from the caller's `traceparent`), then the request id on it; none when tracing is off."""
    if _provider is None:
        return []
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import _aio_server
    from opentelemetry.instrumentation.grpc.version import __version__

    class ServerInterceptor(_aio_server.OpenTelemetryAioServerInterceptor):
        """The instrumentation's interceptor, also for streaming handlers in the writer style
        (`await context.write(...)`, what our services use): upstream wraps every streaming
        handler with `async for` (opentelemetry-python-contrib issue #3066). A writer-style
        handler is a coroutine: it is wrapped as the unary ones are, its span lasting the call."""

        def _intercept_aio_server_stream(self, behavior: Any, handler_call_details: Any) -> Any:
            if inspect.isasyncgenfunction(behavior):
                return super()._intercept_aio_server_stream(behavior, handler_call_details)  # type: ignore[no-untyped-call]
            return self._intercept_aio_server_unary(behavior, handler_call_details)  # type: ignore[no-untyped-call]

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.grpc",
        __version__,
        _provider,
        schema_url="https://opentelemetry.io/schemas/1.11.0",
    )
    server = ServerInterceptor(tracer, filter_=_traced)  # type: ignore[no-untyped-call]
    return [server, _RequestIdInterceptor()]


class _RequestIdInterceptor(aio.ServerInterceptor):
    """Sets `switchboard.request_id` (from the `x-request-id` metadata) on the call's server span."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        request_id = next(
            (v for k, v in handler_call_details.invocation_metadata or () if k == "x-request-id"), None
        )
        if handler is None or not request_id:
            return handler
        value = request_id if isinstance(request_id, str) else request_id.decode(errors="replace")
        return _wrap_handler(handler, lambda: set_request_id(value))


def _wrap_handler(handler: Handler, before: Callable[[], None]) -> Handler:
    def wrap(behaviour: Any) -> Any:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                before()
                async for response in behaviour(request, context):
                    yield response

            return stream

        async def unary(request: Any, context: Any) -> Any:
            before()
            return await behaviour(request, context)

        return unary

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)


# --------------------------------------------------------------------------- the store


def instrument_engine(engine: Engine) -> None:
    """Trace `engine`'s SQL statements (SQLAlchemy instrumentation); a no-op when tracing is off."""
    if _provider is None:
        return
    from opentelemetry import trace
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import NoOpUpDownCounter

    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__, _provider)
    # Connection-pool usage is a metric (Prometheus has it: switchboard_store_pool_...), not traced.
    EngineTracer(tracer, engine, NoOpUpDownCounter("db.client.connections.usage"))  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _span(name: str, attributes: Mapping[str, str]) -> Iterator[None]:
    from opentelemetry import trace

    with trace.get_tracer("switchboard", tracer_provider=_provider).start_as_current_span(
        name, attributes=attributes
    ):
        yield


def span(name: str, **attributes: str) -> contextlib.AbstractContextManager[None]:
    """A span of ours around a block (the current span is its parent); nothing when tracing is off."""
    if _provider is None:
        return contextlib.nullcontext()
    return _span(name, attributes)
