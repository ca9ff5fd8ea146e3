"""The SQL store on both backends for the store tests: SQLite in the test's directory, or one
migrated PostgreSQL database per test module on the shared throwaway cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from services.agent_service.store import PostgresStore, SqliteStore, SqlStore
from tests.support.postgres import shared_postgres

BACKENDS = ("sqlite", "postgres")
_databases: dict[str, str] = {}


@asynccontextmanager
async def opened_store(backend: str, tmp_path: Path, name: str) -> AsyncIterator[SqlStore]:
    """An open store on `backend`; `name` names the SQLite file or the module's PostgreSQL database
    (created and migrated once per name, then shared by that module's tests)."""
    store: SqlStore
    if backend == "sqlite":
        store = SqliteStore(tmp_path / f"{name}.sqlite3")
    else:
        if name not in _databases:
            url = await asyncio.to_thread(shared_postgres().create_database, name)
            await PostgresStore(url).migrate()
            _databases[name] = url
        store = PostgresStore(_databases[name])
    await store.open()
    try:
        yield store
    finally:
        await store.close()
