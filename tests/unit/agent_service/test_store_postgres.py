"""PostgreSQL-only behaviour of the store: timeouts and limits become statuses the edge can map."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from chatkit.types import ThreadMetadata
from sqlalchemy import text

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
