"""The limits' and the accounting's statements, as bodies of a caller's transaction.

Each method takes a synchronous `Connection` inside a transaction that its caller runs: the agent
service's store runs them in the transactions that start a turn and store its items (so a turn's
admission and usage commit or roll back with what the turn writes), `LimitsStore` in transactions
of their own (uploads, the admin service, the CLI). Statements are built once per dialect.

Atomicity across replicas comes from single-statement UPSERTs whose WHERE checks the limit
(request buckets, uploaded and stored bytes): the row is locked by the statement that changes it,
so two concurrent requests can never both take the last unit. Counting running responses needs a
count and an insert to be atomic; on PostgreSQL the transaction takes a per-tenant advisory lock
first (`lock_runs`), on SQLite every transaction holds the database's write lock from its start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    Select,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

from services.common.auth import Principal
from services.common.database import database_now
from services.limits.errors import LimitReached
from services.limits.policy import NAMES, Limits
from services.limits.schema import (
    audit_log,
    rate_buckets,
    tenant_limits,
    tenant_storage,
    tenant_tokens,
    usage_daily,
)
from services.limits.usage import UsageDelta

COUNTERS: Final = ("conversations", "turns", "tool_calls", "uploaded_bytes", "input_tokens", "output_tokens")
RUNS_RETRY_AFTER_S: Final = 2.0
"""The hint when a concurrency limit is hit: a running response may end any moment."""


def seconds_to_next_day(now: datetime) -> float:
    """Seconds until the next UTC midnight, when the daily budgets start over."""
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    return max((tomorrow - now).total_seconds(), 1.0)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One row of the accounting: a user's counters of a day (`model` '' for the non-token ones)."""

    day: str
    tenant: str
    user: str
    model: str
    conversations: int
    turns: int
    tool_calls: int
    uploaded_bytes: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    actor_tenant: str
    actor_user: str
    actor_role: str
    action: str
    tenant: str
    detail: dict[str, Any]


class LimitsSql:
    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        least = func.least if dialect == "postgresql" else func.min
        self.now = now = database_now(dialect)

        self.overrides = select(*(tenant_limits.c[name] for name in NAMES)).where(
            tenant_limits.c.tenant == bindparam("b_tenant")
        )

        # One request: take a token from the user's bucket, refilled by the elapsed time. A new
        # bucket starts full (minus this request); an empty one is left as it is (no row returned).
        size = bindparam("b_size", type_=Double)
        per_s = bindparam("b_per_s", type_=Double)
        bucket = insert(rate_buckets).values(
            tenant=bindparam("b_tenant"), owner=bindparam("b_user"), tokens=size - 1.0, updated_at=now
        )
        refilled = least(size, rate_buckets.c.tokens + (now - rate_buckets.c.updated_at) * per_s)
        self.take_request = bucket.on_conflict_do_update(
            index_elements=[rate_buckets.c.tenant, rate_buckets.c.owner],
            set_={"tokens": refilled - 1.0, "updated_at": now},
            where=refilled >= 1.0,
        ).returning(rate_buckets.c.tokens)
        self.bucket_level = select(refilled).where(
            rate_buckets.c.tenant == bindparam("b_tenant"), rate_buckets.c.owner == bindparam("b_user")
        )

        self.lock_tenant = text("SELECT pg_advisory_xact_lock(hashtextextended(:b_lock_key, 0))")

        usage = insert(usage_daily)
        self.add_usage = usage.on_conflict_do_update(
            index_elements=[
                usage_daily.c.day,
                usage_daily.c.tenant,
                usage_daily.c.owner,
                usage_daily.c.model,
            ],
            set_={name: usage_daily.c[name] + usage.excluded[name] for name in COUNTERS},
        )
        tokens = insert(tenant_tokens)
        self.add_tokens = tokens.on_conflict_do_update(
            index_elements=[tenant_tokens.c.tenant, tenant_tokens.c.day],
            set_={"tokens": tenant_tokens.c.tokens + tokens.excluded.tokens},
        )

        # Uploads: add the bytes unless that passes the limit (0: no limit), in one statement each.
        limit = bindparam("b_limit", type_=BigInteger)
        uploaded = insert(usage_daily).values(
            day=bindparam("b_day"),
            tenant=bindparam("b_tenant"),
            owner=bindparam("b_user"),
            model="",
            uploaded_bytes=bindparam("b_size"),
        )
        self.add_uploaded = uploaded.on_conflict_do_update(
            index_elements=[
                usage_daily.c.day,
                usage_daily.c.tenant,
                usage_daily.c.owner,
                usage_daily.c.model,
            ],
            set_={"uploaded_bytes": usage_daily.c.uploaded_bytes + uploaded.excluded.uploaded_bytes},
            where=(limit == 0) | (usage_daily.c.uploaded_bytes + uploaded.excluded.uploaded_bytes <= limit),
        ).returning(usage_daily.c.uploaded_bytes)
        self.uploaded_today = select(usage_daily.c.uploaded_bytes).where(
            usage_daily.c.day == bindparam("b_day"),
            usage_daily.c.tenant == bindparam("b_tenant"),
            usage_daily.c.owner == bindparam("b_user"),
            usage_daily.c.model == "",
        )
        stored = insert(tenant_storage).values(tenant=bindparam("b_tenant"), stored_bytes=bindparam("b_size"))
        self.add_stored = stored.on_conflict_do_update(
            index_elements=[tenant_storage.c.tenant],
            set_={"stored_bytes": tenant_storage.c.stored_bytes + stored.excluded.stored_bytes},
            where=(limit == 0) | (tenant_storage.c.stored_bytes + stored.excluded.stored_bytes <= limit),
        ).returning(tenant_storage.c.stored_bytes)
        self.stored_now = select(tenant_storage.c.stored_bytes).where(
            tenant_storage.c.tenant == bindparam("b_tenant")
        )
        released = tenant_storage.c.stored_bytes - bindparam("b_size")
        self.release_stored = (
            update(tenant_storage)
            .where(tenant_storage.c.tenant == bindparam("b_tenant"))
            .values(stored_bytes=case((released > 0, released), else_=literal(0)))
        )
        set_limits = insert(tenant_limits)
        self.set_limits = set_limits.on_conflict_do_update(
            index_elements=[tenant_limits.c.tenant],
            set_={name: set_limits.excluded[name] for name in (*NAMES, "updated_at")},
        )
        self.clear_limits = delete(tenant_limits).where(tenant_limits.c.tenant == bindparam("b_tenant"))

    # ------------------------------------------------------------------ admission

    @staticmethod
    def _tokens_of_the_day() -> ColumnElement[Any]:
        tokens = (
            select(tenant_tokens.c.tokens)
            .where(tenant_tokens.c.tenant == bindparam("b_tenant"), tenant_tokens.c.day == bindparam("b_day"))
            .scalar_subquery()
        )
        return func.coalesce(tokens, 0)

    def admission_state(self, *extra: ColumnElement[Any]) -> Select[Any]:
        """One statement for what admitting a request reads: the tenant's overrides (NULLs when it
        has none), its tokens of the day (`b_tenant`, `b_day`), then `extra` columns of the
        caller's (the agent store adds its running-response counts)."""
        one_row = select(literal(1).label("one")).subquery()
        return select(
            *(tenant_limits.c[name] for name in NAMES), self._tokens_of_the_day(), *extra
        ).select_from(one_row.outerjoin(tenant_limits, tenant_limits.c.tenant == bindparam("b_tenant")))

    def admission_taking_request(self, *extra: ColumnElement[Any]) -> ReturningInsert[Any]:
        """`take_request` and `admission_state(*extra)` in one statement, for deployments whose
        default `requests_per_minute` is set (`b_rpm`, `b_burst`: the defaults): the bucket is sized
        by the tenant's overrides where it has them, and the statement returns `admission_state`'s
        row, or no row when the bucket is empty (nothing written).

        No row also when the tenant's override lifts the rate limit (0) and the user's bucket exists
        already: the caller then takes the two-statement path (`admission_state`,
        `take_request_token`), which admits that request and refuses one whose bucket is empty."""
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        least = func.least if self.dialect == "postgresql" else func.min
        greatest = func.greatest if self.dialect == "postgresql" else func.max

        def override(name: str) -> ColumnElement[Any]:
            return (
                select(tenant_limits.c[name])
                .where(tenant_limits.c.tenant == bindparam("b_tenant"))
                .scalar_subquery()
            )

        per_minute = cast(func.coalesce(override("requests_per_minute"), bindparam("b_rpm")), Double)
        burst = cast(func.coalesce(override("request_burst"), bindparam("b_burst")), Double)
        size = case((burst > 0, burst), else_=per_minute)  # Limits.bucket_size
        elapsed = self.now - rate_buckets.c.updated_at
        refilled = least(size, rate_buckets.c.tokens + elapsed * per_minute / 60.0)
        bucket = insert(rate_buckets).values(
            tenant=bindparam("b_tenant"),
            owner=bindparam("b_user"),
            tokens=greatest(size - 1.0, 0.0),
            updated_at=self.now,
        )
        return bucket.on_conflict_do_update(
            index_elements=[rate_buckets.c.tenant, rate_buckets.c.owner],
            set_={"tokens": refilled - 1.0, "updated_at": self.now},
            where=refilled >= 1.0,
        ).returning(*(override(name) for name in NAMES), self._tokens_of_the_day(), *extra)

    @staticmethod
    def limits_from(row: Sequence[Any], defaults: Limits) -> Limits:
        """The limits in force from an `admission_state` row."""
        return defaults.overridden(dict(zip(NAMES, row[: len(NAMES)], strict=True)))

    @staticmethod
    def budget_check(tenant_tokens_used: int, limits: Limits, now: datetime) -> None:
        """`LimitReached` when the tenant's tokens of the day have reached `tokens_per_day`."""
        if limits.tokens_per_day and tenant_tokens_used >= limits.tokens_per_day:
            raise LimitReached(
                "tokens_per_day",
                f"this tenant's budget of {limits.tokens_per_day} model tokens for today is used up "
                f"({tenant_tokens_used} used); it starts over at midnight UTC",
                retry_after_s=seconds_to_next_day(now),
            )

    def limits_of(self, connection: Connection, tenant: str, defaults: Limits) -> Limits:
        """The tenant's limits: the defaults with its overrides, as stored now."""
        row = connection.execute(self.overrides, {"b_tenant": tenant}).first()
        if row is None:
            return defaults
        return defaults.overridden(dict(zip(NAMES, row, strict=True)))

    def overrides_of(self, connection: Connection, tenant: str) -> dict[str, int]:
        """The limits the tenant has overrides for (and nothing else)."""
        row = connection.execute(self.overrides, {"b_tenant": tenant}).first()
        if row is None:
            return {}
        return {name: int(value) for name, value in zip(NAMES, row, strict=True) if value is not None}

    def take_request_token(self, connection: Connection, caller: Principal, limits: Limits) -> None:
        """One request of the user's `requests_per_minute`, or `LimitReached` with the seconds until
        the bucket has a token again."""
        if not limits.requests_per_minute:
            return
        params = {
            "b_tenant": caller.tenant,
            "b_user": caller.user,
            "b_size": float(limits.bucket_size),
            "b_per_s": limits.requests_per_minute / 60.0,
        }
        if connection.execute(self.take_request, params).first() is not None:
            return
        level = connection.scalar(self.bucket_level, params) or 0.0
        wait = (1.0 - float(level)) * 60.0 / limits.requests_per_minute
        raise LimitReached(
            "requests_per_minute",
            f"at most {limits.requests_per_minute} requests per minute per user "
            f"(bursts of {limits.bucket_size}); slow down",
            retry_after_s=max(wait, 0.001),
        )

    def lock_runs(self, connection: Connection, tenant: str) -> None:
        """Serialise the transactions that count and take a tenant's run slots (PostgreSQL; on
        SQLite each transaction holds the write lock already)."""
        if self.dialect == "postgresql":
            connection.execute(self.lock_tenant, {"b_lock_key": f"switchboard-runs:{tenant}"})

    @staticmethod
    def check_runs(limits: Limits, running_user: int, running_tenant: int) -> None:
        """`LimitReached` when the counts (which include the run being started) pass a limit."""
        if limits.runs_per_user and running_user > limits.runs_per_user:
            raise LimitReached(
                "runs_per_user",
                f"at most {limits.runs_per_user} responses may run at once per user; wait for one to finish",
                retry_after_s=RUNS_RETRY_AFTER_S,
            )
        if limits.runs_per_tenant and running_tenant > limits.runs_per_tenant:
            raise LimitReached(
                "runs_per_tenant",
                f"at most {limits.runs_per_tenant} responses may run at once in this tenant; "
                "wait for one to finish",
                retry_after_s=RUNS_RETRY_AFTER_S,
            )

    # ------------------------------------------------------------------ accounting

    def record(self, connection: Connection, owner: Principal, delta: UsageDelta, day: date) -> None:
        """Add `delta` to the owner's counters of `day` (and its tokens to the tenant's)."""
        key = {"day": day.isoformat(), "tenant": owner.tenant, "owner": owner.user}
        rows: list[dict[str, Any]] = []
        if delta.conversations or delta.turns or delta.tool_calls or delta.uploaded_bytes:
            rows.append(
                {
                    **key,
                    "model": "",
                    "conversations": delta.conversations,
                    "turns": delta.turns,
                    "tool_calls": delta.tool_calls,
                    "uploaded_bytes": delta.uploaded_bytes,
                    "input_tokens": 0,
                    "output_tokens": 0,
                }
            )
        for model, (tokens_in, tokens_out) in delta.tokens.items():
            rows.append(
                {
                    **key,
                    "model": model,
                    "conversations": 0,
                    "turns": 0,
                    "tool_calls": 0,
                    "uploaded_bytes": 0,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                }
            )
        if rows:
            connection.execute(self.add_usage, rows)
        total = delta.total_tokens
        if total:
            connection.execute(self.add_tokens, {"tenant": owner.tenant, "day": key["day"], "tokens": total})

    # ------------------------------------------------------------------ uploads

    def check_upload(
        self, connection: Connection, owner: Principal, size: int, limits: Limits, day: date
    ) -> None:
        """`LimitReached` unless `size` more bytes fit the user's day and the tenant's storage
        (nothing is taken: `add_upload` does that once the bytes are stored)."""
        params = {"b_day": day.isoformat(), "b_tenant": owner.tenant, "b_user": owner.user}
        if limits.upload_bytes_per_day:
            uploaded = int(connection.scalar(self.uploaded_today, params) or 0)
            if uploaded + size > limits.upload_bytes_per_day:
                raise self._uploads_full(limits, uploaded)
        if limits.stored_bytes:
            stored = int(connection.scalar(self.stored_now, params) or 0)
            if stored + size > limits.stored_bytes:
                raise self._storage_full(limits, stored)

    def add_upload(
        self, connection: Connection, owner: Principal, size: int, limits: Limits, day: date
    ) -> None:
        """Count `size` stored bytes against the user's day and the tenant's storage, atomically
        with the checks; `LimitReached` (and nothing counted) when either would pass its limit."""
        params = {"b_day": day.isoformat(), "b_tenant": owner.tenant, "b_user": owner.user, "b_size": size}
        if limits.upload_bytes_per_day and size > limits.upload_bytes_per_day:
            raise self._uploads_full(limits, 0)
        if limits.stored_bytes and size > limits.stored_bytes:
            raise self._storage_full(limits, 0)
        added = connection.execute(
            self.add_uploaded, {**params, "b_limit": limits.upload_bytes_per_day}
        ).first()
        if added is None:
            raise self._uploads_full(limits, int(connection.scalar(self.uploaded_today, params) or 0))
        stored = connection.execute(self.add_stored, {**params, "b_limit": limits.stored_bytes}).first()
        if stored is None:
            raise self._storage_full(limits, int(connection.scalar(self.stored_now, params) or 0))

    def release_storage(self, connection: Connection, tenant: str, size: int) -> None:
        """Stored bytes deleted (never below zero)."""
        if size > 0:
            connection.execute(self.release_stored, {"b_tenant": tenant, "b_size": size})

    def stored_bytes(self, connection: Connection, tenant: str) -> int:
        return int(connection.scalar(self.stored_now, {"b_tenant": tenant}) or 0)

    @staticmethod
    def _uploads_full(limits: Limits, uploaded: int) -> LimitReached:
        return LimitReached(
            "upload_bytes_per_day",
            f"at most {limits.upload_bytes_per_day} bytes may be uploaded per user per day "
            f"({uploaded} uploaded today)",
            retry_after_s=seconds_to_next_day(datetime.now(UTC)),
        )

    @staticmethod
    def _storage_full(limits: Limits, stored: int) -> LimitReached:
        return LimitReached(
            "stored_bytes",
            f"this tenant may keep at most {limits.stored_bytes} bytes of attachments "
            f"({stored} stored); delete some first",
            retry_after_s=3600.0,
        )

    # ------------------------------------------------------------------ administration

    def usage(
        self, connection: Connection, tenant: str, user: str | None, since: date, until: date
    ) -> list[UsageRow]:
        query = (
            select(usage_daily)
            .where(
                usage_daily.c.tenant == tenant,
                usage_daily.c.day >= since.isoformat(),
                usage_daily.c.day <= until.isoformat(),
            )
            .order_by(usage_daily.c.day, usage_daily.c.owner, usage_daily.c.model)
        )
        if user is not None:
            query = query.where(usage_daily.c.owner == user)
        return [
            UsageRow(
                day=row.day,
                tenant=row.tenant,
                user=row.owner,
                model=row.model,
                **{name: int(getattr(row, name)) for name in COUNTERS},
            )
            for row in connection.execute(query)
        ]

    def store_limits(self, connection: Connection, tenant: str, values: Mapping[str, int | None]) -> None:
        """Set the tenant's overrides to `values` (every name; None follows the default). A tenant
        left with no override at all has no row."""
        if all(values.get(name) is None for name in NAMES):
            connection.execute(self.clear_limits, {"b_tenant": tenant})
            return
        row = {"tenant": tenant, **{name: values.get(name) for name in NAMES}}
        connection.execute(self.set_limits.values(**row, updated_at=self.now))

    def audit(
        self, connection: Connection, actor: Principal, action: str, tenant: str, detail: Mapping[str, Any]
    ) -> None:
        connection.execute(
            audit_log.insert().values(
                at=self.now,
                actor_tenant=actor.tenant,
                actor_user=actor.user,
                actor_role=actor.role,
                action=action,
                tenant=tenant,
                detail=json.dumps(dict(detail), sort_keys=True),
            )
        )

    def audit_entries(self, connection: Connection, tenant: str | None, limit: int) -> list[AuditEntry]:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
        if tenant is not None:
            query = query.where(audit_log.c.tenant == tenant)
        return [
            AuditEntry(
                at=float(row.at),
                actor_tenant=row.actor_tenant,
                actor_user=row.actor_user,
                actor_role=row.actor_role,
                action=row.action,
                tenant=row.tenant,
                detail=json.loads(row.detail),
            )
            for row in connection.execute(query)
        ]


def usage_rows_total(rows: Sequence[UsageRow]) -> dict[str, int]:
    """The sum of every counter over `rows`."""
    return {name: sum(getattr(row, name) for row in rows) for name in COUNTERS}
