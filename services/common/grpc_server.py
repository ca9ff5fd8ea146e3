"""Channel arguments every Switchboard gRPC server uses."""

from __future__ import annotations

from typing import Final

from services.common.config import Settings

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
