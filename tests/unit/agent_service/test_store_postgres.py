"""PostgreSQL-only behaviour of the store: timeouts and limits become statuses the edge can map."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from chatkit.types import ThreadMetadata
from sqlalchemy import text
from sqlalchemy.engine import Connection

from services.agent_service.store import PoolOptions, PostgresStore
from services.common.auth import Principal
from services.common.ids import new_id
from switchboard.app import TimedOut, Unavailable
from tests.support.postgres import shared_postgres

ALICE = Principal(tenant="acme", user="alice", role="user")


@pytest.fixture
async def url() -> str:
    url = await asyncio.to_thread(shared_postgres().create_database, "pgonly")
    await PostgresStore(url).migrate()
    return url


async def test_a_statement_past_the_timeout_is_deadline_exceeded(url: str) -> None:
    store = PostgresStore(url, PoolOptions(statement_timeout_ms=200))
    await store.open()
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))
    await store.create_thread(ALICE, thread)
    blocker = PostgresStore(url)
    await blocker.open()
    try:
        async with blocker.engine.begin() as connection:
            # Another session holds the thread's row: the store's UPDATE waits past its timeout.
            await connection.execute(
                text("SELECT 1 FROM threads WHERE id = :id FOR UPDATE"), {"id": thread.id}
            )
            thread.title = "renamed"
            with pytest.raises(TimedOut):
                await store.save_thread(ALICE, thread)
        await store.save_thread(ALICE, thread)  # the pool recovered
        assert (await store.load_thread(ALICE, thread.id)).title == "renamed"
    finally:
        await blocker.close()
        await store.close()


async def test_an_exhausted_pool_is_unavailable_not_a_hang(url: str) -> None:
    store = PostgresStore(url, PoolOptions(pool_size=1, max_overflow=0, pool_timeout_s=0.2))
    await store.open()
    try:
        async with store.engine.connect():  # the only connection is busy
            with pytest.raises(Unavailable):
                await store.list_threads(ALICE, limit=5, after=None, order="desc")
        assert (await store.list_threads(ALICE, limit=5, after=None, order="desc")).data == []
    finally:
        await store.close()


async def test_an_unreachable_server_fails_open_fast() -> None:
    """The agent service turns this into a one-line error and exit status 1 (see server.serve);
    a store that loses its server later answers UNAVAILABLE (tests/e2e/test_scale_out.py)."""
    cluster = shared_postgres()
    store = PostgresStore(
        cluster.url("postgres").replace(f":{cluster.port}/", ":1/"), PoolOptions(connect_timeout_s=2)
    )
    with pytest.raises(OSError, match="Connect call failed"):
        await asyncio.wait_for(store.open(), timeout=5)


async def test_synchronous_commit_is_set_on_the_sessions_when_configured(url: str) -> None:
    configured = PostgresStore(url, PoolOptions(synchronous_commit="local"))
    default = PostgresStore(url)
    await configured.open()
    await default.open()
    try:

        def show(connection: Connection) -> Any:
            return connection.scalar(text("SHOW synchronous_commit"))

        assert await configured.transaction(show) == "local"
        assert await default.transaction(show) != "local"  # the server's own setting
    finally:
        await configured.close()
        await default.close()


async def test_a_lone_statement_runs_without_begin_and_commit(url: str) -> None:
    """Lease renewals and releases and reading a thread are one statement: no transaction block
    around them (one round trip instead of three), while a write keeps its transaction. The server
    logs this database's statements (`log_statement`), so the BEGINs it received can be counted."""
    cluster = shared_postgres()
    database = url.rsplit("/", 1)[1]
    await asyncio.to_thread(cluster.psql, url, f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
    store = PostgresStore(url)  # connects after the ALTER: its sessions log their statements
    await store.open()

    def logged() -> str:
        return cluster.log.read_text(errors="replace")

    try:
        thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))
        before = len(logged())
        await store.create_thread(ALICE, thread)
        assert await store.acquire_lease(thread.id, "me", 10)
        assert await store.renew_lease(thread.id, "me", 10)
        await store.release_lease(thread.id, "me")
        assert (await store.load_thread(ALICE, thread.id)).id == thread.id
        assert await store.acquire_lease(thread.id, "someone else", 10), "the release took effect"
        lines = logged()[before:].splitlines()
        statements = [line for line in lines if "statement: " in line or "execute " in line]
        begins = [line for line in statements if "BEGIN" in line]
        assert len(begins) == 1, statements  # create_thread's transaction only
        assert sum("run_leases" in line for line in statements) == 4, statements
    finally:
        await store.close()
