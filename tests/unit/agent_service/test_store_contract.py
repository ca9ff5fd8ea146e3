"""The store contract, run against both backends: a SQLite file and a real PostgreSQL server.

Every test gets a fresh database (a new file; a new database in the session's PostgreSQL cluster,
migrated with the same code `switchboard migrate` runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadMetadata,
    UserMessageItem,
    UserMessageTextContent,
)
from sqlalchemy import func, select, text

from services.agent_service.store import Fence, LeaseLost, PostgresStore, SqliteStore, SqlStore, ThreadBusy
from services.agent_service.store.schema import feedback, items, run_leases
from services.common.auth import Principal
from services.common.errors import grpc_status
from services.common.ids import new_id
from switchboard.app import AlreadyExists, InvalidRequest, NotFound
from tests.support.postgres import shared_postgres

ALICE = Principal(tenant="acme", user="alice", role="user")
BOB = Principal(tenant="acme", user="bob", role="user")
MALLORY = Principal(tenant="globex", user="alice", role="admin")

StoreFactory = Callable[[], Awaitable[SqlStore]]
_database: list[str] = []


async def _postgres_database() -> str:
    """The session's PostgreSQL database for this suite, migrated once (CREATE DATABASE takes a
    quarter of a second, so tests share it and start from empty tables instead)."""
    if not _database:
        url = await asyncio.to_thread(shared_postgres().create_database, "contract")
        await PostgresStore(url).migrate()
        _database.append(url)
    return _database[0]


@pytest.fixture(params=["sqlite", "postgres"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on ONE fresh database: a second store is a second replica of the service."""
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite3"

        def make() -> SqlStore:
            return SqliteStore(path)
    else:
        url = await _postgres_database()

        def make() -> SqlStore:
            return PostgresStore(url)

    opened: list[SqlStore] = []

    async def factory() -> SqlStore:
        store = make()
        await store.open()
        if not opened and request.param == "postgres":
            async with store.engine.begin() as connection:
                await connection.execute(text("TRUNCATE threads, items, feedback, run_leases CASCADE"))
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def store(new_store: StoreFactory) -> SqlStore:
    return await new_store()


def _thread() -> ThreadMetadata:
    return ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))


def _user(thread_id: str, text: str) -> UserMessageItem:
    return UserMessageItem(
        id=new_id("msg"),
        thread_id=thread_id,
        created_at=datetime.now(UTC),
        content=[UserMessageTextContent(text=text)],
        inference_options=InferenceOptions(),
    )


async def _count(store: SqlStore, table: object) -> int:
    async with store.engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


async def test_threads_are_private_to_their_owner(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert (await store.load_thread(ALICE, thread.id)).id == thread.id
    for stranger in (BOB, MALLORY):
        with pytest.raises(NotFound):
            await store.load_thread(stranger, thread.id)
        with pytest.raises(NotFound):
            await store.add_item(stranger, thread.id, _user(thread.id, "sneaky"))
        with pytest.raises(NotFound):
            await store.delete_thread(stranger, thread.id)
        with pytest.raises(NotFound):
            await store.write(stranger, thread.id, thread=thread)
        assert (await store.list_threads(stranger, limit=10, after=None, order="desc")).data == []
    assert len((await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")).data) == 0


async def test_items_page_in_both_orders_with_cursors(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    added = [_user(thread.id, f"m{i}") for i in range(5)]
    for item in added:
        await store.add_item(ALICE, thread.id, item)
    first = await store.list_items(ALICE, thread.id, limit=2, after=None, order="asc")
    assert [i.id for i in first.data] == [added[0].id, added[1].id]
    assert first.has_more
    assert first.after == added[1].id
    second = await store.list_items(ALICE, thread.id, limit=10, after=first.after, order="asc")
    assert [i.id for i in second.data] == [i.id for i in added[2:]]
    assert not second.has_more
    newest = await store.list_items(ALICE, thread.id, limit=2, after=None, order="desc")
    assert [i.id for i in newest.data] == [added[4].id, added[3].id]
    older = await store.list_items(ALICE, thread.id, limit=10, after=newest.after, order="desc")
    assert [i.id for i in older.data] == [added[2].id, added[1].id, added[0].id]
    recent = await store.recent_items(ALICE, thread.id, 3)
    assert [i.id for i in recent] == [i.id for i in added[2:]]


async def test_items_round_trip_exactly(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    item = _user(thread.id, 'ünïcødé ✓ "quotes" and\nnewlines')
    await store.add_item(ALICE, thread.id, item)
    assert await store.load_item(ALICE, thread.id, item.id) == item
    assert (await store.load_thread(ALICE, thread.id)) == thread


async def test_add_item_upserts_in_place(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    message = AssistantMessageItem(
        id=new_id("msg"),
        thread_id=thread.id,
        created_at=datetime.now(UTC),
        content=[AssistantMessageContent(text="a")],
    )
    later = _user(thread.id, "later")
    await store.add_item(ALICE, thread.id, message)
    await store.add_item(ALICE, thread.id, later)
    message.content[0].text = "ab"
    await store.add_item(ALICE, thread.id, message)
    page = await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [message.id, later.id]
    first = page.data[0]
    assert isinstance(first, AssistantMessageItem)
    assert first.content[0].text == "ab"


async def test_an_item_id_cannot_move_to_another_thread(store: SqlStore) -> None:
    one, two = _thread(), _thread()
    await store.create_thread(ALICE, one)
    await store.create_thread(ALICE, two)
    item = _user(one.id, "x")
    await store.add_item(ALICE, one.id, item)
    with pytest.raises(InvalidRequest):
        await store.add_item(ALICE, two.id, item)
    assert [i.id for i in (await store.list_items(ALICE, one.id, limit=5, after=None, order="asc")).data] == [
        item.id
    ]
    assert (await store.list_items(ALICE, two.id, limit=5, after=None, order="asc")).data == []


async def test_delete_items_after_and_delete_thread(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    added = [_user(thread.id, f"m{i}") for i in range(4)]
    for item in added:
        await store.add_item(ALICE, thread.id, item)
    await store.add_feedback(ALICE, thread.id, [added[0].id], "positive")
    assert await store.delete_items_after(ALICE, thread.id, added[1].id) == 2
    page = await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [added[0].id, added[1].id]
    await store.delete_thread(ALICE, thread.id)
    with pytest.raises(NotFound):
        await store.load_thread(ALICE, thread.id)
    assert await _count(store, items) == 0, "the thread's items went with it"
    assert await _count(store, feedback) == 0, "and their feedback"
    with pytest.raises(NotFound):
        await store.delete_thread(ALICE, thread.id)


async def test_threads_list_newest_first_by_default_and_save_thread(store: SqlStore) -> None:
    threads = [_thread() for _ in range(3)]
    for thread in threads:
        await store.create_thread(ALICE, thread)
    await store.create_thread(BOB, _thread())
    threads[0].title = "renamed"
    threads[0].metadata["active_agent"] = "billing"
    await store.save_thread(ALICE, threads[0])
    page = await store.list_threads(ALICE, limit=2, after=None, order="desc")
    assert [t.id for t in page.data] == [threads[2].id, threads[1].id]
    assert page.has_more
    rest = await store.list_threads(ALICE, limit=2, after=page.after, order="desc")
    assert [t.id for t in rest.data] == [threads[0].id]
    assert not rest.has_more
    assert rest.data[0].title == "renamed"
    assert rest.data[0].metadata == {"active_agent": "billing"}
    oldest = await store.list_threads(ALICE, limit=10, after=None, order="asc")
    assert [t.id for t in oldest.data] == [t.id for t in threads]


async def test_unknown_cursor_is_not_found(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    with pytest.raises(NotFound):
        await store.list_items(ALICE, thread.id, limit=5, after="msg_nope", order="asc")
    with pytest.raises(NotFound):
        await store.list_threads(ALICE, limit=5, after="thr_nope", order="desc")


async def test_feedback_latest_kind_wins(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    item = _user(thread.id, "x")
    await store.add_item(ALICE, thread.id, item)
    await store.add_feedback(ALICE, thread.id, [item.id], "positive")
    await store.add_feedback(ALICE, thread.id, [item.id], "negative")
    assert await store.feedback_for(ALICE, thread.id) == {item.id: "negative"}
    with pytest.raises(NotFound):
        await store.add_feedback(ALICE, thread.id, ["msg_unknown"], "positive")
    with pytest.raises(NotFound):
        await store.add_feedback(BOB, thread.id, [item.id], "positive")


async def test_write_applies_items_deletions_and_thread_state_together(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    old, kept = _user(thread.id, "old"), _user(thread.id, "kept")
    await store.write(ALICE, thread.id, items=[old, kept])
    routed = _user(thread.id, "routed")
    thread.metadata = {"active_agent": "billing"}
    await store.write(ALICE, thread.id, items=[routed], deleted=[old.id, "msg_unknown"], thread=thread)
    page = await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [kept.id, routed.id]
    assert (await store.load_thread(ALICE, thread.id)).metadata == {"active_agent": "billing"}


async def test_a_failed_write_changes_nothing(store: SqlStore) -> None:
    one, two = _thread(), _thread()
    await store.create_thread(ALICE, one)
    await store.create_thread(ALICE, two)
    foreign = _user(one.id, "in thread one")
    await store.add_item(ALICE, one.id, foreign)
    before = _user(two.id, "before")
    await store.add_item(ALICE, two.id, before)
    two.metadata = {"active_agent": "tech"}
    with pytest.raises(InvalidRequest):
        await store.write(
            ALICE, two.id, items=[_user(two.id, "new"), foreign], deleted=[before.id], thread=two
        )
    page = await store.list_items(ALICE, two.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [before.id], "neither the new item nor the deletion happened"
    assert (await store.load_thread(ALICE, two.id)).metadata == {}, "nor the thread state"


async def test_schema_survives_reopening(new_store: StoreFactory) -> None:
    store = await new_store()
    thread = _thread()
    await store.create_thread(ALICE, thread)
    await store.close()
    reopened = await new_store()
    assert (await reopened.load_thread(ALICE, thread.id)).id == thread.id


async def test_two_replicas_see_the_same_data(new_store: StoreFactory) -> None:
    one, two = await new_store(), await new_store()
    thread = _thread()
    await one.create_thread(ALICE, thread)
    item = _user(thread.id, "hello")
    await two.add_item(ALICE, thread.id, item)
    thread.metadata = {"active_agent": "billing"}
    await two.save_thread(ALICE, thread)
    assert (await one.load_item(ALICE, thread.id, item.id)).id == item.id
    assert (await one.load_thread(ALICE, thread.id)).metadata == {"active_agent": "billing"}


# ---------------------------------------------------------------------------- run leases


async def test_a_lease_has_one_holder_until_released(store: SqlStore) -> None:
    assert await store.acquire_lease("thr_a", "one", ttl_s=30)
    assert not await store.acquire_lease("thr_a", "two", ttl_s=30)
    assert await store.acquire_lease("thr_b", "two", ttl_s=30), "leases are per thread"
    assert await store.renew_lease("thr_a", "one", ttl_s=30)
    assert not await store.renew_lease("thr_a", "two", ttl_s=30)
    await store.release_lease("thr_a", "two")  # not the holder: no effect
    assert not await store.acquire_lease("thr_a", "two", ttl_s=30)
    await store.release_lease("thr_a", "one")
    assert not await store.renew_lease("thr_a", "one", ttl_s=30), "released means lost"
    assert await store.acquire_lease("thr_a", "two", ttl_s=30)


async def test_an_expired_lease_can_be_taken_over(store: SqlStore) -> None:
    assert await store.acquire_lease("thr_a", "crashed", ttl_s=0.3)
    assert not await store.acquire_lease("thr_a", "next", ttl_s=30)
    await asyncio.sleep(0.45)
    assert await store.acquire_lease("thr_a", "next", ttl_s=30)
    assert not await store.renew_lease("thr_a", "crashed", ttl_s=30), "the old holder lost it"
    assert await _count(store, run_leases) == 1


async def test_concurrent_acquires_across_replicas_have_one_winner(new_store: StoreFactory) -> None:
    replicas = [await new_store() for _ in range(3)]
    for round_ in range(5):
        key = f"thr_{round_}"
        results = await asyncio.gather(
            *(replicas[i % 3].acquire_lease(key, f"holder-{i}", ttl_s=30) for i in range(12))
        )
        assert sum(results) == 1, results


async def test_a_fenced_write_refuses_another_threads_item_and_a_strangers_thread(store: SqlStore) -> None:
    """The fence check and the first item are one statement on PostgreSQL: when it writes nothing,
    the reason is told apart (another thread's item id, a thread of someone else, a lost lease)."""
    one, two = _thread(), _thread()
    await store.create_thread(ALICE, one)
    await store.create_thread(ALICE, two)
    item = _user(one.id, "x")
    await store.add_item(ALICE, one.id, item)
    assert await store.acquire_lease(two.id, "run-1", ttl_s=30)
    with pytest.raises(InvalidRequest):
        await store.write(ALICE, two.id, items=[item], fence=Fence(two.id, "run-1"))
    with pytest.raises(NotFound):
        await store.write(BOB, two.id, items=[_user(two.id, "y")], fence=Fence(two.id, "run-1"))
    with pytest.raises(LeaseLost):
        await store.write(ALICE, two.id, items=[_user(two.id, "z")], fence=Fence(two.id, "run-2"))
    assert (await store.list_items(ALICE, two.id, limit=5, after=None, order="asc")).data == []
    assert [i.id for i in (await store.list_items(ALICE, one.id, limit=5, after=None, order="asc")).data] == [
        item.id
    ]
    kept = _user(two.id, "by run 1")
    await store.write(ALICE, two.id, items=[kept, _user(two.id, "and more")], fence=Fence(two.id, "run-1"))
    assert len((await store.list_items(ALICE, two.id, limit=5, after=None, order="asc")).data) == 2


async def test_fenced_writes_need_the_lease(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert await store.acquire_lease(thread.id, "run-1", ttl_s=0.2)
    first = _user(thread.id, "by run 1")
    await store.write(ALICE, thread.id, items=[first], fence=Fence(thread.id, "run-1"))
    with pytest.raises(LeaseLost):
        await store.write(ALICE, thread.id, items=[_user(thread.id, "x")], fence=Fence(thread.id, "run-2"))
    await asyncio.sleep(0.3)
    late = _user(thread.id, "run 1 after expiry, nobody took over: still its thread")
    await store.write(ALICE, thread.id, items=[late], fence=Fence(thread.id, "run-1"))
    assert await store.acquire_lease(thread.id, "run-2", ttl_s=30)
    thread.metadata = {"active_agent": "stale"}
    with pytest.raises(LeaseLost) as caught:
        await store.write(
            ALICE,
            thread.id,
            items=[_user(thread.id, "stale")],
            thread=thread,
            fence=Fence(thread.id, "run-1"),
        )
    assert grpc_status(caught.value) == grpc.StatusCode.ABORTED
    page = await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [first.id, late.id]
    assert (await store.load_thread(ALICE, thread.id)).metadata == {}


# ---------------------------------------------------------------------------- fused turn transactions


async def _lease_rows(store: SqlStore) -> dict[str, str]:
    """Thread id -> holder of every lease row (committed)."""
    async with store.engine.connect() as connection:
        rows = (await connection.execute(select(run_leases.c.thread_id, run_leases.c.holder))).all()
    return {str(row[0]): str(row[1]) for row in rows}


async def _item_ids(store: SqlStore, thread_id: str) -> list[str]:
    return [i.id for i in (await store.list_items(ALICE, thread_id, limit=100, after=None, order="asc")).data]


async def test_start_thread_creates_the_thread_leased_with_its_items(store: SqlStore) -> None:
    thread = _thread()
    first = _user(thread.id, "hello")
    await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30, items=[first])
    assert await store.load_thread(ALICE, thread.id) == thread
    assert await store.load_item(ALICE, thread.id, first.id) == first
    assert await _lease_rows(store) == {thread.id: "run-1"}
    assert not await store.acquire_lease(thread.id, "run-2", ttl_s=30), "the lease is taken"
    with pytest.raises(NotFound):  # and the thread is the owner's only
        await store.load_thread(BOB, thread.id)
    # An ordinary lease: it renews, fences and releases like one from `acquire_lease`.
    assert await store.renew_lease(thread.id, "run-1", ttl_s=30)
    second = _user(thread.id, "again")
    await store.write(ALICE, thread.id, items=[second], fence=Fence(thread.id, "run-1"))
    with pytest.raises(LeaseLost):
        await store.write(ALICE, thread.id, items=[_user(thread.id, "x")], fence=Fence(thread.id, "run-2"))
    await store.release_lease(thread.id, "run-1")
    assert await store.acquire_lease(thread.id, "run-2", ttl_s=30)
    assert await _item_ids(store, thread.id) == [first.id, second.id]


async def test_start_thread_without_items(store: SqlStore) -> None:
    thread = _thread()
    await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30)
    assert await _item_ids(store, thread.id) == []
    assert await _lease_rows(store) == {thread.id: "run-1"}


async def test_start_thread_on_a_leased_id_is_busy_and_writes_nothing(store: SqlStore) -> None:
    thread = _thread()
    assert await store.acquire_lease(thread.id, "other", ttl_s=30)
    with pytest.raises(ThreadBusy) as caught:
        await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30, items=[_user(thread.id, "x")])
    assert grpc_status(caught.value) == grpc.StatusCode.ABORTED
    with pytest.raises(NotFound):  # no thread
        await store.load_thread(ALICE, thread.id)
    assert await _count(store, items) == 0, "no items"
    assert await _lease_rows(store) == {thread.id: "other"}, "the other holder's lease is untouched"


async def test_start_thread_takes_over_an_expired_lease(store: SqlStore) -> None:
    thread = _thread()
    assert await store.acquire_lease(thread.id, "crashed", ttl_s=0.3)
    await asyncio.sleep(0.45)
    await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30, items=[_user(thread.id, "x")])
    assert await _lease_rows(store) == {thread.id: "run-1"}
    assert not await store.renew_lease(thread.id, "crashed", ttl_s=30), "the old holder lost it"


async def test_start_thread_is_all_or_nothing(store: SqlStore) -> None:
    existing = _thread()
    foreign = _user(existing.id, "in the existing thread")
    await store.start_thread(ALICE, existing, holder="run-0", ttl_s=30, items=[foreign])
    await store.release_lease(existing.id, "run-0")

    thread = _thread()
    with pytest.raises(InvalidRequest):
        await store.start_thread(
            ALICE, thread, holder="run-1", ttl_s=30, items=[_user(thread.id, "new"), foreign]
        )
    with pytest.raises(NotFound):
        await store.load_thread(ALICE, thread.id)
    assert await _lease_rows(store) == {}, "no lease left behind"
    assert await _item_ids(store, existing.id) == [foreign.id]
    assert await _count(store, items) == 1

    with pytest.raises(AlreadyExists):
        await store.start_thread(BOB, existing, holder="run-2", ttl_s=30, items=[_user(existing.id, "y")])
    assert await _lease_rows(store) == {}
    assert await _count(store, items) == 1


async def test_lease_thread_takes_the_lease_and_reads_the_thread(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    thread.title = "named"
    thread.metadata = {"active_agent": "billing"}
    await store.save_thread(ALICE, thread)
    assert await store.lease_thread(ALICE, thread.id, holder="run-1", ttl_s=30) == thread
    assert await _lease_rows(store) == {thread.id: "run-1"}
    assert not await store.acquire_lease(thread.id, "run-2", ttl_s=30)
    assert await store.renew_lease(thread.id, "run-1", ttl_s=30)
    item = _user(thread.id, "fenced")
    await store.write(ALICE, thread.id, items=[item], fence=Fence(thread.id, "run-1"))
    with pytest.raises(LeaseLost):
        await store.write(ALICE, thread.id, items=[_user(thread.id, "x")], fence=Fence(thread.id, "run-2"))
    await store.release_lease(thread.id, "run-1")
    assert await _lease_rows(store) == {}
    assert (await store.lease_thread(ALICE, thread.id, holder="run-2", ttl_s=30)).id == thread.id
    assert await _item_ids(store, thread.id) == [item.id]


async def test_lease_thread_of_someone_else_is_not_found_and_takes_nothing(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    for stranger in (BOB, MALLORY):
        with pytest.raises(NotFound):
            await store.lease_thread(stranger, thread.id, holder="stranger", ttl_s=30)
    with pytest.raises(NotFound):
        await store.lease_thread(ALICE, "thr_unknown", holder="run-1", ttl_s=30)
    assert await _lease_rows(store) == {}, "no lease taken"
    # Busy or not, someone else's thread is NOT_FOUND, and the holder keeps its lease.
    assert await store.acquire_lease(thread.id, "run-1", ttl_s=30)
    with pytest.raises(NotFound) as caught:
        await store.lease_thread(BOB, thread.id, holder="stranger", ttl_s=30)
    assert not isinstance(caught.value, ThreadBusy)
    assert await _lease_rows(store) == {thread.id: "run-1"}
    assert await store.renew_lease(thread.id, "run-1", ttl_s=30)


async def test_lease_thread_of_an_expired_lease_by_a_stranger_leaves_it(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert await store.acquire_lease(thread.id, "crashed", ttl_s=0.3)
    await asyncio.sleep(0.45)
    with pytest.raises(NotFound):
        await store.lease_thread(BOB, thread.id, holder="stranger", ttl_s=30)
    assert await _lease_rows(store) == {thread.id: "crashed"}, "the takeover was rolled back"


async def test_lease_thread_on_a_busy_thread_is_busy_and_changes_nothing(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert await store.acquire_lease(thread.id, "run-1", ttl_s=30)
    with pytest.raises(ThreadBusy) as caught:
        await store.lease_thread(ALICE, thread.id, holder="run-2", ttl_s=30)
    assert grpc_status(caught.value) == grpc.StatusCode.ABORTED
    assert await _lease_rows(store) == {thread.id: "run-1"}
    assert await store.renew_lease(thread.id, "run-1", ttl_s=30)


async def test_lease_thread_takes_over_an_expired_lease(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert await store.acquire_lease(thread.id, "crashed", ttl_s=0.3)
    with pytest.raises(ThreadBusy):
        await store.lease_thread(ALICE, thread.id, holder="next", ttl_s=30)
    await asyncio.sleep(0.45)
    assert (await store.lease_thread(ALICE, thread.id, holder="next", ttl_s=30)).id == thread.id
    assert not await store.renew_lease(thread.id, "crashed", ttl_s=30), "the old holder lost it"
    with pytest.raises(LeaseLost):
        await store.write(ALICE, thread.id, items=[_user(thread.id, "x")], fence=Fence(thread.id, "crashed"))
    assert await _lease_rows(store) == {thread.id: "next"}


async def test_concurrent_lease_threads_across_replicas_have_one_winner(new_store: StoreFactory) -> None:
    replicas = [await new_store() for _ in range(3)]
    thread = _thread()
    await replicas[0].create_thread(ALICE, thread)

    async def attempt(i: int) -> bool:
        try:
            await replicas[i % 3].lease_thread(ALICE, thread.id, holder=f"holder-{i}", ttl_s=30)
        except ThreadBusy:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(12)))
    assert sum(results) == 1, results


async def test_write_recent_writes_then_reads_the_newest_items(store: SqlStore) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    added = [_user(thread.id, f"m{i}") for i in range(3)]
    await store.write(ALICE, thread.id, items=added)
    new = _user(thread.id, "new")
    recent = await store.write_recent(ALICE, thread.id, items=[new], limit=2)
    assert recent == [added[2], new]
    assert recent == await store.recent_items(ALICE, thread.id, 2)
    everything = await store.write_recent(ALICE, thread.id, deleted=[added[0].id], limit=100)
    assert [i.id for i in everything] == [added[1].id, added[2].id, new.id]
    assert await store.write_recent(ALICE, thread.id, limit=0) == []
    thread.metadata = {"active_agent": "tech"}
    await store.write_recent(ALICE, thread.id, thread=thread, limit=1)
    assert (await store.load_thread(ALICE, thread.id)).metadata == {"active_agent": "tech"}


async def test_write_recent_is_fenced(store: SqlStore) -> None:
    thread = _thread()
    await store.start_thread(ALICE, thread, holder="run-1", ttl_s=30)
    first = _user(thread.id, "by run 1")
    assert await store.write_recent(
        ALICE, thread.id, items=[first], fence=Fence(thread.id, "run-1"), limit=20
    ) == [first]
    with pytest.raises(LeaseLost):
        await store.write_recent(
            ALICE, thread.id, items=[_user(thread.id, "x")], fence=Fence(thread.id, "run-2"), limit=20
        )
    assert await _item_ids(store, thread.id) == [first.id], "nothing written"


async def test_write_recent_fails_as_write_does_and_changes_nothing(store: SqlStore) -> None:
    one, two = _thread(), _thread()
    await store.create_thread(ALICE, one)
    await store.create_thread(ALICE, two)
    foreign = _user(one.id, "in thread one")
    await store.add_item(ALICE, one.id, foreign)
    for stranger in (BOB, MALLORY):
        with pytest.raises(NotFound):
            await store.write_recent(stranger, one.id, items=[_user(one.id, "sneaky")], limit=20)
    with pytest.raises(InvalidRequest):
        await store.write_recent(ALICE, two.id, items=[_user(two.id, "new"), foreign], limit=20)
    assert await _item_ids(store, one.id) == [foreign.id]
    assert await _item_ids(store, two.id) == []
