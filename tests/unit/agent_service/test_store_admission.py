"""The agent store's admission (`SqlStore._admit`) on SQLite and PostgreSQL: the request bucket,
taken with the limits' state in one statement when a default rate is set, sized by a tenant's
overrides, lifted by an override of 0, and the two-statement path when no default rate is set; a
refusal writes nothing. A request that spends tokens without starting a response
(`Admission(budget=True)`: dictation) is refused by a used-up token budget too, and
`SqlStore.record_usage` adds such a request's usage in a transaction of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chatkit.types import ThreadMetadata
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection

from services.agent_service.store import SqlStore
from services.common.auth import Principal
from services.common.ids import new_id
from services.limits import Admission, LimitReached, Limits, UsageDelta
from services.limits.schema import rate_buckets, tenant_tokens, usage_daily
from services.limits.sql import LimitsSql, UsageRow
from tests.unit.agent_service.store_support import BACKENDS, opened_store

ALICE = Principal(tenant="acme", user="alice", role="user")
BOB = Principal(tenant="acme", user="bob", role="user")
DEFAULTS = Limits(requests_per_minute=60, request_burst=2)
"""One token a second, bursts of two."""


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with opened_store(request.param, tmp_path, "admission") as opened:
        await opened.transaction(lambda connection: connection.execute(rate_buckets.delete()))
        await opened.transaction(lambda connection: connection.execute(usage_daily.delete()))
        await opened.transaction(lambda connection: connection.execute(tenant_tokens.delete()))
        await opened.transaction(lambda connection: connection.exec_driver_sql("DELETE FROM tenant_limits"))
        yield opened


async def _override(store: SqlStore, tenant: str, **values: int | None) -> None:
    sql = LimitsSql(store.dialect)
    await store.transaction(lambda connection: sql.store_limits(connection, tenant, values))


async def _buckets(store: SqlStore) -> int:
    def body(connection: Connection) -> int:
        return int(connection.scalar(select(func.count()).select_from(rate_buckets)) or 0)

    return await store.transaction(body)


async def _refused(store: SqlStore, owner: Principal, defaults: Limits) -> LimitReached:
    with pytest.raises(LimitReached) as refused:
        await store.admit(owner, Admission(defaults))
    return refused.value


async def test_the_default_bucket_holds_a_burst_then_refuses_with_the_wait(store: SqlStore) -> None:
    await store.admit(ALICE, Admission(DEFAULTS))
    await store.admit(ALICE, Admission(DEFAULTS))
    refused = await _refused(store, ALICE, DEFAULTS)
    assert refused.limit == "requests_per_minute"
    assert 0 < refused.retry_after_s <= 1.0, "one token a second"
    await store.admit(BOB, Admission(DEFAULTS))  # a bucket per user
    await asyncio.sleep(refused.retry_after_s + 0.05)
    await store.admit(ALICE, Admission(DEFAULTS))
    await _refused(store, ALICE, DEFAULTS)


async def test_a_refused_start_writes_nothing(store: SqlStore) -> None:
    await store.admit(ALICE, Admission(DEFAULTS))
    await store.admit(ALICE, Admission(DEFAULTS))
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))
    with pytest.raises(LimitReached):
        await store.start_thread(
            ALICE,
            thread,
            holder="run-1",
            ttl_s=30,
            admission=Admission(DEFAULTS, run=True, record=UsageDelta(conversations=1, turns=1)),
        )
    assert (await store.list_threads(ALICE, limit=10, after=None, order="desc")).data == []
    usage = await store.transaction(lambda c: c.scalar(select(func.count()).select_from(usage_daily)))
    assert usage == 0


async def test_a_tenant_override_sizes_the_bucket(store: SqlStore) -> None:
    await _override(store, "acme", requests_per_minute=600, request_burst=5)
    for _ in range(5):
        await store.admit(ALICE, Admission(DEFAULTS))
    refused = await _refused(store, ALICE, DEFAULTS)
    assert 0 < refused.retry_after_s <= 0.1, "ten tokens a second"
    # Another tenant keeps the default.
    other = Principal(tenant="globex", user="alice", role="user")
    await store.admit(other, Admission(DEFAULTS))
    await store.admit(other, Admission(DEFAULTS))
    await _refused(store, other, DEFAULTS)


async def test_an_override_of_zero_lifts_the_rate_for_new_and_existing_buckets(store: SqlStore) -> None:
    await store.admit(ALICE, Admission(DEFAULTS))  # Alice has a bucket; Bob has none yet
    await _override(store, "acme", requests_per_minute=0)
    for _ in range(10):
        await store.admit(ALICE, Admission(DEFAULTS))
        await store.admit(BOB, Admission(DEFAULTS))
    # The override gone, the default bucket of two applies again to both.
    await _override(store, "acme", requests_per_minute=None)
    for owner in (ALICE, BOB):
        admitted = 0
        for _ in range(4):
            try:
                await store.admit(owner, Admission(DEFAULTS))
            except LimitReached:
                break
            admitted += 1
        assert admitted <= 2, "refused within the default burst of two"


async def test_without_a_default_rate_an_override_sets_one(store: SqlStore) -> None:
    unlimited = Limits(runs_per_user=5)
    for _ in range(5):
        await store.admit(ALICE, Admission(unlimited))
    assert await _buckets(store) == 0, "no rate, no bucket written"
    await _override(store, "acme", requests_per_minute=60, request_burst=1)
    await store.admit(ALICE, Admission(unlimited))
    refused = await _refused(store, ALICE, unlimited)
    assert refused.limit == "requests_per_minute"


async def _statements_of_one_admission(store: SqlStore, owner: Principal, defaults: Limits) -> int:
    """The statements `_admit` sends for one request (admitted or not), counted on its connection."""

    def body(connection: Connection) -> int:
        sent: list[str] = []
        event.listen(connection, "before_cursor_execute", lambda *args: sent.append(args[2]))
        with contextlib.suppress(LimitReached):
            store._admit(connection, owner, Admission(defaults), datetime.now(UTC))
        return len(sent)

    return await store.transaction(body)


async def test_a_request_under_the_default_rate_is_one_statement(store: SqlStore) -> None:
    assert await _statements_of_one_admission(store, ALICE, DEFAULTS) == 1  # a new bucket
    assert await _statements_of_one_admission(store, ALICE, DEFAULTS) == 1  # a token from it
    # An empty bucket: the fused statement returns nothing, the read and the bucket's level explain.
    assert await _statements_of_one_admission(store, ALICE, DEFAULTS) == 4
    # No default rate and no override: the read alone.
    assert await _statements_of_one_admission(store, BOB, Limits(runs_per_user=5)) == 1


# --------------------------------------------------------------------------- requests that spend tokens

TRANSCRIBE_MODEL = "gpt-4o-mini-transcribe"


async def _usage_rows(store: SqlStore, tenant: str) -> list[UsageRow]:
    sql = LimitsSql(store.dialect)
    day = datetime.now(UTC).date()
    return await store.transaction(lambda connection: sql.usage(connection, tenant, None, day, day))


async def _tenant_tokens(store: SqlStore, tenant: str) -> int | None:
    def body(connection: Connection) -> int | None:
        query = select(tenant_tokens.c.tokens).where(tenant_tokens.c.tenant == tenant)
        found = connection.scalar(query)
        return None if found is None else int(found)

    return await store.transaction(body)


@pytest.mark.parametrize(
    "defaults",
    [Limits(requests_per_minute=1, request_burst=2), Limits(runs_per_user=5)],
    ids=["one-statement", "two-statements"],
)
async def test_a_request_that_spends_tokens_is_refused_once_the_budget_is_used_up(
    store: SqlStore, defaults: Limits
) -> None:
    await _override(store, "acme", tokens_per_day=10)
    await store.admit(ALICE, Admission(defaults, budget=True))  # nothing used yet
    await store.record_usage(ALICE, UsageDelta(tokens={TRANSCRIBE_MODEL: (6, 4)}))
    for _ in range(3):
        with pytest.raises(LimitReached) as refused:
            await store.admit(BOB, Admission(defaults, budget=True))  # the tenant's budget
        assert refused.value.limit == "tokens_per_day"
        assert "10 model tokens" in str(refused.value) and "(10 used)" in str(refused.value)
        assert 0 < refused.value.retry_after_s <= 86_400, "until midnight UTC"
    # A request that spends nothing still passes; the refused ones took no request token: Bob's
    # bucket (one a minute, bursts of two) still holds both.
    await store.admit(BOB, Admission(defaults))
    await store.admit(BOB, Admission(defaults))
    if defaults.requests_per_minute:
        with pytest.raises(LimitReached, match="requests_per_minute"):
            await store.admit(BOB, Admission(defaults))
    # Another tenant's budget is its own.
    await _override(store, "globex", tokens_per_day=10)
    await store.admit(Principal(tenant="globex", user="bob", role="user"), Admission(defaults, budget=True))
    # The operator raises the budget: admitted at once.
    await _override(store, "acme", tokens_per_day=11)
    await store.admit(ALICE, Admission(defaults, budget=True))


async def test_without_a_budget_a_request_that_spends_tokens_passes(store: SqlStore) -> None:
    await store.record_usage(ALICE, UsageDelta(tokens={TRANSCRIBE_MODEL: (600, 400)}))
    await store.admit(ALICE, Admission(Limits(requests_per_minute=60), budget=True))
    await store.admit(ALICE, Admission(None, budget=True))  # limits off


async def test_record_usage_adds_the_tokens_by_model_and_to_the_tenants_day(store: SqlStore) -> None:
    await store.record_usage(ALICE, UsageDelta(tokens={TRANSCRIBE_MODEL: (12, 3)}))
    await store.record_usage(ALICE, UsageDelta(tokens={TRANSCRIBE_MODEL: (5, 1), "whisper-1": (0, 2)}))
    await store.record_usage(BOB, UsageDelta(tokens={TRANSCRIBE_MODEL: (7, 0)}))
    rows = await _usage_rows(store, "acme")
    assert [(row.user, row.model, row.input_tokens, row.output_tokens) for row in rows] == [
        ("alice", TRANSCRIBE_MODEL, 17, 4),
        ("alice", "whisper-1", 0, 2),
        ("bob", TRANSCRIBE_MODEL, 7, 0),
    ]
    assert all(
        (row.conversations, row.turns, row.tool_calls, row.uploaded_bytes) == (0, 0, 0, 0) for row in rows
    )
    assert await _tenant_tokens(store, "acme") == 17 + 4 + 2 + 7
    assert await _usage_rows(store, "globex") == []


async def test_record_usage_of_nothing_writes_nothing(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_transaction(*args: object, **kwargs: object) -> None:
        raise AssertionError("a transaction for no usage")

    with monkeypatch.context() as patched:
        patched.setattr(store, "_run", no_transaction)
        await store.record_usage(ALICE, UsageDelta())
        await store.record_usage(ALICE, UsageDelta(tokens={}))
    assert await _usage_rows(store, "acme") == []
    assert await _tenant_tokens(store, "acme") is None
