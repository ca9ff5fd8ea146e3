"""The store on SQLAlchemy 2 Core (async): one implementation for SQLite and PostgreSQL.

The two backends differ only in how the engine is made (`sqlite.py`, `postgres.py`) and in two
expressions chosen by dialect here: the UPSERT construct (both speak `INSERT ... ON CONFLICT`) and
"now" by the database's clock for run leases. Every public method is one transaction (`_tx`), so each
either happens completely or not at all; `write` batches several changes to one thread into one.

Failures of the infrastructure become `ServiceError`s the edge can map (see `_translate`):
connection refused or lost, the server shutting down or starting up, the pool exhausted, a lock
conflict -> UNAVAILABLE (503, retry later); the statement timeout -> DEADLINE_EXCEEDED (504).
After the database comes back, the pool replaces dead connections (pre-ping on checkout, and a
disconnect invalidates the whole pool), so the service recovers without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import grpc
from chatkit.types import FeedbackKind, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Double, cast, delete, extract, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.agent_service.store import migrate
from services.agent_service.store.base import Fence, LeaseLost, Order, Store
from services.agent_service.store.schema import feedback, run_leases, threads
from services.agent_service.store.schema import items as item_rows
from services.common.auth import Principal
from services.common.errors import ServiceError, invalid, not_found

log = logging.getLogger(__name__)

_ITEM: Final = TypeAdapter[ThreadItem](ThreadItem)
UNAVAILABLE_MESSAGE: Final = "the database is unavailable; try again later"
TIMEOUT_MESSAGE: Final = "the database did not answer in time"


def _dump_thread(thread: ThreadMetadata) -> str:
    return thread.model_dump_json(exclude_none=True)


def _dump_item(item: ThreadItem) -> str:
    return item.model_dump_json(exclude_none=True)


def _sqlstate(error: BaseException) -> str:
    orig = getattr(error, "orig", None)
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _translate(error: Exception) -> ServiceError | None:
    """The ServiceError an infrastructure failure means, or None for a bug (left to propagate)."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection became free in time
        return ServiceError(grpc.StatusCode.UNAVAILABLE, "the database connection pool is exhausted")
    if isinstance(error, OSError | TimeoutError):  # connect refused/reset, asyncpg command timeout
        return ServiceError(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    if isinstance(error, sa_exc.IntegrityError):
        if "foreign key" in str(error).lower() or _sqlstate(error) == "23503":
            return not_found("thread")  # deleted by a concurrent request
        return ServiceError(grpc.StatusCode.ALREADY_EXISTS, "the record exists already")
    if isinstance(error, sa_exc.DBAPIError):
        state = _sqlstate(error)
        if state == "57014":  # query_canceled: statement_timeout
            return ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED, TIMEOUT_MESSAGE)
        if (
            error.connection_invalidated
            or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
            or state.startswith(("08", "53", "57P", "40"))  # connection, resources, shutdown, conflict
        ):
            return ServiceError(grpc.StatusCode.UNAVAILABLE, UNAVAILABLE_MESSAGE)
    return None


class SqlStore(Store):
    """Threads, items, feedback and run leases in a SQL database through an `AsyncEngine`.

    Subclasses make the engine (`_create_engine`) and say whether the store may migrate its own
    schema at startup (`auto_migrate`); see `migrate.py` for the policy.
    """

    auto_migrate: bool = False

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._dialect = ""

    # ------------------------------------------------------------------ lifecycle

    def _create_engine(self) -> AsyncEngine:
        raise NotImplementedError

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def open(self) -> None:
        engine = self._create_engine()
        try:
            if self.auto_migrate:
                await migrate.upgrade(engine)
            else:
                await migrate.check(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._dialect = engine.dialect.name

    async def migrate(self, revision: str = "head") -> tuple[str | None, str | None]:
        """Upgrade the schema to `revision` (what `switchboard migrate` does); returns (before, after).

        Works on a store that is not open (it uses an engine of its own)."""
        engine = self._create_engine()
        try:
            return await migrate.upgrade(engine, revision)
        finally:
            await engine.dispose()

    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (None: no schema yet)."""
        engine = self._create_engine()
        try:
            return await migrate.current_revision(engine)
        finally:
            await engine.dispose()

    @property
    def url(self) -> str:
        """The database URL without its password."""
        return self._describe()

    def _describe(self) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; infrastructure failures come out as ServiceError (see `_translate`)."""
        try:
            async with self.engine.begin() as connection:
                yield connection
        except ServiceError:
            raise
        except Exception as error:
            translated = _translate(error)
            if translated is None:
                raise
            log.warning("database operation failed: %s: %s", type(error).__name__, error)
            raise translated from error

    def _insert(self, table: Any) -> Any:
        """`INSERT` with `ON CONFLICT` support for this dialect."""
        return postgresql.insert(table) if self._dialect == "postgresql" else sqlite.insert(table)

    def _now(self) -> ColumnElement[float]:
        """Now, in seconds since the epoch, by the database's clock (leases ignore replicas' clocks)."""
        if self._dialect == "postgresql":
            return cast(extract("epoch", func.clock_timestamp()), Double)
        return (func.julianday("now") - 2440587.5) * 86400.0

    # ------------------------------------------------------------------ lookups

    @staticmethod
    async def _thread_seq(connection: AsyncConnection, owner: Principal, thread_id: str) -> int:
        seq = await connection.scalar(
            select(threads.c.seq).where(
                threads.c.id == thread_id, threads.c.tenant == owner.tenant, threads.c.owner == owner.user
            )
        )
        if seq is None:
            raise not_found(f"thread {thread_id!r}")
        return int(seq)

    @staticmethod
    async def _fenced_thread_seq(
        connection: AsyncConnection, owner: Principal, thread_id: str, fence: Fence
    ) -> int:
        """The thread's seq, in one statement with the fence check: the owner's thread joined with
        the lease row of `fence.holder`. FOR UPDATE OF the lease row (PostgreSQL; SQLite has one
        writer anyway): a takeover of the lease waits until this transaction is committed, so
        writes of two runs never interleave."""
        seq = await connection.scalar(
            select(threads.c.seq)
            .join(
                run_leases,
                (run_leases.c.thread_id == fence.key) & (run_leases.c.holder == fence.holder),
            )
            .where(threads.c.id == thread_id, threads.c.tenant == owner.tenant, threads.c.owner == owner.user)
            .with_for_update(of=run_leases)
        )
        if seq is None:
            await SqlStore._thread_seq(connection, owner, thread_id)  # NOT_FOUND if that is why
            raise LeaseLost(fence.key)
        return int(seq)

    @staticmethod
    async def _item_seq(connection: AsyncConnection, thread_seq: int, item_id: str) -> int:
        seq = await connection.scalar(
            select(item_rows.c.seq).where(item_rows.c.id == item_id, item_rows.c.thread_seq == thread_seq)
        )
        if seq is None:
            raise not_found(f"item {item_id!r}")
        return int(seq)

    # ------------------------------------------------------------------ threads

    async def create_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        async with self._tx() as connection:
            await connection.execute(
                threads.insert().values(
                    id=thread.id,
                    tenant=owner.tenant,
                    owner=owner.user,
                    created_at=thread.created_at,
                    data=_dump_thread(thread),
                )
            )

    async def load_thread(self, owner: Principal, thread_id: str) -> ThreadMetadata:
        async with self._tx() as connection:
            data = await connection.scalar(
                select(threads.c.data).where(
                    threads.c.id == thread_id, threads.c.tenant == owner.tenant, threads.c.owner == owner.user
                )
            )
        if data is None:
            raise not_found(f"thread {thread_id!r}")
        return ThreadMetadata.model_validate_json(data)

    async def list_threads(
        self, owner: Principal, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadMetadata]:
        query = select(threads.c.data).where(threads.c.tenant == owner.tenant, threads.c.owner == owner.user)
        async with self._tx() as connection:
            if after is not None:
                cursor = await self._thread_seq(connection, owner, after)
                query = query.where(threads.c.seq > cursor if order == "asc" else threads.c.seq < cursor)
            query = query.order_by(threads.c.seq.asc() if order == "asc" else threads.c.seq.desc())
            rows = (await connection.scalars(query.limit(limit + 1))).all()
        found = [ThreadMetadata.model_validate_json(row) for row in rows[:limit]]
        return Page(data=found, has_more=len(rows) > limit, after=found[-1].id if found else None)

    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        """One statement: the items and their feedback go with the thread (ON DELETE CASCADE)."""
        async with self._tx() as connection:
            result = await connection.execute(
                delete(threads).where(
                    threads.c.id == thread_id, threads.c.tenant == owner.tenant, threads.c.owner == owner.user
                )
            )
        if result.rowcount == 0:
            raise not_found(f"thread {thread_id!r}")

    # ------------------------------------------------------------------ items

    async def write(
        self,
        owner: Principal,
        thread_id: str,
        *,
        items: Sequence[ThreadItem] = (),
        deleted: Sequence[str] = (),
        thread: ThreadMetadata | None = None,
        fence: Fence | None = None,
    ) -> None:
        if thread is not None and thread.id != thread_id:
            raise invalid(f"thread {thread.id!r} saved as {thread_id!r}")
        async with self._tx() as connection:
            if fence is None:
                thread_seq = await self._thread_seq(connection, owner, thread_id)
            else:
                thread_seq = await self._fenced_thread_seq(connection, owner, thread_id, fence)
            for item in items:
                await self._upsert_item(connection, thread_seq, item)
            if deleted:
                await connection.execute(
                    delete(item_rows).where(
                        item_rows.c.thread_seq == thread_seq, item_rows.c.id.in_(list(deleted))
                    )
                )
            if thread is not None:
                result = await connection.execute(
                    update(threads).where(threads.c.seq == thread_seq).values(data=_dump_thread(thread))
                )
                if result.rowcount == 0:
                    raise not_found(f"thread {thread_id!r}")

    async def _upsert_item(self, connection: AsyncConnection, thread_seq: int, item: ThreadItem) -> None:
        """Insert, or update in place, but never across threads: an id of another thread is refused."""
        table = item_rows
        statement = self._insert(table).values(
            id=item.id, thread_seq=thread_seq, type=item.type, data=_dump_item(item)
        )
        statement = statement.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={"data": statement.excluded.data, "type": statement.excluded.type},
            where=table.c.thread_seq == statement.excluded.thread_seq,
        )
        result = await connection.execute(statement)
        if result.rowcount == 0:
            raise invalid(f"item id {item.id!r} belongs to another thread")

    async def load_item(self, owner: Principal, thread_id: str, item_id: str) -> ThreadItem:
        async with self._tx() as connection:
            thread_seq = await self._thread_seq(connection, owner, thread_id)
            data = await connection.scalar(
                select(item_rows.c.data).where(
                    item_rows.c.id == item_id, item_rows.c.thread_seq == thread_seq
                )
            )
        if data is None:
            raise not_found(f"item {item_id!r}")
        return _ITEM.validate_json(data)

    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadItem]:
        async with self._tx() as connection:
            thread_seq = await self._thread_seq(connection, owner, thread_id)
            query = select(item_rows.c.data).where(item_rows.c.thread_seq == thread_seq)
            if after is not None:
                cursor = await self._item_seq(connection, thread_seq, after)
                query = query.where(item_rows.c.seq > cursor if order == "asc" else item_rows.c.seq < cursor)
            query = query.order_by(item_rows.c.seq.asc() if order == "asc" else item_rows.c.seq.desc())
            rows = (await connection.scalars(query.limit(limit + 1))).all()
        found = [_ITEM.validate_json(row) for row in rows[:limit]]
        return Page(data=found, has_more=len(rows) > limit, after=found[-1].id if found else None)

    async def recent_items(self, owner: Principal, thread_id: str, limit: int) -> list[ThreadItem]:
        """One statement on the common path (every turn reads this): the items joined with the
        owner's thread; only an empty answer needs a second look (empty thread or NOT_FOUND)."""
        async with self._tx() as connection:
            rows = (
                await connection.scalars(
                    select(item_rows.c.data)
                    .join(threads, threads.c.seq == item_rows.c.thread_seq)
                    .where(
                        threads.c.id == thread_id,
                        threads.c.tenant == owner.tenant,
                        threads.c.owner == owner.user,
                    )
                    .order_by(item_rows.c.seq.desc())
                    .limit(limit)
                )
            ).all()
            if not rows:
                await self._thread_seq(connection, owner, thread_id)
        return [_ITEM.validate_json(row) for row in reversed(rows)]

    async def delete_items_after(self, owner: Principal, thread_id: str, item_id: str) -> int:
        async with self._tx() as connection:
            thread_seq = await self._thread_seq(connection, owner, thread_id)
            item_seq = await self._item_seq(connection, thread_seq, item_id)
            result = await connection.execute(
                delete(item_rows).where(item_rows.c.thread_seq == thread_seq, item_rows.c.seq > item_seq)
            )
        return int(result.rowcount)

    async def add_feedback(
        self, owner: Principal, thread_id: str, item_ids: list[str], kind: FeedbackKind
    ) -> None:
        now = datetime.now(UTC)
        async with self._tx() as connection:
            thread_seq = await self._thread_seq(connection, owner, thread_id)
            for item_id in item_ids:
                item_seq = await self._item_seq(connection, thread_seq, item_id)
                statement = self._insert(feedback).values(item_seq=item_seq, kind=kind, created_at=now)
                await connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[feedback.c.item_seq],
                        set_={"kind": statement.excluded.kind, "created_at": statement.excluded.created_at},
                    )
                )

    async def feedback_for(self, owner: Principal, thread_id: str) -> dict[str, str]:
        """Item id -> feedback kind for a thread (for operators and tests)."""
        async with self._tx() as connection:
            thread_seq = await self._thread_seq(connection, owner, thread_id)
            rows = (
                await connection.execute(
                    select(item_rows.c.id, feedback.c.kind)
                    .join(feedback, feedback.c.item_seq == item_rows.c.seq)
                    .where(item_rows.c.thread_seq == thread_seq)
                )
            ).all()
        return {str(row[0]): str(row[1]) for row in rows}

    # ------------------------------------------------------------------ run leases

    async def acquire_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """One atomic UPSERT: insert the lease, or take over a row whose expiry has passed."""
        async with self._tx() as connection:
            now = self._now()
            statement = self._insert(run_leases).values(thread_id=key, holder=holder, expires_at=now + ttl_s)
            statement = statement.on_conflict_do_update(
                index_elements=[run_leases.c.thread_id],
                set_={"holder": statement.excluded.holder, "expires_at": statement.excluded.expires_at},
                where=run_leases.c.expires_at < now,
            )
            result = await connection.execute(statement)
        return bool(result.rowcount)

    async def renew_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        async with self._tx() as connection:
            result = await connection.execute(
                update(run_leases)
                .where(run_leases.c.thread_id == key, run_leases.c.holder == holder)
                .values(expires_at=self._now() + ttl_s)
            )
        return bool(result.rowcount)

    async def release_lease(self, key: str, holder: str) -> None:
        async with self._tx() as connection:
            await connection.execute(
                delete(run_leases).where(run_leases.c.thread_id == key, run_leases.c.holder == holder)
            )
