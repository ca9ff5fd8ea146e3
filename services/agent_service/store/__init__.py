"""Thread and item persistence behind one interface (`Store`).

SQLite is the embedded default; PostgreSQL (`SWITCHBOARD_DATABASE_URL`) serves several replicas.
Both are the same SQLAlchemy Core implementation (`sql.py`) with a different engine; the schema is
versioned with Alembic (`migrate.py`, `migrations/`), and the per-thread run lease is in `lease.py`.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url

from services.agent_service.store.base import (
    Fence,
    KnownTitle,
    LeaseLost,
    Order,
    SchemaError,
    Store,
    ThreadBusy,
)
from services.agent_service.store.lease import RunLease, drain_shielded, shielded
from services.agent_service.store.postgres import PoolOptions, PostgresStore
from services.agent_service.store.sql import SqlStore
from services.agent_service.store.sqlite import SqliteStore
from services.common.config import Settings


def database_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the configured store, with the async driver.

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


def create_store(settings: Settings) -> SqlStore:
    """The store the settings select (not opened yet)."""
    url = make_url(database_url(settings))
    if url.get_backend_name() == "sqlite":
        return SqliteStore(Path(url.database or settings.store_path))
    return PostgresStore(
        url,
        PoolOptions(
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_timeout_s=settings.database_pool_timeout_s,
            connect_timeout_s=settings.database_connect_timeout_s,
            statement_timeout_ms=settings.database_statement_timeout_ms,
            pool_recycle_s=settings.database_pool_recycle_s,
            pool_pre_ping=settings.database_pool_pre_ping,
        ),
    )


__all__ = [
    "Fence",
    "KnownTitle",
    "LeaseLost",
    "Order",
    "PoolOptions",
    "PostgresStore",
    "RunLease",
    "SchemaError",
    "SqlStore",
    "SqliteStore",
    "Store",
    "ThreadBusy",
    "create_store",
    "database_url",
    "drain_shielded",
    "shielded",
]
