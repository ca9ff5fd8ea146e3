"""The PostgreSQL store: the shared SQL implementation on asyncpg, for several replicas.

Selected by `SWITCHBOARD_DATABASE_URL=postgresql://user:password@host:5432/db`. Every replica of the
agent service shares the database; nothing about a thread lives in a process (threads, items, the
active specialist in the thread metadata, pending client tool calls and forms as items, run leases).

Connections (all settings in docs/scale-out.md):
- a pool per process of `pool_size` connections plus `max_overflow` extra ones under bursts; a
  request that cannot get one within `pool_timeout_s` fails with UNAVAILABLE (503) instead of
  queueing without bound. Size the database's `max_connections` for
  replicas x (pool_size + max_overflow) plus the migration job.
- `connect_timeout_s` bounds a connection attempt; `statement_timeout_ms` is set on every session
  (server side: a stuck query is cancelled and the request fails with DEADLINE_EXCEEDED, 504), and
  the client gives up `_CLIENT_MARGIN_S` later in case the server cannot even answer;
  `idle_in_transaction_session_timeout` frees locks a vanished client left behind.
- reconnects: `pool_pre_ping` checks a connection before each use (one round trip) and a lost
  connection invalidates the whole pool, so after a PostgreSQL restart or failover the next requests
  open fresh connections; while the server is down, requests fail fast with UNAVAILABLE (503).
  `pool_recycle_s` replaces connections periodically (load balancers and PgBouncer drop idle ones).
- the schema is never changed by the service: `switchboard migrate` does it (see migrate.py).
- behind PgBouncer in transaction mode, add `?prepared_statement_cache_size=0` to the URL (asyncpg
  prepares statements per connection); session settings then come from PgBouncer's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.agent_service.store.sql import SqlStore

_CLIENT_MARGIN_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class PoolOptions:
    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 10_000
    pool_recycle_s: float = 1800.0
    pool_pre_ping: bool = True
    application_name: str = "switchboard-agent"


class PostgresStore(SqlStore):
    auto_migrate = False

    def __init__(self, url: str | URL, options: PoolOptions | None = None) -> None:
        """`url`: `postgresql://user:password@host:port/db` (any driver name: asyncpg is used)."""
        super().__init__()
        self._url = make_url(url).set(drivername="postgresql+asyncpg")
        self._options = options or PoolOptions()

    def _describe(self) -> str:
        return self._url.render_as_string(hide_password=True)

    def _create_engine(self) -> AsyncEngine:
        options = self._options
        server_settings = {"application_name": options.application_name}
        command_timeout: float | None = None
        if options.statement_timeout_ms:
            server_settings["statement_timeout"] = str(options.statement_timeout_ms)
            server_settings["idle_in_transaction_session_timeout"] = str(
                max(options.statement_timeout_ms * 6, 60_000)
            )
            command_timeout = options.statement_timeout_ms / 1000 + _CLIENT_MARGIN_S
        connect_args: dict[str, Any] = {
            "timeout": options.connect_timeout_s,
            "command_timeout": command_timeout,
            "server_settings": server_settings,
        }
        return create_async_engine(
            self._url,
            pool_size=options.pool_size,
            max_overflow=options.max_overflow,
            pool_timeout=options.pool_timeout_s,
            pool_recycle=options.pool_recycle_s,
            pool_pre_ping=options.pool_pre_ping,
            connect_args=connect_args,
            hide_parameters=True,  # a failing statement's log must not quote user messages
        )
