"""A grpc.aio server interceptor that verifies the bearer JWT on every call.

It follows grpc's documented pattern: resolve the real handler first to learn the RPC's shape, then,
when the token is missing or bad, return a handler of the same shape that aborts with
UNAUTHENTICATED. The verified Principal reaches handlers through a ContextVar (grpc runs the handler
in the interceptor's context). Health checks and reflection stay open, as probes need them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc import aio

from services.common.auth import AuthError, Principal, TokenVerifier
from services.common.locale import preferred_locale

_OPEN_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # grpc's RpcMethodHandler is generic only in its type stubs
    Handler = grpc.RpcMethodHandler

current_principal: ContextVar[Principal] = ContextVar("current_principal")
current_request_id: ContextVar[str] = ContextVar("current_request_id", default="-")
current_locale: ContextVar[str] = ContextVar("current_locale", default="en")
current_authorization: ContextVar[str] = ContextVar("current_authorization", default="")
"""The caller's `authorization` header, for calls made on the caller's behalf (agent -> upload)."""


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for name, value in details.invocation_metadata or ():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return None


def _aborting_handler(handler: Handler, message: str) -> Handler:
    async def abort_unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator, like the real handler

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort_unary, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kwargs)
    return grpc.unary_unary_rpc_method_handler(abort_unary, **kwargs)


class AuthInterceptor(aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        current_request_id.set(_metadata_value(handler_call_details, "x-request-id") or "-")
        locale = _metadata_value(handler_call_details, "accept-language")
        if locale:
            current_locale.set(preferred_locale(locale))  # a BCP 47 tag or "en", never free text
        authorization = _metadata_value(handler_call_details, "authorization")
        try:
            principal = await self._verifier.verify_header(authorization)
        except AuthError as error:
            return _aborting_handler(handler, str(error))
        current_principal.set(principal)
        current_authorization.set(authorization or "")
        return handler
