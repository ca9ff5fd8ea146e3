"""What every Switchboard gRPC server shares: channel arguments, reflection and the graceful stop."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from grpc import StatusCode, aio
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from services.common.config import Settings
from services.common.errors import grpc_status
from services.common.grpc_auth import current_request_id
from switchboard.app import SwitchboardError

log = logging.getLogger(__name__)

MAX_CONNECTION_AGE_GRACE_MS: Final = 10 * 60_000
"""How long calls on a recycled connection may still run: above the edge's stream deadline (300 s)."""


def server_options(settings: Settings, *, max_message_bytes: int) -> list[tuple[str, int]]:
    """Keepalive, message sizes and connection recycling for a grpc.aio server.

    Clients ping every 30 s, so pings every 20 s are accepted (also between calls); connections are
    closed gracefully after `SWITCHBOARD_GRPC_MAX_CONNECTION_AGE_S`, so clients re-resolve and spread
    over new replicas.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


async def serve_until_signalled(
    server: aio.Server,
    health_servicer: health.aio.HealthServicer,
    *,
    grace_s: float,
    notice_s: float = 0.0,
    name: str,
) -> None:
    """Serve until SIGTERM/SIGINT (or until the server ends by itself), then stop gracefully.

    On a signal: every health service turns NOT_SERVING, the server keeps serving for `notice_s`
    (clients that watch our health, as the edge does, move new calls to other replicas meanwhile),
    then refuses new calls and gives in-flight ones up to `grace_s` to finish. The signal handlers
    are removed on the way out.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    waiter = asyncio.create_task(server.wait_for_termination())
    stopper = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            notice = min(notice_s, grace_s)
            if notice > 0:
                log.info(
                    "%s shutting down: NOT_SERVING for %.1f s, then draining calls for up to %.0f s",
                    name,
                    notice,
                    grace_s,
                )
            else:
                log.info("%s shutting down: draining in-flight calls for up to %.0f s", name, grace_s)
            await health_servicer.enter_graceful_shutdown()
            if notice > 0:
                await asyncio.sleep(notice)
            await server.stop(grace_s)
    finally:
        waiter.cancel()
        stopper.cancel()
        for signum in signals:
            loop.remove_signal_handler(signum)


def enable_reflection(server: aio.Server, service_names: Sequence[str], settings: Settings) -> None:
    """Serve gRPC reflection for `service_names` (and health), unless `SWITCHBOARD_GRPC_REFLECTION`
    is off: handy for grpcurl in development, a map of the API for anyone who can connect in
    production."""
    if settings.grpc_reflection:
        names = [*service_names, reflection.SERVICE_NAME, health.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)


async def abort_with(context: aio.ServicerContext[Any, Any], error: SwitchboardError) -> NoReturn:
    """End the call with the status `error` maps to and its message (the one place a domain error
    becomes a gRPC status)."""
    code = grpc_status(error)
    message = _bounded_message(error.message)
    log.info("request %s refused: %s %s", current_request_id.get(), code.name, message)
    await context.abort(code, message, trailing_metadata=retry_after_metadata(error))


MAX_DETAILS_CHARS: Final = 1000
"""Status details are cut to this: a message that quotes hostile input (an action type of 100 KB)
would otherwise exceed gRPC's metadata limit (16 KiB) and reach the client as RESOURCE_EXHAUSTED."""


def _bounded_message(message: str) -> str:
    return message if len(message) <= MAX_DETAILS_CHARS else message[: MAX_DETAILS_CHARS - 1] + "…"


RETRY_AFTER: Final = "retry-after"
"""Trailing metadata of a refusal that may succeed later (a busy thread): whole seconds, as HTTP's
`Retry-After` (which the edge copies it to)."""


def retry_after_metadata(error: SwitchboardError) -> tuple[tuple[str, str], ...]:
    """`(("retry-after", "<seconds>"),)` when the error carries a `retry_after_s` hint, else `()`."""
    hint = getattr(error, "retry_after_s", None)
    if not isinstance(hint, int | float) or not math.isfinite(hint) or hint <= 0:
        return ()
    return ((RETRY_AFTER, str(max(1, math.ceil(hint)))),)


def retry_after_hint(error: aio.AioRpcError) -> float | None:
    """The seconds of a failed call's trailing `retry-after` (what `retry_after_metadata` sends)."""
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER and isinstance(value, str) and value.isdigit() and int(value) > 0:
            return float(value)
    return None


async def abort_internal(context: aio.ServicerContext[Any, Any], what: str) -> NoReturn:
    """End the call with INTERNAL and a generic message after an unexpected exception, which is
    logged here with the request id (call it from an `except` block); the client learns nothing
    about the failure's internals."""
    log.exception("request %s failed in %s", current_request_id.get(), what)
    await context.abort(StatusCode.INTERNAL, "internal error")
