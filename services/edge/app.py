"""The edge's HTTP application: routes, middlewares, the shared gRPC channel, and the server loop.

One ChatKit request is one pass through `Edge.chatkit`: authenticate (the JWT is verified here, before
any gRPC traffic, and the original header is forwarded so the agent service verifies it again), read
the body within `max_body_bytes`, parse and route it (chatkit.py), then run the one RPC:

- unary operations answer `application/json`, rendered exactly as ChatKitServer renders them;
  dictation (`input.transcribe`) is one of them: the edge decodes and checks the audio first, and
  waits up to `transcribe_timeout_s` (plus a margin) instead of `rpc_timeout_s`;
- streaming operations run `ChatService.Stream`, whose messages are batches of events; the frames
  of a batch go out in one write. They read the FIRST batch before committing the HTTP response, so
  failures that happen before anything was produced (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE...)
  become real HTTP statuses with the JSON error body. Once the SSE response has started, a failure
  becomes a final ChatKit `error` event and the body ends cleanly, which is what ChatKitServer does.

Body limits: `max_body_bytes` (1 MiB) bounds every ChatKit request except `input.transcribe`,
whose body carries the recording in base64 and may reach `transcribe_max_bytes` of audio (10 MiB,
about 13.4 MiB of JSON). The edge reads at most the larger of the two, then answers 413 for any
other operation over `max_body_bytes`.

Cancellation: the server runs with `handler_cancellation=True`, so a browser that goes away cancels
the handler at once (not at the next write); the `finally: call.cancel()` around every RPC then
cancels the gRPC call, which cancels the agent run. No gRPC call outlives its HTTP request.

Errors: every error response, including aiohttp's own 404/405/413 and unexpected exceptions, has the
body `{"error": {"code": "<gRPC status name>", "message": "..."}}`. HTTP statuses that have no row in
the design's error table use: 405 -> UNIMPLEMENTED (the method is not implemented for that path),
413 -> RESOURCE_EXHAUSTED (the body exceeds a server limit; the status stays 413, not 429), other 4xx
-> INVALID_ARGUMENT, other 5xx -> INTERNAL. Details of server-side failures (INTERNAL, UNKNOWN,
DATA_LOSS, UNAVAILABLE, DEADLINE_EXCEEDED) are logged, not sent: they can name internal addresses.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

import aiohttp_cors
import grpc
from aiohttp import hdrs, web
from chatkit.types import InputTranscribeReq
from grpc import aio
from grpc_health.v1 import health_pb2
from pydantic import ValidationError

from services.common import codec, tracing
from services.common.audio import transcribe_body_limit
from services.common.auth import AuthError
from services.common.config import Settings
from services.common.errors import error_body, http_status
from services.common.grpc_auth import current_principal, current_request_id
from services.common.grpc_tls import client_channel
from services.common.identity import build_verifier
from services.common.locale import is_language_tag, preferred_locale
from services.common.logs import current_operation
from services.common.metrics import enabled as metrics_enabled
from services.common.metrics import setup_metrics
from services.edge import metrics
from services.edge.chatkit import (
    BadRequest,
    InvalidReply,
    Metadata,
    StreamingOperation,
    UnaryOperation,
    UnsupportedOperation,
    parse_request,
    route,
)
from services.edge.sse import encode_events, encode_stream_error
from services.edge.uploads import UploadRefused, stream_upload
from switchboard.v1 import chat_pb2, chat_pb2_grpc, upload_pb2_grpc

log = logging.getLogger("switchboard.edge")
access_log = logging.getLogger("switchboard.edge.access")

CHATKIT_PATH: Final = "/chatkit/api"
UPLOAD_PATH: Final = "/chatkit/api/upload"
CHAT_SERVICE: Final = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
_READY_TIMEOUT_S: Final = 1.0
_MB: Final = 1024 * 1024

CHANNEL_OPTIONS: Final[list[tuple[str, Any]]] = [
    # Detect a dead agent connection (a pod gone behind a load balancer) within ~40 s, also while
    # idle. The agent service allows pings every 20 s and pings without calls.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * _MB),
    ("grpc.max_send_message_length", 16 * _MB),
    # Scale-out (docs/scale-out.md): one subchannel per address the target resolves to (every pod of
    # a headless service, every entry of an ipv4: list), calls spread over them with round_robin;
    # transparent retries replay calls a replica refused without starting them; DNS is re-resolved
    # at most every 5 s when connections drop, so replacement pods are found quickly (servers also
    # recycle connections after SWITCHBOARD_GRPC_MAX_CONNECTION_AGE_S, which re-resolves too).
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.enable_retries", 1),
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),
    # A replica that went away (restart, rollout) is tried again after 0.5 s, then at most every 5 s
    # (gRPC's default backoff grows to 120 s, which would keep a returning replica idle).
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
AGENT_SERVICE_CONFIG: Final = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        # Client-side health checking (grpc.health.v1 Watch on every replica): a replica that says
        # NOT_SERVING (it got SIGTERM and is draining) gets no new calls at once, long before its
        # server stops accepting them; its calls in flight are not affected.
        "healthCheckConfig": {"serviceName": CHAT_SERVICE},
    }
)
AGENT_CHANNEL_OPTIONS: Final[list[tuple[str, Any]]] = [
    *[(name, value) for name, value in CHANNEL_OPTIONS if name != "grpc.service_config"],
    ("grpc.service_config", AGENT_SERVICE_CONFIG),
]
"""The channel for ChatService calls: CHANNEL_OPTIONS plus client-side health checking. Readiness
probes use a channel without it (they must reach a replica to ask it, healthy or not)."""
CONNECTION_ARG: Final = "switchboard.agent_connection"
"""A channel argument of our own, different for each of the SWITCHBOARD_AGENT_CONNECTIONS channels."""

SSE_HEADERS: Final = {
    hdrs.CONTENT_TYPE: "text/event-stream",
    hdrs.CACHE_CONTROL: "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}
SSE_PING: Final = b": ping\n\n"
"""An SSE comment: clients (the ChatKit UI, EventSource) ignore it; proxies see traffic."""
SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""Sent with every response."""
CHATKIT_SCRIPT_ORIGIN: Final = "https://cdn.platform.openai.com"
DEMO_CSP: Final = "; ".join(
    [
        "default-src 'self'",
        # The ChatKit web component and the page's own inline bootstrap script (its configuration
        # is JSON in a non-executable <script type="application/json">).
        f"script-src 'self' 'unsafe-inline' {CHATKIT_SCRIPT_ORIGIN}",
        "style-src 'self' 'unsafe-inline'",
        # ChatKit renders its UI in an iframe from OpenAI's CDN, which calls this edge and loads
        # previews (presigned object-store URLs) and fonts from wherever they are.
        f"frame-src {CHATKIT_SCRIPT_ORIGIN} https://*.openai.com",
        "connect-src 'self' https:",
        "img-src 'self' data: blob: https: http:",
        "font-src 'self' data: https:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""The demo page's Content-Security-Policy: scripts only from this origin and ChatKit's CDN."""
RETRY_AFTER_METADATA: Final = "retry-after"
_RETRY_AFTER: Final = re.compile(r"^[0-9]{1,6}$")
CORS_ALLOW_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "X-Request-Id",
    "Accept-Language",
    "Chatkit-Device-Id",
    "Chatkit-Frame-Instance-Id",
)
CORS_EXPOSE_HEADERS: Final = ("X-Request-Id", "Retry-After")
CORS_MAX_AGE_S: Final = 600

# After the stream started, these failures may succeed on a retry: the UI offers a retry button.
RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Server-side failures whose gRPC details are logged but replaced by these messages for clients.
_PRIVATE_DETAILS: Final = {
    grpc.StatusCode.UNAVAILABLE: "the agent service is unavailable; try again later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the agent service did not answer in time",
    grpc.StatusCode.INTERNAL: "internal error in the agent service",
    grpc.StatusCode.UNKNOWN: "internal error in the agent service",
    grpc.StatusCode.DATA_LOSS: "internal error in the agent service",
}
_MAX_DETAILS_CHARS: Final = 500
# RPCs served by the upload service: their failures name it, and RESOURCE_EXHAUSTED without a
# retry-after hint (a file over the size limit) is HTTP 413 there; with one (a limit that frees up
# later: the user's uploads at once or bytes of the day, the tenant's storage, the request rate) it
# is 429 with Retry-After, as for every other RPC.
UPLOAD_RPCS: Final = frozenset({"Upload", "CreateAttachment", "DeleteAttachment"})
TRANSCRIBE_RPC: Final = "Transcribe"
TRANSCRIBE_DEADLINE_MARGIN_S: Final = 5.0
"""The edge waits for a transcription `SWITCHBOARD_TRANSCRIBE_TIMEOUT_S` plus this (the agent
service enforces the timeout itself and answers UNAVAILABLE with a reason)."""

# What an HTTP status means as a gRPC status name, for errors aiohttp raises itself.
_CODE_FOR_HTTP: Final = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Request ids go into gRPC metadata (printable ASCII) and logs.
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

REQUEST_ID: Final = web.RequestKey("request_id", str)
OPERATION: Final = web.RequestKey("operation", str)

_DEMO_TEMPLATE: Final = Path(__file__).with_name("demo.html")
_DEMO_PLACEHOLDER: Final = "__SWITCHBOARD_CONFIG__"


# --------------------------------------------------------------------------- error responses


def json_error(
    code: grpc.StatusCode,
    message: str,
    *,
    status: int | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> web.Response:
    """An error response with the JSON body of the error model; the status follows the error table."""
    response = web.Response(
        status=status if status is not None else http_status(code),
        body=error_body(code, message),
        content_type="application/json",
    )
    for name, value in headers:
        response.headers[name] = value
    return response


def _unauthenticated(message: str, *, invalid: bool) -> web.Response:
    # RFC 6750: no `error` attribute when the request had no credentials at all.
    challenge = 'Bearer error="invalid_token"' if invalid else "Bearer"
    return json_error(grpc.StatusCode.UNAUTHENTICATED, message, headers=[(hdrs.WWW_AUTHENTICATE, challenge)])


def rpc_error_response(error: aio.AioRpcError, request_id: str, rpc: str) -> web.Response:
    """The HTTP answer for an RPC that failed before anything was sent to the client."""
    code = error.code()
    details = (error.details() or "").strip()
    log.warning("[%s] %s failed: %s %s", request_id, rpc, code.name, details)
    message = _PRIVATE_DETAILS.get(code) or details[:_MAX_DETAILS_CHARS] or code.name.lower()
    retry_after = _retry_after(error)
    if rpc in UPLOAD_RPCS:
        message = message.replace("the agent service", "the upload service")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not retry_after:
            return json_error(code, message, status=413)
    if rpc == TRANSCRIBE_RPC and code == grpc.StatusCode.UNAVAILABLE:
        message = "dictation is unavailable right now; try again later"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return _unauthenticated(message, invalid=True)
    return json_error(code, message, headers=retry_after)


def _retry_after(error: aio.AioRpcError) -> list[tuple[str, str]]:
    """`Retry-After` from the call's trailing metadata `retry-after` (whole seconds), if sane."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER_METADATA and isinstance(value, str) and _RETRY_AFTER.match(value):
            return [(hdrs.RETRY_AFTER, value)]
    return []


def _upload_error_response(error: aio.AioRpcError, request_id: str) -> web.Response:
    """A failed direct upload: as any upload RPC (a limit that frees up later is 429 with
    Retry-After, a file too large 413), except that an upload cut for being too slow (or outliving
    its deadline) is 408: the client was slow."""
    code = error.code()
    details = (error.details() or "").strip()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        log.warning("[%s] Upload cut: %s %s", request_id, code.name, details)
        return json_error(code, details[:_MAX_DETAILS_CHARS] or "the upload took too long", status=408)
    return rpc_error_response(error, request_id, "Upload")


def _http_error_response(request: web.Request, error: web.HTTPException) -> web.Response:
    status = error.status
    code = _CODE_FOR_HTTP.get(
        status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT
    )
    if status == 404:
        message = "no such endpoint"
    elif status == 405:
        message = f"method {request.method} is not allowed here"
    elif status == 413:
        message = f"the request body exceeds the limit of {request.client_max_size} bytes"
    else:
        default_text = f"{status}: {error.reason}"
        message = error.text if error.text and error.text != default_text else error.reason
        message = message[:_MAX_DETAILS_CHARS]
    keep = [
        (name, value)
        for name, value in error.headers.items()
        if name.lower() not in ("content-type", "content-length")
    ]
    return json_error(code, message, status=status, headers=keep)


# --------------------------------------------------------------------------- middlewares and signals


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


@web.middleware
async def request_context_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Assign the request id (the client's `X-Request-Id` if sane, else a uuid4 hex) and log access.

    One access line per request: id, method, path, ChatKit operation, status and duration (for a
    stream, until it ended). A handler cancelled by a client disconnect is logged as 499.
    """
    request_id = _request_id(request)
    request[REQUEST_ID] = request_id
    current_request_id.set(request_id)  # for the logs (services/common/logs.py)
    tracing.set_request_id(request_id)  # on the request's span, when tracing is on
    started = time.perf_counter()
    outcome = _Outcome()
    try:
        return await outcome.of(handler, request)
    finally:
        elapsed = time.perf_counter() - started
        access_log.info(
            "[%s] %s %s %s %d %.1fms",
            request_id,
            request.method,
            request.path,
            request.get(OPERATION, "-"),
            outcome.status,
            elapsed * 1000,
        )


@web.middleware
async def metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Count and time every request by route, operation and status (services/edge/metrics.py); the
    application has it only when metrics are on."""
    started = time.perf_counter()
    outcome = _Outcome()
    try:
        return await outcome.of(handler, request)
    finally:
        metrics.observe(request, request.get(OPERATION, "-"), outcome.status, time.perf_counter() - started)


class _Outcome:
    """The HTTP status a request ends with, as a middleware sees it: the response's, an HTTP
    exception's, 499 when the client went away (the handler was cancelled), else 500."""

    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 500

    async def of(
        self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], request: web.Request
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            self.status = error.status
            raise
        except asyncio.CancelledError:
            self.status = 499
            raise
        self.status = response.status
        return response


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors and unexpected exceptions into JSON error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _http_error_response(request, error)
    except Exception:
        log.exception(
            "[%s] unhandled error in %s %s", request.get(REQUEST_ID, "-"), request.method, request.path
        )
        return json_error(grpc.StatusCode.INTERNAL, "internal error")


async def _add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id


async def _add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# --------------------------------------------------------------------------- the edge


def render_demo_page(template: str, *, token: str, domain_key: str) -> str:
    """The demo page with its configuration as JSON that is safe inside a <script> element.

    `json.dumps` escapes quotes and non-ASCII; replacing `<`, `>` and `&` with `\\u00XX` escapes
    means no value can close the element (`</script>`) or open a comment, whatever it contains.
    """
    config = {
        "token": token,
        "domainKey": domain_key,
        "apiUrl": CHATKIT_PATH,
        "uploadUrl": UPLOAD_PATH,
    }
    blob = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return template.replace(_DEMO_PLACEHOLDER, blob)


class Edge:
    """The handlers and their shared state: settings, the token verifier and the gRPC channels.

    The channel (with the ChatService stub and the health-check callable) exists between startup
    and cleanup; it multiplexes every request's RPC over HTTP/2, so there is nothing per request to
    pool. The edge keeps no other state. With `SWITCHBOARD_AGENT_CONNECTIONS=K` there are K such
    channels to the agent service, each with connections of its own, and calls take them in turn:
    an agent service with workers hands each connection to one worker (SO_REUSEPORT), so K
    connections spread one edge's calls over up to K workers.

    With several agent replicas that channel holds a subchannel (HTTP/2 connection) per replica
    and balances calls over the healthy ones (`round_robin` with client-side health checking, see
    AGENT_CHANNEL_OPTIONS); readiness probes go through a second, unfiltered channel, so /readyz
    still reports what a replica says about itself. `SWITCHBOARD_AGENT_ADDRESS` may be
    `dns:///agent:50051` (a Kubernetes headless service) or a comma-separated list of `ip:port`
    for local runs (see `services.common.config.grpc_target`).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = build_verifier(settings)
        self.demo_page: str | None = None
        if settings.demo_token:
            self.demo_page = render_demo_page(
                _DEMO_TEMPLATE.read_text(encoding="utf-8"),
                token=settings.demo_token,
                domain_key=settings.chatkit_domain_key,
            )
        self._agents: list[tuple[aio.Channel, chat_pb2_grpc.ChatServiceAsyncStub]] = []
        self._turn = itertools.count()
        self._uploads: upload_pb2_grpc.UploadServiceAsyncStub | None = None
        self._health_check: (
            aio.UnaryUnaryMultiCallable[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse] | None
        ) = None
        self._draining = False
        self.transcribe_body_bytes = transcribe_body_limit(settings.transcribe_max_bytes)
        """The largest `input.transcribe` body read (the audio in base64 and the rest of the JSON)."""
        # Parsed here so that a bad address list stops the edge at startup with the reason.
        self.agent_target = settings.agent_target
        self.upload_target = settings.upload_target

    # ----------------------------------------------------------------- lifecycle

    async def channel_context(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: open the channels on startup, close them on cleanup."""
        # Channels with equal options share their connections: a distinct argument per channel
        # gives each its own (SWITCHBOARD_AGENT_CONNECTIONS).
        channels = [
            client_channel(
                self.agent_target, self.settings, options=[*AGENT_CHANNEL_OPTIONS, (CONNECTION_ARG, index)]
            )
            for index in range(self.settings.agent_connections)
        ]
        probe_channel = client_channel(self.agent_target, self.settings, options=CHANNEL_OPTIONS)
        upload_channel = client_channel(self.upload_target, self.settings, options=CHANNEL_OPTIONS)
        self._agents = [(channel, chat_pb2_grpc.ChatServiceStub(channel)) for channel in channels]
        self._uploads = upload_pb2_grpc.UploadServiceStub(upload_channel)
        self._health_check = probe_channel.unary_unary(
            _HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            yield
        finally:
            self._agents = []
            self._uploads = None
            self._health_check = None
            for channel in channels:
                await channel.close()
            await probe_channel.close()
            await upload_channel.close()

    async def on_shutdown(self, app: web.Application) -> None:
        """From now on /readyz answers 503, so load balancers stop sending new work while streams drain."""
        self._draining = True

    # ----------------------------------------------------------------- probes

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process serves HTTP. It does not depend on the agent service."""
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: the agent service answers grpc.health.v1 Check with SERVING within ~1 s."""
        if self._draining or self._health_check is None:
            return json_error(grpc.StatusCode.UNAVAILABLE, "the edge is shutting down")
        problem = await self._agent_problem()
        if problem is not None:
            log.warning("[%s] not ready: %s", request[REQUEST_ID], problem)
            return json_error(grpc.StatusCode.UNAVAILABLE, f"the agent service is not ready ({problem})")
        return web.Response(body=b'{"status":"ready"}', content_type="application/json")

    async def _agent_problem(self) -> str | None:
        """None when the agent serves ChatService; else a short reason.

        The check asks for "switchboard.v1.ChatService" and falls back to the server's overall
        status ("") when the server does not register per-service statuses (NOT_FOUND).
        """
        assert self._health_check is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT_S
        for service in (CHAT_SERVICE, ""):
            call = self._health_check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=max(deadline - loop.time(), 0.001),
            )
            try:
                reply = await call
            except aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND and service:
                    continue
                return error.code().name
            finally:
                call.cancel()
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return None
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return "NOT_FOUND"

    # ----------------------------------------------------------------- demo page

    async def demo(self, request: web.Request) -> web.Response:
        """The ChatKit demo page (only routed when `demo_token` is set)."""
        assert self.demo_page is not None
        return web.Response(
            text=self.demo_page,
            content_type="text/html",
            headers={
                hdrs.CACHE_CONTROL: "no-store",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": DEMO_CSP,
            },
        )

    # ----------------------------------------------------------------- ChatKit

    def _metadata(self, request: web.Request, authorization: str) -> Metadata:
        """The call's metadata: the caller's token, the request id and, when `Accept-Language` names
        a well-formed BCP 47 tag, that tag (the agent service uses its default locale otherwise)."""
        metadata = [("authorization", authorization), ("x-request-id", request[REQUEST_ID])]
        language = preferred_locale(request.headers.get(hdrs.ACCEPT_LANGUAGE), default="")
        if language and is_language_tag(language):
            metadata.append(("accept-language", language))
        return metadata

    async def chatkit(self, request: web.Request) -> web.StreamResponse:
        """`POST /chatkit/api`: one ChatKit operation -> one RPC (see the module docstring)."""
        request_id = request[REQUEST_ID]
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        try:
            principal = await self.verifier.verify_header(authorization)
        except AuthError as error:
            return _unauthenticated(str(error), invalid=bool(authorization))
        assert authorization is not None
        current_principal.set(principal)

        limit = self.settings.max_body_bytes
        read_limit = max(limit, self.transcribe_body_bytes)  # see "Body limits" above
        if request.content_length is not None and request.content_length > read_limit:
            return self._too_large()
        try:
            body = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()

        try:
            parsed = parse_request(body)
        except BadRequest as error:
            if len(body) > limit:
                return self._too_large()
            return json_error(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        if len(body) > limit and not isinstance(parsed, InputTranscribeReq):
            return self._too_large()
        try:
            operation = route(
                parsed,
                self._require_stub(),
                self._uploads,
                max_audio_bytes=self.settings.transcribe_max_bytes,
            )
        except BadRequest as error:
            return json_error(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        request[OPERATION] = operation.type
        current_operation.set(operation.type)
        log.debug(
            "[%s] %s for tenant %s user %s", request_id, operation.type, principal.tenant, principal.user
        )

        metadata = self._metadata(request, authorization)
        match operation:
            case StreamingOperation():
                return await self._stream(request, operation, metadata)
            case UnaryOperation():
                deadline_s = self.settings.rpc_timeout_s
                if operation.rpc == TRANSCRIBE_RPC:
                    deadline_s = self.settings.transcribe_timeout_s + TRANSCRIBE_DEADLINE_MARGIN_S
                try:
                    payload = await operation.run(metadata, deadline_s=deadline_s)
                except aio.AioRpcError as error:
                    return rpc_error_response(error, request_id, operation.rpc)
                except InvalidReply:
                    log.exception("[%s] %s", request_id, operation.rpc)
                    return json_error(grpc.StatusCode.INTERNAL, "the agent service sent an invalid reply")
                return web.Response(body=payload, content_type="application/json")
            case UnsupportedOperation():
                return json_error(grpc.StatusCode.UNIMPLEMENTED, operation.message)

    async def upload(self, request: web.Request) -> web.Response:
        """`POST /chatkit/api/upload`: a direct upload (multipart field `file`), see uploads.py."""
        request_id = request[REQUEST_ID]
        authorization = request.headers.get(hdrs.AUTHORIZATION)
        try:
            await self.verifier.verify_header(authorization)
        except AuthError as error:
            return _unauthenticated(str(error), invalid=bool(authorization))
        assert authorization is not None
        request[OPERATION] = "upload"
        current_operation.set("upload")
        if self._uploads is None:
            return json_error(grpc.StatusCode.UNAVAILABLE, "the edge is not connected to the upload service")
        try:
            body = await stream_upload(
                request,
                self._uploads,
                tuple(self._metadata(request, authorization)),
                max_bytes=self.settings.upload_max_bytes,
                timeout_s=self.settings.stream_timeout_s,
                chunk_timeout_s=self.settings.upload_chunk_timeout_s,
            )
        except UploadRefused as refused:
            return json_error(refused.code, refused.message, status=refused.status)
        except aio.AioRpcError as error:
            return _upload_error_response(error, request_id)
        except (codec.CodecError, ValidationError):
            log.exception("[%s] the upload service sent an invalid attachment", request_id)
            return json_error(grpc.StatusCode.INTERNAL, "the upload service sent an invalid reply")
        return web.Response(body=body, content_type="application/json")

    def _too_large(self) -> web.Response:
        message = (
            f"the request body exceeds the limit of {self.settings.max_body_bytes} bytes "
            f"({self.transcribe_body_bytes} bytes for input.transcribe)"
        )
        return json_error(grpc.StatusCode.RESOURCE_EXHAUSTED, message, status=413)

    def _require_stub(self) -> chat_pb2_grpc.ChatServiceAsyncStub:
        """The ChatService stub of the next agent channel in turn that is connected (READY); else of
        one that is connecting or idle (a call there waits for the connection); else the next one.
        A channel whose connection broke (its worker died) is passed over until it has reconnected,
        instead of failing calls meanwhile, and an idle one is asked to connect when its turn comes."""
        agents = self._agents
        if not agents:
            raise web.HTTPServiceUnavailable(text="the edge is not connected to the agent service")
        start = next(self._turn)
        count = len(agents)
        if count == 1:
            return agents[0][1]
        waiting: chat_pb2_grpc.ChatServiceAsyncStub | None = None
        for offset in range(count):
            channel, stub = agents[(start + offset) % count]
            state = channel.get_state(try_to_connect=True)
            if state is grpc.ChannelConnectivity.READY:
                return stub
            if waiting is None and state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                waiting = stub
        return waiting or agents[start % count][1]

    async def _stream(
        self, request: web.Request, operation: StreamingOperation, metadata: Metadata
    ) -> web.StreamResponse:
        """Run a streaming RPC as SSE; the call is cancelled whenever this handler exits."""
        request_id = request[REQUEST_ID]
        call = operation.start(metadata, self.settings.stream_timeout_s)
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            # Peek at the first batch before committing to a 200 event stream.
            try:
                first = await _first_batch(call)
            except aio.AioRpcError as error:
                return rpc_error_response(error, request_id, operation.rpc)
            frames, invalid = encode_events(first.events) if first is not None else (b"", None)
            if invalid is not None and not frames:  # the very first event: nothing is out yet
                log.error("[%s] %s sent an invalid event", request_id, operation.rpc, exc_info=invalid)
                return json_error(grpc.StatusCode.INTERNAL, "the agent service sent an invalid event")

            await response.prepare(request)
            metrics.STREAMS_IN_FLIGHT.inc()
            try:
                if invalid is not None:
                    log.error("[%s] %s sent an invalid event", request_id, operation.rpc, exc_info=invalid)
                    await response.write(frames + encode_stream_error(allow_retry=True))
                elif first is not None:  # None: an empty stream (ChatKit sends those too), just end it
                    await response.write(frames)
                    await self._pump(call, response, request_id, operation.rpc)
            except ConnectionResetError:
                raise
            except Exception:
                # The headers are out: a JSON error is no longer possible, end the stream in-band.
                log.exception("[%s] %s: unexpected error mid-stream", request_id, operation.rpc)
                await response.write(encode_stream_error(allow_retry=True))
            await response.write_eof()
        except ConnectionResetError:
            log.info("[%s] client disconnected during %s", request_id, operation.rpc)
        finally:
            call.cancel()  # a no-op when the stream already ended
            if response.prepared:
                metrics.STREAMS_IN_FLIGHT.dec()
        return response

    async def _pump(
        self,
        call: aio.UnaryStreamCall[Any, chat_pb2.StreamResponse],
        response: web.StreamResponse,
        request_id: str,
        rpc: str,
    ) -> None:
        """Copy batches of events to the client until EOF, each batch's frames in one write; a failure
        ends the stream with a ChatKit error event (after the frames of the events before it).

        With `sse_keepalive_s` set, a wait longer than that for the next batch sends `: ping`."""
        keepalive = self.settings.sse_keepalive_s
        while True:
            try:
                batch = await (self._read_with_pings(call, response, keepalive) if keepalive else call.read())
            except aio.AioRpcError as error:
                code = error.code()
                log.warning("[%s] %s failed mid-stream: %s %s", request_id, rpc, code.name, error.details())
                await response.write(encode_stream_error(allow_retry=code in RETRYABLE))
                return
            if not isinstance(batch, chat_pb2.StreamResponse):
                return  # grpc.aio.EOF: the agent finished the turn
            frames, invalid = encode_events(batch.events)
            if invalid is not None:
                log.error("[%s] %s sent an invalid event", request_id, rpc, exc_info=invalid)
                await response.write(frames + encode_stream_error(allow_retry=True))
                return
            if frames:  # an empty batch (never sent by the agent) is skipped
                await response.write(frames)

    @staticmethod
    async def _read_with_pings(
        call: aio.UnaryStreamCall[Any, chat_pb2.StreamResponse],
        response: web.StreamResponse,
        interval: float,
    ) -> object:
        """`call.read()`, writing `SSE_PING` every `interval` seconds while it waits (the read itself
        is never cancelled by a ping: cancelling it would cancel the call)."""
        read = asyncio.ensure_future(call.read())
        try:
            while True:
                done, _ = await asyncio.wait({read}, timeout=interval)
                if done:
                    return read.result()
                await response.write(SSE_PING)
        finally:
            if not read.done():
                read.cancel()


async def _first_batch(
    call: aio.UnaryStreamCall[Any, chat_pb2.StreamResponse],
) -> chat_pb2.StreamResponse | None:
    """The call's first message with events (empty ones are skipped); None when it ended first."""
    while True:
        batch = await call.read()
        if not isinstance(batch, chat_pb2.StreamResponse):
            return None  # grpc.aio.EOF
        if batch.events:
            return batch


EDGE: Final = web.AppKey("edge", Edge)
"""The application's `Edge` (its settings and channel), e.g. `app[EDGE].settings`."""


# --------------------------------------------------------------------------- assembly


def _setup_cors(app: web.Application, routes: Iterable[web.AbstractRoute], origins: list[str]) -> None:
    options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
        allow_credentials=False,  # bearer tokens travel in a header, not in cookies
        expose_headers=CORS_EXPOSE_HEADERS,
        allow_headers=CORS_ALLOW_HEADERS,
        allow_methods=("GET", "POST"),
        max_age=CORS_MAX_AGE_S,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for app_route in routes:
        cors.add(app_route)


def create_app(settings: Settings) -> web.Application:
    """The edge application: routes, middlewares, CORS, and the gRPC channel lifecycle; with metrics
    off (`run_edge` calls `setup_metrics` first), neither the metrics middleware nor `GET /metrics`.

    Reads the JWT secret (and the demo template when `demo_token` is set) once, here, so no request
    does file I/O. The channel opens on startup and closes on cleanup.
    """
    edge = Edge(settings)
    observed = [metrics_middleware] if metrics_enabled() else []
    app = web.Application(
        client_max_size=max(settings.max_body_bytes, edge.transcribe_body_bytes),
        middlewares=[request_context_middleware, *observed, error_middleware],
    )
    app[EDGE] = edge
    app.cleanup_ctx.append(edge.channel_context)
    app.on_shutdown.append(edge.on_shutdown)
    app.on_response_prepare.append(_add_request_id_header)
    app.on_response_prepare.append(_add_security_headers)

    routes = [
        app.router.add_post(CHATKIT_PATH, edge.chatkit),
        app.router.add_post(UPLOAD_PATH, edge.upload),
        app.router.add_get("/healthz", edge.healthz),
        app.router.add_get("/readyz", edge.readyz),
    ]
    if metrics_enabled():
        app.router.add_get("/metrics", metrics.metrics_handler)  # no CORS: for Prometheus, not browsers
    if edge.demo_page is not None:
        routes.append(app.router.add_get("/", edge.demo))
    if settings.cors_origins:
        _setup_cors(app, routes, settings.cors_origins)
    return app


def make_runner(app: web.Application, settings: Settings) -> web.AppRunner:
    """The AppRunner the edge runs on (tests use it too, to run exactly what production runs).

    `handler_cancellation=True` cancels a handler as soon as its client disconnects (aiohttp's
    default waits for the next write). aiohttp's access log is off: `request_context_middleware`
    writes one line per request with the request id. In-flight streams get `shutdown_grace_s` to
    finish on shutdown, then their handlers are cancelled, which cancels their RPCs.
    """
    return web.AppRunner(
        app,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_s,
    )


async def run_edge(settings: Settings) -> None:
    """Serve the edge on `edge_host:edge_port` until SIGTERM or SIGINT, then shut down gracefully."""
    tracing.setup_tracing("edge", http_server=True)  # before the app: it instruments web.Application
    setup_metrics(settings.metrics_enabled, metrics)
    runner = make_runner(create_app(settings), settings)
    await runner.setup()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, stopping.set)
                handled.append(signum)
            except NotImplementedError:  # pragma: no cover - not on Windows event loops
                pass
        site = web.TCPSite(runner, settings.edge_host, settings.edge_port)
        await site.start()
        for host, port, *_ in runner.addresses:
            log.info("edge listening on http://%s:%s", f"[{host}]" if ":" in host else host, port)
        await stopping.wait()
        log.info("edge shutting down")
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        tracing.shutdown_tracing()
