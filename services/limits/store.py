"""The limits and the accounting in transactions of their own: for the upload service (bytes),
the admin service and the CLI (usage reports, overrides, the audit log).

The agent service checks and records a turn's limits and usage inside the store's own
transactions instead (`services/agent_service/store/sql.py`), so that they commit with the turn.
This store opens the same database with a small pool of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.auth import Principal
from services.common.config import Settings
from services.common.database import (
    PoolOptions,
    configure_sqlite,
    create_postgres_engine,
    database_url,
    error_cause,
    translate_error,
)
from services.limits.policy import NAMES, Limits
from services.limits.sql import AuditEntry, LimitsSql, UsageRow
from services.limits.usage import UsageDelta, today
from switchboard.app import SwitchboardError

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_POOL: Final = PoolOptions(pool_size=2, max_overflow=4)
"""The largest pool this store opens per process; the settings' pool (SWITCHBOARD_DATABASE_POOL_SIZE,
SWITCHBOARD_DATABASE_MAX_OVERFLOW) makes it smaller (the upload service's Deployment does)."""


class Transactions(Protocol):
    """A store that runs transaction bodies itself (the agent service's thread store)."""

    @property
    def dialect(self) -> str: ...

    async def transaction(self, body: Callable[[Connection], T]) -> T: ...


class LimitsStore:
    def __init__(
        self, settings: Settings, *, application_name: str, transactions: Transactions | None = None
    ) -> None:
        """`transactions`: run every transaction through that (open) store and its pool instead of
        a pool of this store's own (the agent service shares its store's connections)."""
        self.defaults = Limits.from_settings(settings)
        self._transactions = transactions
        self.enabled = settings.limits_enabled
        self._url = database_url(settings)
        self._options = replace(
            PoolOptions.from_settings(settings, application_name),
            pool_size=min(settings.database_pool_size, MAX_POOL.pool_size),
            max_overflow=min(settings.database_max_overflow, MAX_POOL.max_overflow),
        )
        self._engine: AsyncEngine | None = None
        self._sql = LimitsSql("")

    async def open(self) -> None:
        if self._transactions is not None:
            self._sql = LimitsSql(self._transactions.dialect)
            return
        url = make_url(self._url)
        if url.get_backend_name() == "sqlite":
            engine = create_async_engine(url, hide_parameters=True)
            configure_sqlite(engine.sync_engine)
        else:
            engine = create_postgres_engine(url, self._options)
        self._engine = engine
        self._sql = LimitsSql(engine.dialect.name)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def run(self, body: Callable[[Connection], T]) -> T:
        """`body` in one transaction; infrastructure failures as domain errors (503/504)."""
        if self._transactions is not None:
            return await self._transactions.transaction(body)
        if self._engine is None:
            raise RuntimeError("the limits store is not open")
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(body)
        except SwitchboardError:
            raise
        except Exception as error:
            translated = translate_error(error)
            if translated is None:
                raise
            log.warning("database operation failed: %s: %s", type(error).__name__, error_cause(error))
            raise translated from error

    def _checked(self, connection: Connection, tenant: str) -> Limits:
        """The tenant's limits when limits are on; no limit at all when they are off."""
        if not self.enabled:
            return Limits()
        return self._sql.limits_of(connection, tenant, self.defaults)

    # ------------------------------------------------------------------ requests and uploads

    async def admit_request(self, caller: Principal) -> None:
        """One request of the caller's rate (`LimitReached` when the bucket is empty)."""
        if not self.enabled:
            return

        def body(connection: Connection) -> None:
            self._sql.take_request_token(connection, caller, self._checked(connection, caller.tenant))

        await self.run(body)

    async def check_upload(self, owner: Principal, size: int, *, request: bool = True) -> None:
        """Before an upload: `LimitReached` unless `size` more bytes fit the user's day and the
        tenant's storage (and, with `request`, one request of the user's rate)."""
        if not self.enabled:
            return
        day = today()

        def body(connection: Connection) -> None:
            limits = self._checked(connection, owner.tenant)
            if request:
                self._sql.take_request_token(connection, owner, limits)
            self._sql.check_upload(connection, owner, size, limits, day)

        await self.run(body)

    async def add_upload(self, owner: Principal, size: int) -> None:
        """Stored bytes: counted against the user's day and the tenant's storage atomically, or
        `LimitReached` and nothing counted."""
        day = today()

        def body(connection: Connection) -> None:
            self._sql.add_upload(connection, owner, size, self._checked(connection, owner.tenant), day)

        await self.run(body)

    async def release_storage(self, tenant: str, size: int) -> None:
        def body(connection: Connection) -> None:
            self._sql.release_storage(connection, tenant, size)

        await self.run(body)

    # ------------------------------------------------------------------ administration

    async def usage(
        self, tenant: str, *, user: str | None = None, since: date | None = None, until: date | None = None
    ) -> tuple[list[UsageRow], int]:
        """The tenant's usage rows from `since` to `until` (UTC days, inclusive; default today),
        and the bytes it keeps stored now."""
        first = since or today()
        last = until or today()

        def body(connection: Connection) -> tuple[list[UsageRow], int]:
            return (
                self._sql.usage(connection, tenant, user, first, last),
                self._sql.stored_bytes(connection, tenant),
            )

        return await self.run(body)

    async def limits(self, tenant: str) -> tuple[Limits, dict[str, int]]:
        """The tenant's effective limits (defaults with its overrides) and its overrides alone."""

        def body(connection: Connection) -> tuple[Limits, dict[str, int]]:
            overrides = self._sql.overrides_of(connection, tenant)
            return self.defaults.overridden(overrides), overrides

        return await self.run(body)

    async def set_limits(
        self,
        actor: Principal,
        tenant: str,
        changes: Mapping[str, int | None],
        *,
        reset: bool = False,
        via: str,
    ) -> tuple[Limits, dict[str, int]]:
        """Change the tenant's overrides (a value: override it; None: follow the default again;
        unnamed limits keep their override unless `reset`) and write the change to the audit log,
        in one transaction. Returns what `limits` returns afterwards."""
        unknown = set(changes) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")

        def body(connection: Connection) -> tuple[Limits, dict[str, int]]:
            before = self._sql.overrides_of(connection, tenant)
            after: dict[str, int | None] = {} if reset else dict(before)
            after.update(changes)
            self._sql.store_limits(connection, tenant, after)
            stored = {name: value for name, value in after.items() if value is not None}
            self._sql.audit(
                connection,
                actor,
                "limits.set",
                tenant,
                {"before": before, "after": stored, "reset": reset, "via": via},
            )
            return self.defaults.overridden(stored), stored

        return await self.run(body)

    async def audit(self, actor: Principal, action: str, tenant: str, detail: Mapping[str, Any]) -> None:
        def body(connection: Connection) -> None:
            self._sql.audit(connection, actor, action, tenant, detail)

        await self.run(body)

    async def audit_entries(self, tenant: str | None, limit: int = 100) -> list[AuditEntry]:
        def body(connection: Connection) -> list[AuditEntry]:
            return self._sql.audit_entries(connection, tenant, limit)

        return await self.run(body)

    async def record(self, owner: Principal, delta: UsageDelta, day: date | None = None) -> None:
        """Add usage outside a turn (tests and tools; turns record inside their own writes)."""

        def body(connection: Connection) -> None:
            self._sql.record(connection, owner, delta, day or datetime.now(UTC).date())

        await self.run(body)
