"""The store contract, run against the SQLite store on a real database file."""

from __future__ import annotations

from collections.abc import AsyncIterator
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

from services.agent_service.store import SqliteStore, Store
from services.common.auth import Principal
from services.common.errors import ServiceError
from services.common.ids import new_id

ALICE = Principal(tenant="acme", user="alice", role="user")
BOB = Principal(tenant="acme", user="bob", role="user")
MALLORY = Principal(tenant="globex", user="alice", role="admin")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    await store.open()
    yield store
    await store.close()


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


async def test_threads_are_private_to_their_owner(store: Store) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    assert (await store.load_thread(ALICE, thread.id)).id == thread.id
    for stranger in (BOB, MALLORY):
        with pytest.raises(ServiceError) as caught:
            await store.load_thread(stranger, thread.id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ServiceError):
            await store.add_item(stranger, thread.id, _user(thread.id, "sneaky"))
        with pytest.raises(ServiceError):
            await store.delete_thread(stranger, thread.id)
        assert (await store.list_threads(stranger, limit=10, after=None, order="desc")).data == []
    assert len((await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")).data) == 0


async def test_items_page_in_both_orders_with_cursors(store: Store) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    items = [_user(thread.id, f"m{i}") for i in range(5)]
    for item in items:
        await store.add_item(ALICE, thread.id, item)
    first = await store.list_items(ALICE, thread.id, limit=2, after=None, order="asc")
    assert [i.id for i in first.data] == [items[0].id, items[1].id]
    assert first.has_more
    assert first.after == items[1].id
    second = await store.list_items(ALICE, thread.id, limit=10, after=first.after, order="asc")
    assert [i.id for i in second.data] == [i.id for i in items[2:]]
    assert not second.has_more
    newest = await store.list_items(ALICE, thread.id, limit=2, after=None, order="desc")
    assert [i.id for i in newest.data] == [items[4].id, items[3].id]
    recent = await store.recent_items(ALICE, thread.id, 3)
    assert [i.id for i in recent] == [i.id for i in items[2:]]


async def test_add_item_upserts_in_place(store: Store) -> None:
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


async def test_an_item_id_cannot_move_to_another_thread(store: Store) -> None:
    one, two = _thread(), _thread()
    await store.create_thread(ALICE, one)
    await store.create_thread(ALICE, two)
    item = _user(one.id, "x")
    await store.add_item(ALICE, one.id, item)
    with pytest.raises(ServiceError) as caught:
        await store.add_item(ALICE, two.id, item)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_items_after_and_delete_thread(store: Store) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    items = [_user(thread.id, f"m{i}") for i in range(4)]
    for item in items:
        await store.add_item(ALICE, thread.id, item)
    assert await store.delete_items_after(ALICE, thread.id, items[1].id) == 2
    page = await store.list_items(ALICE, thread.id, limit=10, after=None, order="asc")
    assert [i.id for i in page.data] == [items[0].id, items[1].id]
    await store.delete_thread(ALICE, thread.id)
    with pytest.raises(ServiceError):
        await store.load_thread(ALICE, thread.id)


async def test_threads_list_newest_first_by_default_and_save_thread(store: Store) -> None:
    threads = [_thread() for _ in range(3)]
    for thread in threads:
        await store.create_thread(ALICE, thread)
    threads[0].title = "renamed"
    threads[0].metadata["active_agent"] = "billing"
    await store.save_thread(ALICE, threads[0])
    page = await store.list_threads(ALICE, limit=2, after=None, order="desc")
    assert [t.id for t in page.data] == [threads[2].id, threads[1].id]
    assert page.has_more
    rest = await store.list_threads(ALICE, limit=2, after=page.after, order="desc")
    assert [t.id for t in rest.data] == [threads[0].id]
    assert rest.data[0].title == "renamed"
    assert rest.data[0].metadata == {"active_agent": "billing"}


async def test_unknown_cursor_is_not_found(store: Store) -> None:
    thread = _thread()
    await store.create_thread(ALICE, thread)
    with pytest.raises(ServiceError) as caught:
        await store.list_items(ALICE, thread.id, limit=5, after="msg_nope", order="asc")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


async def test_feedback_latest_kind_wins(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.sqlite3")
    await store.open()
    thread = _thread()
    await store.create_thread(ALICE, thread)
    item = _user(thread.id, "x")
    await store.add_item(ALICE, thread.id, item)
    await store.add_feedback(ALICE, thread.id, [item.id], "positive")
    await store.add_feedback(ALICE, thread.id, [item.id], "negative")
    assert await store.feedback_for(ALICE, thread.id) == {item.id: "negative"}
    with pytest.raises(ServiceError):
        await store.add_feedback(ALICE, thread.id, ["msg_unknown"], "positive")
    await store.close()


async def test_schema_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    store = SqliteStore(path)
    await store.open()
    thread = _thread()
    await store.create_thread(ALICE, thread)
    await store.close()
    reopened = SqliteStore(path)
    await reopened.open()
    assert (await reopened.load_thread(ALICE, thread.id)).id == thread.id
    await reopened.close()
