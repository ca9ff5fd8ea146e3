"""The embedded SQLite store: the shared SQL implementation on one aiosqlite connection.

One file, one process: the store migrates its own schema at startup (`auto_migrate`), so
`make run` needs no extra step, and a file written by the first (pre-Alembic) SQLite store is adopted
as it is (see migrations/versions/v0001_baseline.py).

The engine keeps exactly ONE connection (pool of one, no overflow). SQLite allows one writer at a
time; with several connections a transaction that reads first and then writes can fail at once with
"database is locked" instead of waiting. One connection serialises transactions in the process
(each is a few statements on a local file), exactly like the first SQLite store did. WAL mode lets
other processes (backups, tests, `sqlite3` in a shell) read while a turn writes. aiosqlite runs the
sqlite3 calls on a worker thread, so the event loop never blocks on the disk.

Run leases work here too, through the same code path: they guard one process's threads, which is
all SQLite serves. Several replicas need PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from services.agent_service.store.sql import SqlStore

BUSY_TIMEOUT_MS = 5000


def _pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


class SqliteStore(SqlStore):
    auto_migrate = True

    def __init__(self, path: Path, *, pool_timeout_s: float = 30.0) -> None:
        super().__init__()
        self._path = path
        self._pool_timeout_s = pool_timeout_s

    @property
    def path(self) -> Path:
        return self._path

    def _describe(self) -> str:
        return f"sqlite:///{self._path}"

    def _create_engine(self) -> AsyncEngine:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{self._path}",
            poolclass=AsyncAdaptedQueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=self._pool_timeout_s,
            # Every use is `engine.begin()`, which commits or rolls back itself; the pool's extra
            # rollback on return would cost one more trip to aiosqlite's thread per transaction.
            pool_reset_on_return=None,
        )
        event.listen(engine.sync_engine, "connect", _pragmas)
        return engine
