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
- reconnects: a lost connection invalidates the whole pool, so after a PostgreSQL restart or
  failover the request that found a dead connection fails with UNAVAILABLE (503, retryable) and the
  next ones open fresh connections; while the server is down, requests fail fast with UNAVAILABLE.
  `pool_pre_ping` (off by default) would check every checkout first, at three round trips each
  with asyncpg (BEGIN, an empty query, ROLLBACK): more than a quarter of a turn's round trips, to
  spare one retryable error per replica after a failover. `pool_recycle_s` replaces connections
  periodically (load balancers and PgBouncer drop idle ones).
- `synchronous_commit` (`SWITCHBOARD_DATABASE_SYNCHRONOUS_COMMIT`, empty = the server's setting)
  is set on every session when configured; docs/scale-out.md says what each value risks.
- a statement that is the whole transaction (lease renewals and releases, reading a thread) runs
  outside a transaction block: one round trip instead of three.
- the schema is never changed by the service: `switchboard migrate` does it (see migrate.py).
- behind PgBouncer in transaction mode, add `?prepared_statement_cache_size=0` to the URL (asyncpg
  prepares statements per connection); session settings then come from PgBouncer's side.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from services.agent_service.store.sql import SqlStore
from services.common.database import PoolOptions, create_postgres_engine


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
        return create_postgres_engine(self._url, self._options)
