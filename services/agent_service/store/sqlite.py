"""The embedded SQLite store: the shared SQL implementation on one connection, owned by one thread.

One file, one process: the store migrates its own schema at startup (`auto_migrate`), so
`make run` needs no extra step, and a file written by the first (pre-Alembic) SQLite store is adopted
as it is (see migrations/versions/v0001_baseline.py).

Transactions run on ONE connection owned by one database thread: each transaction body (see
`sql.py`) runs there whole, on SQLAlchemy's synchronous pysqlite engine, and the event loop awaits
the result, so the loop never blocks on the disk and a transaction costs one hop between threads.
(Through aiosqlite every statement, cursor and commit was a hop of its own, about 40 per turn, and
the one connection stayed checked out across event-loop iterations between them; see
docs/performance.md.) SQLite allows one writer at a time; with several connections a transaction
that reads first and then writes can fail at once with "database is locked" instead of waiting,
so one connection serialises transactions in the process, exactly like the first SQLite store did,
and every transaction begins IMMEDIATE (`services/common/database.py`), which serialises it with
the other processes on the file too (the upload service's limits, a second agent replica).
A caller that is cancelled while its transaction runs does not stop it: the body commits or rolls
back as a whole. WAL mode lets other processes (backups, tests, `sqlite3` in a shell) read while
a turn writes.

Migrations and `engine` (administrative access, tests) use an aiosqlite engine of their own, as the
PostgreSQL store does with asyncpg.

Run leases and limits work here too, through the same code path, for the processes of one machine
sharing the file (agent workers, replicas on one machine). Those processes queue for their
transactions on an advisory `flock` of `<database>.lock` (see `_transaction`), handed over at once,
rather than in SQLite's busy handler, which sleeps between attempts. Replicas on several machines
need PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from services.agent_service.store.sql import SqlStore
from services.common import tracing
from services.common.database import configure_sqlite

T = TypeVar("T")


class SqliteStore(SqlStore):
    auto_migrate = True

    def __init__(self, path: Path, *, pool_timeout_s: float = 30.0) -> None:
        super().__init__()
        self._path = path
        self._pool_timeout_s = pool_timeout_s
        self._sync_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None

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
            hide_parameters=True,  # a failing statement's log must not quote user messages
        )
        configure_sqlite(engine.sync_engine)
        return engine

    async def open(self) -> None:
        await super().open()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._sync_engine = create_engine(
            f"sqlite:///{self._path}",
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=self._pool_timeout_s,
            pool_reset_on_return=None,
            hide_parameters=True,  # a failing statement's log must not quote user messages
            # Made and used on the database thread; `close` disposes of it from the loop's thread.
            connect_args={"check_same_thread": False},
        )
        configure_sqlite(self._sync_engine)
        self._lock_fd = await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: os.open(f"{self._path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        )
        # Connect now, on the database thread: the first request should not pay for it, and a
        # file that cannot be opened should stop the start, not a request.
        await self._execute(lambda connection: None)
        tracing.instrument_engine(self._sync_engine)

    async def close(self) -> None:
        if self._thread is not None:
            engine, self._sync_engine = self._sync_engine, None
            if engine is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, engine.dispose)
            self._thread.shutdown(wait=False)
            self._thread = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        await super().close()

    def pool_checked_out(self) -> int:
        engine = self._sync_engine
        return engine.pool.checkedout() if engine is not None else 0  # type: ignore[attr-defined]

    async def _execute(self, body: Callable[[Connection], T]) -> T:
        if self._thread is None:
            raise RuntimeError("the store is not open")
        # In the caller's context (contextvars): the log fields and the current span reach the thread.
        run = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(self._thread, run, self._transaction, body)

    async def _execute_single(self, body: Callable[[Connection], T]) -> T:
        # On the database thread a transaction costs no round trip: one path for every body.
        return await self._execute(body)

    def _transaction(self, body: Callable[[Connection], T]) -> T:
        engine = self._sync_engine
        if engine is None:
            raise RuntimeError("the store is closed")
        lock = self._lock_fd
        if lock is None:
            raise RuntimeError("the store is closed")
        # The processes of this store on the file (agent workers or replicas) queue on an advisory
        # lock of their own, which the kernel hands over the moment it is released: waiting in
        # SQLite's busy handler instead means sleeping 1, 2, 5 ... up to 100 ms between attempts.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with engine.begin() as connection:
                return body(connection)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
