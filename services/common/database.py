"""The shared database, as every service that uses it connects to it.

The agent service keeps threads in it (`services/agent_service/store/`); the limits and usage
accounting (`services/limits/`) lives in the same database, used by the agent service and the
upload service. One URL (`SWITCHBOARD_DATABASE_URL`, else the SQLite file at
`SWITCHBOARD_DATABASE_PATH`), one way to open it, one translation of its failures.

SQLite transactions begin with `BEGIN IMMEDIATE`: the write lock is taken before the first
statement, so two processes on one file (the upload and agent services, or two agent replicas on
one machine) serialise their transactions, waiting up to the busy timeout, instead of failing with
"database is locked" when a transaction that read first tries to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Double, Engine, cast, event, extract, func
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.config import Settings
from switchboard.app import AlreadyExists, SwitchboardError, TimedOut, Unavailable

UNAVAILABLE_MESSAGE: Final = "the database is unavailable; try again later"
TIMEOUT_MESSAGE: Final = "the database did not answer in time"
SQLITE_BUSY_TIMEOUT_MS: Final = 5000
_CLIENT_MARGIN_S: Final = 5.0


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the configured database, with the async driver.

    `postgresql://`, `postgres://` and `postgresql+asyncpg://` mean PostgreSQL through asyncpg;
    `sqlite:///path` (or `sqlite+aiosqlite:///path`) a SQLite file; unset, the SQLite file at
    `SWITCHBOARD_DATABASE_PATH`.
    """
    if not settings.database_url:
        return f"sqlite+aiosqlite:///{settings.store_path}"
    url = make_url(settings.database_url.strip())
    if url.get_backend_name() in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if url.get_backend_name() == "sqlite":
        return url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise ValueError(
        f"SWITCHBOARD_DATABASE_URL: unsupported database {url.get_backend_name()!r} "
        "(use postgresql://... or sqlite:///path)"
    )


@dataclass(frozen=True, slots=True)
class PoolOptions:
    """A PostgreSQL connection pool per process (docs/scale-out.md explains each setting)."""

    pool_size: int = 10
    max_overflow: int = 10
    pool_timeout_s: float = 5.0
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 10_000
    pool_recycle_s: float = 1800.0
    pool_pre_ping: bool = False
    synchronous_commit: str = ""
    application_name: str = "switchboard-agent"

    @classmethod
    def from_settings(cls, settings: Settings, application_name: str) -> PoolOptions:
        return cls(
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout_s=settings.database_pool_timeout_s,
            connect_timeout_s=settings.database_connect_timeout_s,
            statement_timeout_ms=settings.database_statement_timeout_ms,
            pool_recycle_s=settings.database_pool_recycle_s,
            pool_pre_ping=settings.database_pool_pre_ping,
            synchronous_commit=settings.database_synchronous_commit,
            application_name=application_name,
        )


def create_postgres_engine(url: str | URL, options: PoolOptions) -> AsyncEngine:
    """An asyncpg engine: `statement_timeout` on every session (the client gives up a margin
    later), `idle_in_transaction_session_timeout` to free locks a vanished client left behind, and
    `synchronous_commit` when one is configured (docs/scale-out.md: what each value risks)."""
    server_settings = {"application_name": options.application_name}
    if options.synchronous_commit:
        server_settings["synchronous_commit"] = options.synchronous_commit
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
        make_url(url).set(drivername="postgresql+asyncpg"),
        pool_size=options.pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=options.pool_timeout_s,
        pool_recycle=options.pool_recycle_s,
        pool_pre_ping=options.pool_pre_ping,
        connect_args=connect_args,
        hide_parameters=True,  # a failing statement's log must not quote user messages
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()
    # The driver must not begin transactions itself: `_begin_immediate` does.
    dbapi_connection.isolation_level = None


def _begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout and `BEGIN IMMEDIATE` transactions on every connection of
    a (synchronous facade of a) SQLite engine."""
    event.listen(engine, "connect", _sqlite_pragmas)
    event.listen(engine, "begin", _begin_immediate)


def translate_error(error: Exception) -> SwitchboardError | None:
    """The SwitchboardError an infrastructure failure means, or None for a bug (left to propagate):
    connection refused or lost, the server shutting down or starting up, the pool exhausted, a lock
    conflict -> `Unavailable` (503, retry later); the statement timeout -> `TimedOut` (504); a
    unique key taken -> `AlreadyExists`."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection became free in time
        return Unavailable("the database connection pool is exhausted")
    if isinstance(error, OSError | TimeoutError):  # connect refused/reset, asyncpg command timeout
        return Unavailable(UNAVAILABLE_MESSAGE)
    if isinstance(error, sa_exc.IntegrityError):
        return AlreadyExists("the record exists already")
    if isinstance(error, sa_exc.DBAPIError):
        state = sqlstate(error)
        if state == "57014":  # query_canceled: statement_timeout
            return TimedOut(TIMEOUT_MESSAGE)
        if (
            error.connection_invalidated
            or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
            or state.startswith(("08", "53", "57P", "40"))  # connection, resources, shutdown, conflict
        ):
            return Unavailable(UNAVAILABLE_MESSAGE)
    return None


def sqlstate(error: BaseException) -> str:
    """The SQLSTATE of a driver error ('' when it has none)."""
    orig = getattr(error, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def error_cause(error: Exception) -> str:
    """The driver's message, not SQLAlchemy's (that one lists the statement's parameters: user
    content would reach the logs)."""
    return str(getattr(error, "orig", None) or error).splitlines()[0][:300]


def database_now(dialect: str) -> ColumnElement[float]:
    """Now, in seconds since the epoch, by the database's clock (leases and request buckets ignore
    the replicas' clocks)."""
    if dialect == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Double)
    return (func.julianday("now") - 2440587.5) * 86400.0
