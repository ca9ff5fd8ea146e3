"""The store on SQLAlchemy 2 Core (async): one implementation for SQLite and PostgreSQL.

The two backends differ only in how the engine is made (`sqlite.py`, `postgres.py`) and in two
expressions chosen by dialect here: the UPSERT construct (both speak `INSERT ... ON CONFLICT`) and
"now" by the database's clock for run leases (`_Statements`), and in how a transaction is run.

Every public method is ONE transaction, written as a plain synchronous function of a `Connection`
(a "body") and handed to `_run`, so each either happens completely or not at all; `write` batches
several changes to one thread into one, and the fused methods of a turn (`start_thread`,
`lease_thread`, `write_recent`; see `base.py`) run the statements of several calls in one body.
How the body runs is the backend's business (`_execute`): on PostgreSQL it runs on the event loop
through `AsyncConnection.run_sync` (asyncpg underneath, one network round trip per statement,
nothing blocks); the SQLite store runs the whole body on its own database thread, so a transaction
costs one hop between threads instead of several per statement.
The statements of the hot path are built once per dialect with bind parameters, so SQLAlchemy finds
their compiled form in its cache without building and hashing a new statement on every call.

Failures of the infrastructure become domain errors (see `_translate`): connection refused or lost,
the server shutting down or starting up, the pool exhausted, a lock conflict -> `Unavailable` (503,
retry later); the statement timeout -> `TimedOut` (504).
After the database comes back, the pool replaces dead connections (a disconnect invalidates the
whole pool; with `SWITCHBOARD_DATABASE_POOL_PRE_PING` each checkout is checked first), so the
service recovers without a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from chatkit.types import FeedbackKind, Page, ThreadItem, ThreadMetadata
from pydantic import TypeAdapter
from sqlalchemy import Double, String, bindparam, case, delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.agent_service import metrics
from services.agent_service.store import migrate
from services.agent_service.store.base import Fence, KnownTitle, LeaseLost, Order, Store, ThreadBusy
from services.agent_service.store.schema import feedback, run_leases, threads
from services.agent_service.store.schema import items as item_rows
from services.common import tracing
from services.common.auth import Principal
from services.common.database import database_now, error_cause, sqlstate, translate_error
from services.common.errors import invalid, not_found
from services.limits import Admission, Limits, LimitsSql, UsageDelta
from switchboard.app import SwitchboardError

log = logging.getLogger(__name__)

T = TypeVar("T")
_ITEM: Final = TypeAdapter[ThreadItem](ThreadItem)


def _dump_thread(thread: ThreadMetadata) -> str:
    return thread.model_dump_json(exclude_none=True)


def _dump_item(item: ThreadItem) -> str:
    return item.model_dump_json(exclude_none=True)


def _thread_row(owner: Principal, thread: ThreadMetadata) -> dict[str, Any]:
    return {
        "id": thread.id,
        "tenant": owner.tenant,
        "owner": owner.user,
        "created_at": thread.created_at,
        "data": _dump_thread(thread),
    }


def _translate(error: Exception) -> SwitchboardError | None:
    """`translate_error`, where a foreign key that fails means a thread deleted meanwhile."""
    if isinstance(error, sa_exc.IntegrityError) and (
        "foreign key" in str(error).lower() or sqlstate(error) == "23503"
    ):
        return not_found("thread")
    return translate_error(error)


class _Statements:
    """The statements every turn runs, built once per dialect with named bind parameters.

    A statement object built per call costs its construction plus a cache-key walk before SQLAlchemy
    finds the compiled SQL; a prebuilt one has its key memoised. Bind names differ from column
    names on purpose: INSERT and UPDATE reserve the column names for their VALUES / SET clauses.
    """

    def __init__(self, dialect: str) -> None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self.now = database_now(dialect)
        owned = (
            (threads.c.id == bindparam("thread_id"))
            & (threads.c.tenant == bindparam("tenant"))
            & (threads.c.owner == bindparam("user"))
        )
        self.thread_seq = select(threads.c.seq).where(owned)
        self.thread_data = select(threads.c.data).where(owned)
        self.thread_for_update = select(threads.c.seq, threads.c.data).where(owned).with_for_update()
        # The owner's thread joined with the lease row of the holder. FOR UPDATE OF the lease row
        # (PostgreSQL; SQLite has one writer anyway): a takeover of the lease waits until the
        # writing transaction is committed, so writes of two runs never interleave.
        self.fenced_thread_seq = (
            select(threads.c.seq)
            .join(
                run_leases,
                (run_leases.c.thread_id == bindparam("lease_thread"))
                & (run_leases.c.holder == bindparam("lease_holder")),
            )
            .where(owned)
            .with_for_update(of=run_leases)
        )
        self.insert_thread = threads.insert()
        self.insert_thread_seq = threads.insert().returning(threads.c.seq)
        self.save_thread = update(threads).where(threads.c.seq == bindparam("t_seq"))
        self.item_seq = select(item_rows.c.seq).where(
            item_rows.c.id == bindparam("item_id"), item_rows.c.thread_seq == bindparam("t_seq")
        )
        self.item_data = select(item_rows.c.data).where(
            item_rows.c.id == bindparam("item_id"), item_rows.c.thread_seq == bindparam("t_seq")
        )
        # Insert, or update in place, but never across threads: an id of another thread matches
        # no row of the DO UPDATE's WHERE, so nothing changes and the rowcount is 0.
        upsert = insert(item_rows)
        self.upsert_item = upsert.on_conflict_do_update(
            index_elements=[item_rows.c.id],
            set_={"data": upsert.excluded.data, "type": upsert.excluded.type},
            where=item_rows.c.thread_seq == upsert.excluded.thread_seq,
        )
        # PostgreSQL: the fence check and the first item of a write in one statement (one round trip
        # less per finished item). No row back: the fence failed, the thread is not the owner's, or
        # the id is another thread's; `_fenced_upsert` tells them apart on that rare path.
        fenced = self.fenced_thread_seq.cte("fenced")
        upsert_fenced = insert(item_rows).from_select(
            ["id", "thread_seq", "type", "data"],
            select(
                bindparam("id", type_=String),
                fenced.c.seq,
                bindparam("type", type_=String),
                bindparam("data", type_=String),
            ),
        )
        self.fenced_upsert_item = upsert_fenced.on_conflict_do_update(
            index_elements=[item_rows.c.id],
            set_={"data": upsert_fenced.excluded.data, "type": upsert_fenced.excluded.type},
            where=item_rows.c.thread_seq == upsert_fenced.excluded.thread_seq,
        ).returning(item_rows.c.thread_seq)
        self.delete_items = delete(item_rows).where(
            item_rows.c.thread_seq == bindparam("t_seq"),
            item_rows.c.id.in_(bindparam("item_ids", expanding=True)),
        )
        self.recent_items = (
            select(item_rows.c.data)
            .join(threads, threads.c.seq == item_rows.c.thread_seq)
            .where(owned)
            .order_by(item_rows.c.seq.desc())
            .limit(bindparam("limit"))
        )
        # The same view of a thread whose seq the transaction has already checked (`write_recent`).
        self.recent_items_of_seq = (
            select(item_rows.c.data)
            .where(item_rows.c.thread_seq == bindparam("t_seq"))
            .order_by(item_rows.c.seq.desc())
            .limit(bindparam("limit"))
        )
        lease = insert(run_leases).values(
            thread_id=bindparam("lease_thread"),
            holder=bindparam("lease_holder"),
            expires_at=self.now + bindparam("lease_ttl", type_=Double),
            tenant=bindparam("lease_tenant"),
            owner=bindparam("lease_owner"),
        )
        self.acquire_lease = lease.on_conflict_do_update(
            index_elements=[run_leases.c.thread_id],
            set_={
                "holder": lease.excluded.holder,
                "expires_at": lease.excluded.expires_at,
                "tenant": lease.excluded.tenant,
                "owner": lease.excluded.owner,
            },
            where=run_leases.c.expires_at < self.now,
        )
        # Running responses of a tenant and of one of its users: their unexpired leases.
        self.running = select(
            func.count(),
            func.coalesce(func.sum(case((run_leases.c.owner == bindparam("user"), 1), else_=0)), 0),
        ).where(run_leases.c.tenant == bindparam("tenant"), run_leases.c.expires_at > self.now)
        # What admitting a request reads, in one statement: the limits' state and those counts.
        counted = (run_leases.c.tenant == bindparam("b_tenant")) & (run_leases.c.expires_at > self.now)
        running_counts = (
            select(func.count()).where(counted).scalar_subquery(),
            select(func.count())
            .where(counted & (run_leases.c.owner == bindparam("b_user")))
            .scalar_subquery(),
        )
        self.admission = LimitsSql(dialect).admission_state(*running_counts)
        self.admission_taking_request = LimitsSql(dialect).admission_taking_request(*running_counts)
        held = (run_leases.c.thread_id == bindparam("lease_thread")) & (
            run_leases.c.holder == bindparam("lease_holder")
        )
        self.renew_lease = (
            update(run_leases).where(held).values(expires_at=self.now + bindparam("lease_ttl", type_=Double))
        )
        self.release_lease = delete(run_leases).where(held)


@dataclass(frozen=True, slots=True)
class _Admitted:
    """A request's limits, and (SQLite) the owner's and tenant's running responses before it."""

    limits: Limits
    running: tuple[int, int] | None


def _owned(owner: Principal, thread_id: str) -> dict[str, Any]:
    return {"thread_id": thread_id, "tenant": owner.tenant, "user": owner.user}


def _span_name(body: Callable[..., Any]) -> str:
    """`store <method>` for a transaction body defined in (or made by) a store method."""
    method = getattr(body, "__qualname__", "").split(".<locals>")[0].rsplit(".", 1)[-1]
    return f"store {method.lstrip('_') or 'transaction'}"


def _lease(key: str, holder: str, ttl_s: float, owner: Principal | None = None) -> dict[str, Any]:
    return {
        "lease_thread": key,
        "lease_holder": holder,
        "lease_ttl": ttl_s,
        "lease_tenant": owner.tenant if owner is not None else None,
        "lease_owner": owner.user if owner is not None else None,
    }


class SqlStore(Store):
    """Threads, items, feedback and run leases in a SQL database through an `AsyncEngine`.

    Subclasses make the engine (`_create_engine`), say whether the store may migrate its own
    schema at startup (`auto_migrate`; see `migrate.py` for the policy) and may run transaction
    bodies their own way (`_execute`).
    """

    auto_migrate: bool = False

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._dialect = ""
        self._sql = _Statements("")
        self._limits = LimitsSql("")

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
        tracing.instrument_engine(engine.sync_engine)  # after the migration: requests' SQL only
        self._dialect = engine.dialect.name
        self._sql = _Statements(self._dialect)
        self._limits = LimitsSql(self._dialect)

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

    def pool_checked_out(self) -> int:
        """Connections of the store's pool in use now (the metric `switchboard_store_pool_...`)."""
        return self.engine.pool.checkedout() if self._engine is not None else 0  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------ transactions

    async def _execute(self, body: Callable[[Connection], T]) -> T:
        """Run `body` in one transaction (commit when it returns, roll back when it raises).

        Here: on the event loop, in SQLAlchemy's greenlet bridge to the async driver."""
        async with self.engine.begin() as connection:
            return await connection.run_sync(body)

    async def _execute_single(self, body: Callable[[Connection], T]) -> T:
        """Run `body`, which executes exactly one statement, outside a transaction block.

        One statement is atomic by itself, and on PostgreSQL this saves the BEGIN and the COMMIT,
        two of the three round trips a lease renewal or release would cost."""
        async with self.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            return await connection.run_sync(body)

    @property
    def dialect(self) -> str:
        """The database's SQLAlchemy dialect name (`sqlite`, `postgresql`); empty until open."""
        return self._dialect

    async def transaction(self, body: Callable[[Connection], T]) -> T:
        """Run `body` in one transaction of this store (its pool, its error translation): for
        statements of other modules on the same database (`services/limits`)."""
        return await self._run(body)

    async def _run(self, body: Callable[[Connection], T], *, single: bool = False) -> T:
        """`_run_body`, in a span `store <operation>` when tracing is on (its SQL statements are
        spans under it: `services/common/tracing.py`). `single`: the body executes exactly one
        statement (`_execute_single`)."""
        if not tracing.enabled():
            return await self._run_body(body, single)
        with tracing.span(_span_name(body), **{"db.system.name": self._dialect}):
            return await self._run_body(body, single)

    async def _run_body(self, body: Callable[[Connection], T], single: bool) -> T:
        """`_execute`, with infrastructure failures turned into SwitchboardError (see `_translate`)."""
        started = time.perf_counter()
        try:
            result = await (self._execute_single(body) if single else self._execute(body))
            metrics.STORE_COMMIT.observe(time.perf_counter() - started)
            return result
        except SwitchboardError:
            metrics.STORE_ROLLBACK.observe(time.perf_counter() - started)
            raise
        except Exception as error:
            metrics.STORE_ROLLBACK.observe(time.perf_counter() - started)
            translated = _translate(error)
            if translated is None:
                raise
            log.warning("database operation failed: %s: %s", type(error).__name__, error_cause(error))
            raise translated from error

    # ------------------------------------------------------------------ lookups (inside bodies)

    def _thread_seq(self, connection: Connection, owner: Principal, thread_id: str) -> int:
        seq = connection.scalar(self._sql.thread_seq, _owned(owner, thread_id))
        if seq is None:
            raise not_found(f"thread {thread_id!r}")
        return int(seq)

    def _fenced_thread_seq(
        self, connection: Connection, owner: Principal, thread_id: str, fence: Fence
    ) -> int:
        """The thread's seq, in one statement with the fence check (see `_Statements`)."""
        seq = connection.scalar(
            self._sql.fenced_thread_seq,
            {**_owned(owner, thread_id), "lease_thread": fence.key, "lease_holder": fence.holder},
        )
        if seq is None:
            self._thread_seq(connection, owner, thread_id)  # NOT_FOUND if that is why
            raise LeaseLost(fence.key)
        return int(seq)

    def _fenced_upsert(
        self,
        connection: Connection,
        owner: Principal,
        thread_id: str,
        fence: Fence,
        row: tuple[str, str, str],
    ) -> int:
        """`_fenced_thread_seq` and the upsert of `row` in one statement; returns the thread's seq."""
        item_id, item_type, data = row
        seq = connection.scalar(
            self._sql.fenced_upsert_item,
            {
                **_owned(owner, thread_id),
                "lease_thread": fence.key,
                "lease_holder": fence.holder,
                "id": item_id,
                "type": item_type,
                "data": data,
            },
        )
        if seq is None:
            self._fenced_thread_seq(connection, owner, thread_id, fence)  # NOT_FOUND or LeaseLost
            raise invalid(f"item id {item_id!r} belongs to another thread")
        return int(seq)

    def _upsert_items(
        self, connection: Connection, thread_seq: int, rows: Sequence[tuple[str, str, str]]
    ) -> None:
        """Insert or update in place the (id, type, data) rows; an id of another thread is INVALID."""
        for item_id, item_type, data in rows:
            result = connection.execute(
                self._sql.upsert_item,
                {"id": item_id, "thread_seq": thread_seq, "type": item_type, "data": data},
            )
            if result.rowcount == 0:
                raise invalid(f"item id {item_id!r} belongs to another thread")

    def _item_seq(self, connection: Connection, thread_seq: int, item_id: str) -> int:
        seq = connection.scalar(self._sql.item_seq, {"item_id": item_id, "t_seq": thread_seq})
        if seq is None:
            raise not_found(f"item {item_id!r}")
        return int(seq)

    # ------------------------------------------------------------------ limits (inside bodies)

    def _admit(
        self, connection: Connection, owner: Principal, admission: Admission | None, now: datetime
    ) -> _Admitted | None:
        """The checks before a request's changes, from one read of the limits' state: the owner's
        request rate and, for a response or a request that spends tokens
        (`Admission.checks_budget`), the tenant's token budget. With a default request rate the read
        and the request's token are one statement; when it returns nothing (an empty bucket, or an
        override lifting the rate), the read and `take_request_token` decide and explain. Returns
        what `_take_slot` needs after the lease is written (None: no limit applies)."""
        if admission is None or admission.limits is None:
            return None
        defaults = admission.limits
        params = {"b_tenant": owner.tenant, "b_user": owner.user, "b_day": now.date().isoformat()}
        row = None
        if defaults.requests_per_minute:
            # The common case in one statement: the request's token taken, the state read.
            row = connection.execute(
                self._sql.admission_taking_request,
                {**params, "b_rpm": defaults.requests_per_minute, "b_burst": defaults.request_burst},
            ).first()
        if row is None:
            row = connection.execute(self._sql.admission, params).one()
            limits = self._limits.limits_from(row, defaults)
            self._limits.take_request_token(connection, owner, limits)
        else:
            limits = self._limits.limits_from(row, defaults)
        tokens_used, running_tenant, running_user = (int(value or 0) for value in row[-3:])
        if admission.checks_budget:
            self._limits.budget_check(tokens_used, limits, now)
        counts_runs = limits.runs_per_user or limits.runs_per_tenant
        if admission.run and counts_runs and self._dialect == "postgresql":
            # READ COMMITTED: the counts above may be stale; count again under the tenant's lock.
            self._limits.lock_runs(connection, owner.tenant)
            return _Admitted(limits, None)
        return _Admitted(limits, (running_user, running_tenant))

    def _take_slot(self, connection: Connection, owner: Principal, admitted: _Admitted | None) -> None:
        """After the run's lease row is written: refuse when the running responses (this one
        included) pass a concurrency limit; raising rolls the lease back. On SQLite the counts read
        by `_admit` hold (the transaction has had the write lock since it began) and this run adds
        one; on PostgreSQL they are counted now, under the lock `_admit` took."""
        if admitted is None:
            return
        limits = admitted.limits
        if not (limits.runs_per_user or limits.runs_per_tenant):
            return
        if admitted.running is None:
            row = connection.execute(self._sql.running, {"tenant": owner.tenant, "user": owner.user}).one()
            running_user, running_tenant = int(row[1]), int(row[0])
        else:
            running_user, running_tenant = (count + 1 for count in admitted.running)
        self._limits.check_runs(limits, running_user=running_user, running_tenant=running_tenant)

    def _record(
        self, connection: Connection, owner: Principal, usage: UsageDelta | None, now: datetime
    ) -> None:
        if usage:
            self._limits.record(connection, owner, usage, now.date())

    # ------------------------------------------------------------------ threads

    async def create_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        row = _thread_row(owner, thread)

        def body(connection: Connection) -> None:
            connection.execute(self._sql.insert_thread, row)

        await self._run(body)

    async def start_thread(
        self,
        owner: Principal,
        thread: ThreadMetadata,
        *,
        holder: str,
        ttl_s: float,
        items: Sequence[ThreadItem] = (),
        admission: Admission | None = None,
    ) -> None:
        """Three statements on the common path: INSERT the thread (RETURNING its seq), the lease UPSERT
        of `acquire_lease`, and the item UPSERTs of `write` (usually one); with an admission, the
        limits' statements around them (`_admit`, `_take_slot`, `_record`)."""
        row = _thread_row(owner, thread)
        lease = _lease(thread.id, holder, ttl_s, owner)
        rows = [(item.id, item.type, _dump_item(item)) for item in items]
        now = datetime.now(UTC)

        def body(connection: Connection) -> None:
            admitted = self._admit(connection, owner, admission, now)
            thread_seq = int(connection.execute(self._sql.insert_thread_seq, row).scalar_one())
            if not connection.execute(self._sql.acquire_lease, lease).rowcount:
                raise ThreadBusy(thread.id)  # rolls the thread back too
            self._take_slot(connection, owner, admitted)
            self._upsert_items(connection, thread_seq, rows)
            self._record(connection, owner, admission.record if admission else None, now)

        await self._run(body)

    async def lease_thread(
        self,
        owner: Principal,
        thread_id: str,
        *,
        holder: str,
        ttl_s: float,
        admission: Admission | None = None,
    ) -> ThreadMetadata:
        """Two statements: the lease UPSERT of `acquire_lease`, then the owner's thread. In that order:
        on PostgreSQL (READ COMMITTED) each statement sees what was committed before it started, so
        the read comes after the previous holder's last write and release. When the thread is not
        the owner's, raising rolls the lease back: a stranger takes nothing and learns nothing."""
        owned = _owned(owner, thread_id)
        lease = _lease(thread_id, holder, ttl_s, owner)
        now = datetime.now(UTC)

        def body(connection: Connection) -> Any:
            admitted = self._admit(connection, owner, admission, now)
            taken = connection.execute(self._sql.acquire_lease, lease).rowcount
            data = connection.scalar(self._sql.thread_data, owned)
            if data is None:
                raise not_found(f"thread {thread_id!r}")
            if not taken:
                raise ThreadBusy(thread_id)
            self._take_slot(connection, owner, admitted)
            self._record(connection, owner, admission.record if admission else None, now)
            return data

        return ThreadMetadata.model_validate_json(await self._run(body))

    async def load_thread(self, owner: Principal, thread_id: str) -> ThreadMetadata:
        def body(connection: Connection) -> Any:
            return connection.scalar(self._sql.thread_data, _owned(owner, thread_id))

        data = await self._run(body, single=True)
        if data is None:
            raise not_found(f"thread {thread_id!r}")
        return ThreadMetadata.model_validate_json(data)

    async def rename_thread(self, owner: Principal, thread_id: str, title: str) -> ThreadMetadata:
        """Two statements: the stored thread, FOR UPDATE (PostgreSQL; SQLite has one writer), then
        an UPDATE of its data with only the title changed."""

        def body(connection: Connection) -> str:
            row = connection.execute(self._sql.thread_for_update, _owned(owner, thread_id)).first()
            if row is None:
                raise not_found(f"thread {thread_id!r}")
            stored = ThreadMetadata.model_validate_json(row[1])
            stored.title = title
            data = _dump_thread(stored)
            connection.execute(self._sql.save_thread, {"t_seq": row[0], "data": data})
            return data

        return ThreadMetadata.model_validate_json(await self._run(body))

    async def list_threads(
        self, owner: Principal, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadMetadata]:
        def body(connection: Connection) -> list[Any]:
            query = select(threads.c.data).where(
                threads.c.tenant == owner.tenant, threads.c.owner == owner.user
            )
            if after is not None:
                cursor = self._thread_seq(connection, owner, after)
                query = query.where(threads.c.seq > cursor if order == "asc" else threads.c.seq < cursor)
            query = query.order_by(threads.c.seq.asc() if order == "asc" else threads.c.seq.desc())
            return list(connection.scalars(query.limit(limit + 1)).all())

        rows = await self._run(body)
        found = [ThreadMetadata.model_validate_json(row) for row in rows[:limit]]
        return Page(data=found, has_more=len(rows) > limit, after=found[-1].id if found else None)

    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        """One statement: the items and their feedback go with the thread (ON DELETE CASCADE)."""

        def body(connection: Connection) -> int:
            result = connection.execute(
                delete(threads).where(
                    threads.c.id == thread_id, threads.c.tenant == owner.tenant, threads.c.owner == owner.user
                )
            )
            return int(result.rowcount)

        if await self._run(body) == 0:
            raise not_found(f"thread {thread_id!r}")

    # ------------------------------------------------------------------ items

    def _writer(
        self,
        owner: Principal,
        thread_id: str,
        items: Sequence[ThreadItem],
        deleted: Sequence[str],
        thread: ThreadMetadata | None,
        fence: Fence | None,
        known_title: KnownTitle | None = None,
        usage: UsageDelta | None = None,
    ) -> Callable[[Connection], int]:
        """The body of `write` (serialised here, off the database thread); it returns the thread's seq."""
        if thread is not None and thread.id != thread_id:
            raise invalid(f"thread {thread.id!r} saved as {thread_id!r}")
        rows = [(item.id, item.type, _dump_item(item)) for item in items]
        thread_data = _dump_thread(thread) if thread is not None and known_title is None else None
        now = datetime.now(UTC)

        def body(connection: Connection) -> int:
            pending = rows
            if fence is None:
                thread_seq = self._thread_seq(connection, owner, thread_id)
            elif rows and self._dialect == "postgresql":
                thread_seq = self._fenced_upsert(connection, owner, thread_id, fence, rows[0])
                pending = rows[1:]
            else:
                thread_seq = self._fenced_thread_seq(connection, owner, thread_id, fence)
            self._upsert_items(connection, thread_seq, pending)
            if deleted:
                connection.execute(self._sql.delete_items, {"t_seq": thread_seq, "item_ids": list(deleted)})
            data = thread_data
            if thread is not None and known_title is not None:
                # Compare and set the title: a rename since the caller read the thread wins.
                row = connection.execute(self._sql.thread_for_update, _owned(owner, thread_id)).first()
                if row is None:
                    raise not_found(f"thread {thread_id!r}")
                stored_title = ThreadMetadata.model_validate_json(row[1]).title
                title = thread.title if stored_title == known_title.title else stored_title
                data = _dump_thread(thread.model_copy(update={"title": title}))
            if data is not None:
                result = connection.execute(self._sql.save_thread, {"t_seq": thread_seq, "data": data})
                if result.rowcount == 0:
                    raise not_found(f"thread {thread_id!r}")
            self._record(connection, owner, usage, now)
            return thread_seq

        return body

    async def write(
        self,
        owner: Principal,
        thread_id: str,
        *,
        items: Sequence[ThreadItem] = (),
        deleted: Sequence[str] = (),
        thread: ThreadMetadata | None = None,
        fence: Fence | None = None,
        known_title: KnownTitle | None = None,
        usage: UsageDelta | None = None,
    ) -> None:
        await self._run(self._writer(owner, thread_id, items, deleted, thread, fence, known_title, usage))

    async def write_recent(
        self,
        owner: Principal,
        thread_id: str,
        *,
        limit: int,
        items: Sequence[ThreadItem] = (),
        deleted: Sequence[str] = (),
        thread: ThreadMetadata | None = None,
        fence: Fence | None = None,
        usage: UsageDelta | None = None,
    ) -> list[ThreadItem]:
        """`write`'s statements, then the newest items by the thread's seq the write just checked."""
        write = self._writer(owner, thread_id, items, deleted, thread, fence, usage=usage)

        def body(connection: Connection) -> list[Any]:
            thread_seq = write(connection)
            return list(
                connection.scalars(self._sql.recent_items_of_seq, {"t_seq": thread_seq, "limit": limit}).all()
            )

        rows = await self._run(body)
        return [_ITEM.validate_json(row) for row in reversed(rows)]

    async def load_item(self, owner: Principal, thread_id: str, item_id: str) -> ThreadItem:
        def body(connection: Connection) -> Any:
            thread_seq = self._thread_seq(connection, owner, thread_id)
            return connection.scalar(self._sql.item_data, {"item_id": item_id, "t_seq": thread_seq})

        data = await self._run(body)
        if data is None:
            raise not_found(f"item {item_id!r}")
        return _ITEM.validate_json(data)

    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, after: str | None, order: Order
    ) -> Page[ThreadItem]:
        def body(connection: Connection) -> list[Any]:
            thread_seq = self._thread_seq(connection, owner, thread_id)
            query = select(item_rows.c.data).where(item_rows.c.thread_seq == thread_seq)
            if after is not None:
                cursor = self._item_seq(connection, thread_seq, after)
                query = query.where(item_rows.c.seq > cursor if order == "asc" else item_rows.c.seq < cursor)
            query = query.order_by(item_rows.c.seq.asc() if order == "asc" else item_rows.c.seq.desc())
            return list(connection.scalars(query.limit(limit + 1)).all())

        rows = await self._run(body)
        found = [_ITEM.validate_json(row) for row in rows[:limit]]
        return Page(data=found, has_more=len(rows) > limit, after=found[-1].id if found else None)

    async def recent_items(self, owner: Principal, thread_id: str, limit: int) -> list[ThreadItem]:
        """One statement on the common path (every turn reads this): the items joined with the
        owner's thread; only an empty answer needs a second look (empty thread or NOT_FOUND)."""

        def body(connection: Connection) -> list[Any]:
            rows = list(
                connection.scalars(self._sql.recent_items, {**_owned(owner, thread_id), "limit": limit}).all()
            )
            if not rows:
                self._thread_seq(connection, owner, thread_id)
            return rows

        rows = await self._run(body)
        return [_ITEM.validate_json(row) for row in reversed(rows)]

    async def delete_items_after(self, owner: Principal, thread_id: str, item_id: str) -> int:
        def body(connection: Connection) -> int:
            thread_seq = self._thread_seq(connection, owner, thread_id)
            item_seq = self._item_seq(connection, thread_seq, item_id)
            result = connection.execute(
                delete(item_rows).where(item_rows.c.thread_seq == thread_seq, item_rows.c.seq > item_seq)
            )
            return int(result.rowcount)

        return await self._run(body)

    async def add_feedback(
        self, owner: Principal, thread_id: str, item_ids: list[str], kind: FeedbackKind
    ) -> None:
        now = datetime.now(UTC)
        insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert

        def body(connection: Connection) -> None:
            thread_seq = self._thread_seq(connection, owner, thread_id)
            for item_id in item_ids:
                item_seq = self._item_seq(connection, thread_seq, item_id)
                statement = insert(feedback).values(item_seq=item_seq, kind=kind, created_at=now)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[feedback.c.item_seq],
                        set_={"kind": statement.excluded.kind, "created_at": statement.excluded.created_at},
                    )
                )

        await self._run(body)

    async def feedback_for(self, owner: Principal, thread_id: str) -> dict[str, str]:
        """Item id -> feedback kind for a thread (for operators and tests)."""

        def body(connection: Connection) -> dict[str, str]:
            thread_seq = self._thread_seq(connection, owner, thread_id)
            rows = connection.execute(
                select(item_rows.c.id, feedback.c.kind)
                .join(feedback, feedback.c.item_seq == item_rows.c.seq)
                .where(item_rows.c.thread_seq == thread_seq)
            ).all()
            return {str(row[0]): str(row[1]) for row in rows}

        return await self._run(body)

    # ------------------------------------------------------------------ limits

    async def admit(self, owner: Principal, admission: Admission) -> None:
        now = datetime.now(UTC)

        def body(connection: Connection) -> None:
            self._admit(connection, owner, admission, now)
            self._record(connection, owner, admission.record, now)

        await self._run(body)

    async def record_usage(self, owner: Principal, usage: UsageDelta) -> None:
        """One transaction of its own; nothing at all (no transaction, no row) for an empty delta."""
        if not usage:
            return
        now = datetime.now(UTC)

        def body(connection: Connection) -> None:
            self._record(connection, owner, usage, now)

        await self._run(body)

    # ------------------------------------------------------------------ run leases

    async def acquire_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        """One atomic UPSERT: insert the lease, or take over a row whose expiry has passed."""
        params = _lease(key, holder, ttl_s)

        def body(connection: Connection) -> bool:
            return bool(connection.execute(self._sql.acquire_lease, params).rowcount)

        return await self._run(body, single=True)

    async def renew_lease(self, key: str, holder: str, ttl_s: float) -> bool:
        params = _lease(key, holder, ttl_s)

        def body(connection: Connection) -> bool:
            return bool(connection.execute(self._sql.renew_lease, params).rowcount)

        return await self._run(body, single=True)

    async def release_lease(self, key: str, holder: str) -> None:
        params = {"lease_thread": key, "lease_holder": holder}

        def body(connection: Connection) -> None:
            connection.execute(self._sql.release_lease, params)

        await self._run(body, single=True)
