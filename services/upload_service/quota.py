"""The limits on uploads, in the database the deployment shares (`services.limits`): bytes one user
may upload per UTC day (`upload_bytes_per_day`), bytes a tenant may keep stored
(`stored_bytes`), and the user's request rate (`requests_per_minute`).

- `admit`: before anything is stored. A user request takes one request of the user's rate; an
  upload of a known size is refused at once when that size cannot fit. Nothing is counted.
- `count`: once the bytes are stored (a direct upload's object and record written, a two-phase
  upload verified at `AttachToThread`). One UPSERT per limit adds them unless that would pass the
  limit, so replicas racing for the last bytes never both get them; a refusal counts nothing and
  the caller removes what it stored. The user's `usage_daily` row ('' model) gets the bytes as
  `uploaded_bytes`, the tenant's `tenant_storage` row as stored bytes.
- `release`: after a counted attachment's record is deleted (DeleteAttachment, a thread's
  deletion, the sweep), its bytes leave the tenant's stored bytes. A record says whether its
  bytes were counted (`AttachmentRecord.counted`), so attachments stored before the limits
  existed, or by a service without them, give back nothing they never took; a delete that fails
  before the record is gone releases nothing, and a deleted record cannot be deleted (and
  released) again.

With `SWITCHBOARD_LIMITS_ENABLED=false` nothing is checked or refused, but bytes are still counted
and released (usage accounting). Without a store (`UploadQuota(None)`: tests that run the upload
service alone) nothing is checked or counted and records are not marked as counted.

The tables are created by the agent service's migrations (at its start on SQLite, with `switchboard
migrate` on PostgreSQL). The upload service starts without them, says so in its log, and answers
requests that need them with UNAVAILABLE until they exist; every request looks again.

Work that must not stop half-way when the caller goes away (counting bytes, removing a counted
attachment and releasing its bytes) runs shielded, in tasks that `close` waits for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, Final, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from services.common.auth import Principal
from services.common.config import Settings
from services.common.database import sqlstate
from services.limits import LimitsStore
from services.limits.schema import tenant_storage
from services.upload_service.records import AttachmentRecord
from switchboard.app import SwitchboardError, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_SCHEMA: Final = "upload limits are unavailable: the database has no limits tables yet"
_UNDEFINED_TABLE: Final = "42P01"
_DRAIN_S: Final = 10.0


async def open_quota(settings: Settings, *, application_name: str) -> UploadQuota:
    """The limits in the configured database (opened without connecting yet); ValueError for a
    database URL that is not supported."""
    store = LimitsStore(settings, application_name=application_name)
    await store.open()
    return UploadQuota(store)


class UploadQuota:
    def __init__(self, store: LimitsStore | None) -> None:
        self._store = store
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def counts(self) -> bool:
        """Whether stored bytes are counted (and records marked as counted)."""
        return self._store is not None

    async def close(self) -> None:
        """Wait (a while) for shielded work still running, then close the store."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_DRAIN_S)
        if self._store is not None:
            await self._store.close()

    async def check_schema(self) -> None:
        """Log whether the limits tables exist (the service starts either way)."""
        if self._store is None:
            return

        def exists(connection: Connection) -> bool:
            return bool(inspect(connection).has_table(tenant_storage.name))

        try:
            present = await self._store.run(exists)
        except SwitchboardError as error:
            log.warning(
                "cannot reach the database for upload limits (%s): uploads fail until it answers", error
            )
            return
        if not present:
            log.warning(
                "%s: uploads are refused with UNAVAILABLE until they exist (the agent service "
                "creates them when it starts on SQLite; run `switchboard migrate` on PostgreSQL)",
                NO_SCHEMA,
            )

    # ------------------------------------------------------------------ the three steps

    async def admit(self, owner: Principal, size: int, *, request: bool) -> None:
        """Before anything is stored: with `request`, one request of the owner's rate; with `size`
        > 0, `LimitReached` unless that many bytes fit the owner's day and the tenant's storage."""
        store = self._store
        if store is None or not (request or size > 0):
            return
        if size > 0:
            await _translated(store.check_upload(owner, size, request=request))
        else:
            await _translated(store.admit_request(owner))

    async def count(self, owner: Principal, size: int) -> None:
        """Count `size` stored bytes, or raise (`LimitReached` at a limit) with nothing counted.

        The statement runs to its end even when the caller is cancelled meanwhile; the caller then
        removes what it stored, so bytes counted after all are given back (the day's uploaded bytes
        keep them: they were uploaded)."""
        store = self._store
        if store is None or size <= 0:
            return
        task = self._spawn(_translated(store.add_upload(owner, size)))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._spawn(self._undo(task, owner.tenant, size))
            raise

    async def release(self, records: Iterable[AttachmentRecord]) -> None:
        """Give back the stored bytes of deleted attachments that were counted. The attachments are
        gone already: a failure is logged (their bytes stay counted), never raised."""
        if self._store is None:
            return
        sizes: Counter[str] = Counter()
        for record in records:
            if record.counted and record.size > 0:
                sizes[record.tenant] += record.size
        for tenant, size in sizes.items():
            await self._release(tenant, size)

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """`work` run to its end even when the caller is cancelled (and waited for by `close`)."""
        return await asyncio.shield(self._spawn(work))

    # ------------------------------------------------------------------ internals

    async def _release(self, tenant: str, size: int) -> None:
        assert self._store is not None
        try:
            await self.shielded(_translated(self._store.release_storage(tenant, size)))
        except SwitchboardError as error:
            log.error(
                "could not release %d stored bytes of tenant %s (%s): they stay counted", size, tenant, error
            )

    async def _undo(self, counting: asyncio.Task[None], tenant: str, size: int) -> None:
        """Release the bytes of a count whose caller was cancelled, once it turns out it counted."""
        try:
            await counting
        except BaseException:
            return
        await self._release(tenant, size)

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


async def _translated(work: Awaitable[T]) -> T:
    """`work`, with a missing table (PostgreSQL before `switchboard migrate`) as UNAVAILABLE; on
    SQLite the store already reports it so."""
    try:
        return await work
    except sa_exc.DBAPIError as error:
        if sqlstate(error) != _UNDEFINED_TABLE:
            raise
        log.warning("%s; run `switchboard migrate`", NO_SCHEMA)
        raise Unavailable(NO_SCHEMA) from error
