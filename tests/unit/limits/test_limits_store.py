"""`services/limits` against real databases (a SQLite file and PostgreSQL), migrated as in
production: the request bucket's arithmetic, uploads racing at a limit, overrides and the audit
log, and the accounting's sums."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path

import pytest

from services.agent_service.store import PostgresStore, SqliteStore, SqlStore
from services.common.auth import Principal
from services.common.config import Settings
from services.limits import LimitReached, Limits, LimitsStore, UsageDelta, UsageMeter, usage_rows_total
from tests.support.postgres import shared_postgres

ALICE = Principal(tenant="acme", user="alice", role="user")
BOB = Principal(tenant="acme", user="bob", role="user")
OPERATOR = Principal(tenant="ops", user="root", role="platform-admin")


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'limits.sqlite3'}"
        store: SqlStore = SqliteStore(tmp_path / "limits.sqlite3")
    else:
        url = await asyncio.to_thread(shared_postgres().create_database, "limits")
        store = PostgresStore(url)
    await store.migrate()
    return url


async def _opened(url: str, **settings: str) -> LimitsStore:
    limits = LimitsStore(Settings(SWITCHBOARD_DATABASE_URL=url, **settings), application_name="test")  # type: ignore[arg-type]
    await limits.open()
    return limits


@pytest.fixture
async def limits(database_url: str) -> AsyncIterator[LimitsStore]:
    store = await _opened(
        database_url,
        SWITCHBOARD_LIMIT_REQUESTS_PER_MINUTE="60",
        SWITCHBOARD_LIMIT_REQUEST_BURST="2",
        SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY="1000",
        SWITCHBOARD_LIMIT_STORED_BYTES="1500",
    )
    yield store
    await store.close()


async def test_the_bucket_holds_a_burst_and_refills_by_the_elapsed_time(limits: LimitsStore) -> None:
    await limits.admit_request(ALICE)
    await limits.admit_request(ALICE)
    with pytest.raises(LimitReached) as refused:
        await limits.admit_request(ALICE)
    assert refused.value.limit == "requests_per_minute"
    assert 0 < refused.value.retry_after_s <= 1.0, "one token per second at 60 per minute"
    await limits.admit_request(BOB)  # a bucket per user
    await asyncio.sleep(refused.value.retry_after_s + 0.05)
    await limits.admit_request(ALICE)
    with pytest.raises(LimitReached):
        await limits.admit_request(ALICE)


async def test_a_tenant_override_replaces_the_default_and_is_audited(limits: LimitsStore) -> None:
    effective, overrides = await limits.set_limits(
        OPERATOR, "acme", {"requests_per_minute": 600, "request_burst": 5}, via="test"
    )
    assert overrides == {"requests_per_minute": 600, "request_burst": 5}
    assert effective.request_burst == 5 and effective.stored_bytes == 1500
    for _ in range(5):
        await limits.admit_request(ALICE)
    with pytest.raises(LimitReached):
        await limits.admit_request(ALICE)
    # Clearing one override: it follows the default again; the other stays.
    _effective, overrides = await limits.set_limits(OPERATOR, "acme", {"request_burst": None}, via="test")
    assert overrides == {"requests_per_minute": 600}
    _effective, overrides = await limits.set_limits(OPERATOR, "acme", {}, reset=True, via="test")
    assert overrides == {} and (await limits.limits("acme"))[0] == limits.defaults
    entries = await limits.audit_entries("acme")
    assert [entry.action for entry in entries] == ["limits.set"] * 3
    newest = entries[0]
    assert (newest.actor_user, newest.actor_role) == ("root", "platform-admin")
    assert newest.detail["before"] == {"requests_per_minute": 600} and newest.detail["after"] == {}
    with pytest.raises(ValueError, match="unknown limits"):
        await limits.set_limits(OPERATOR, "acme", {"nonsense": 1}, via="test")


async def test_uploads_racing_at_the_limits_never_pass_them(limits: LimitsStore) -> None:
    await limits.check_upload(ALICE, 1000, request=False)
    with pytest.raises(LimitReached) as too_big:
        await limits.check_upload(ALICE, 1001, request=False)
    assert too_big.value.limit == "upload_bytes_per_day"

    async def add(who: Principal) -> bool:
        try:
            await limits.add_upload(who, 300)
        except LimitReached:
            return False
        return True

    accepted = await asyncio.gather(*(add(ALICE) for _ in range(8)))
    assert sum(accepted) == 3, "3 x 300 <= 1000 < 4 x 300"
    # Bob's day is his own, the tenant's storage is shared: 900 + 600 = 1500 fits, 1800 does not.
    accepted = await asyncio.gather(*(add(BOB) for _ in range(4)))
    assert sum(accepted) == 2
    rows, stored = await limits.usage("acme")
    assert stored == 1500
    assert {row.user: row.uploaded_bytes for row in rows} == {"alice": 900, "bob": 600}
    with pytest.raises(LimitReached) as full:
        await limits.check_upload(BOB, 1, request=False)
    assert full.value.limit == "stored_bytes"
    await limits.release_storage("acme", 400)
    await limits.add_upload(BOB, 300)
    await limits.release_storage("acme", 10_000)
    assert (await limits.usage("acme"))[1] == 0, "never below zero"


async def test_usage_adds_up_by_day_user_and_model(limits: LimitsStore) -> None:
    meter = UsageMeter(turns=1, conversations=1)
    meter.model_call("gpt-4.1-mini", 17, 5)
    meter.model_call("gpt-4.1-mini", 17, 5)
    meter.model_call("gpt-4.1-nano", 3, 1)
    meter.tool_call()
    delta = meter.take()
    assert delta is not None and meter.take() is None
    await limits.record(ALICE, delta, date(2026, 12, 1))
    await limits.record(ALICE, UsageDelta(turns=1, tokens={"gpt-4.1-mini": (1, 1)}), date(2026, 12, 2))
    await limits.record(BOB, UsageDelta(turns=1), date(2026, 12, 2))
    rows, _ = await limits.usage("acme", since=date(2026, 12, 1), until=date(2026, 12, 2))
    total = usage_rows_total(rows)
    assert total == {
        "conversations": 1,
        "turns": 3,
        "tool_calls": 1,
        "uploaded_bytes": 0,
        "input_tokens": 17 + 17 + 3 + 1,
        "output_tokens": 5 + 5 + 1 + 1,
    }
    first_day = [row for row in rows if row.day == "2026-12-01"]
    assert {(row.model, row.input_tokens) for row in first_day} == {
        ("", 0),
        ("gpt-4.1-mini", 34),
        ("gpt-4.1-nano", 3),
    }
    alice_only, _ = await limits.usage("acme", user="alice", since=date(2026, 12, 2), until=date(2026, 12, 2))
    assert usage_rows_total(alice_only)["turns"] == 1


async def test_limits_off_check_nothing_but_still_account(database_url: str) -> None:
    store = await _opened(
        database_url, SWITCHBOARD_LIMITS_ENABLED="false", SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY="10"
    )
    try:
        for _ in range(100):
            await store.admit_request(ALICE)
        await store.check_upload(ALICE, 50)
        await store.add_upload(ALICE, 50)
        rows, stored = await store.usage("acme")
        assert stored == 50 and usage_rows_total(rows)["uploaded_bytes"] == 50
    finally:
        await store.close()


def test_overrides_replace_only_what_they_name() -> None:
    defaults = Limits(runs_per_user=10, requests_per_minute=300, request_burst=0)
    assert defaults.bucket_size == 300
    changed = defaults.overridden({"runs_per_user": 2, "tokens_per_day": None, "unknown": 5})
    assert changed == Limits(runs_per_user=2, requests_per_minute=300)
