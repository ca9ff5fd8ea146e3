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
from services.agent_service.store.postgres import PostgresStore
from services.agent_service.store.sql import SqlStore
from services.agent_service.store.sqlite import SqliteStore
from services.common.config import Settings
from services.common.database import PoolOptions, database_url


def create_store(settings: Settings) -> SqlStore:
    """The store the settings select (not opened yet)."""
    url = make_url(database_url(settings))
    if url.get_backend_name() == "sqlite":
        return SqliteStore(Path(url.database or settings.store_path))
    return PostgresStore(url, PoolOptions.from_settings(settings, "switchboard-agent"))


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
