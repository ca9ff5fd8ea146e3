"""How many store transactions a turn takes, and that the fused ones change nothing the model sees.

Every store method is one transaction (one hop to the SQLite store's database thread, a checkout and
round trips on PostgreSQL), so a turn's count is part of its cost: a new thread is 3 (create + lease +
user message, the assistant message, the release), a message to an existing thread 4 (lease + read,
user message + history, the assistant message, the release).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from chatkit.actions import Action
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadCreatedEvent,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
    UserMessageInput,
    UserMessageItem,
    UserMessageTextContent,
)
from sqlalchemy.engine import Connection

from services.agent_service.conversation import Conversation
from services.agent_service.store import SqlStore, ThreadBusy
from services.agent_service.turn import ActionRequest, Turn
from services.common.auth import Principal
from services.common.ids import new_id
from switchboard.app import Busy, NotFound, SwitchboardError
from tests.unit.agent_service.store_support import BACKENDS, opened_store

T = TypeVar("T")
ALICE = Principal(tenant="acme", user="alice", role="user")
BOB = Principal(tenant="acme", user="bob", role="user")


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with opened_store(request.param, tmp_path, "turns") as opened:
        yield opened


class Transactions:
    """Counts the store's transactions (`SqlStore._run` calls) by the method that ran them."""

    def __init__(self, store: SqlStore) -> None:
        self.names: list[str] = []
        run = store._run

        async def counted(body: Callable[[Connection], T], *, single: bool = False) -> T:
            method = body.__qualname__.split(".<locals>")[0].rsplit(".", 1)[-1]
            self.names.append("write" if method == "_writer" else method)
            return await run(body, single=single)

        store._run = counted  # type: ignore[method-assign]

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


class RecordingResponder:
    """Answers every turn with one assistant message and records the turns it was given."""

    def __init__(self) -> None:
        self.turns: list[Turn] = []

    async def respond(self, turn: Turn) -> AsyncIterator[ThreadStreamEvent]:
        self.turns.append(turn)
        yield ThreadItemDoneEvent(
            item=AssistantMessageItem(
                id=new_id("msg"),
                thread_id=turn.thread.id,
                created_at=datetime.now(UTC),
                content=[AssistantMessageContent(text="ok")],
            )
        )

    def action(self, request: ActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        raise NotImplementedError

    async def sync_action(self, request: ActionRequest) -> ThreadItem | None:
        raise NotImplementedError

    def check_action(self, action: Action[str, Any], *, streaming: bool = True) -> object:
        raise NotImplementedError


def _message(text: str) -> UserMessageInput:
    return UserMessageInput(
        content=[UserMessageTextContent(text=text)], attachments=[], inference_options=InferenceOptions()
    )


async def _all(stream: AsyncIterator[ThreadStreamEvent]) -> list[ThreadStreamEvent]:
    return [event async for event in stream]


def _thread_id(events: list[ThreadStreamEvent]) -> str:
    created = events[0]
    assert isinstance(created, ThreadCreatedEvent)
    return created.thread.id


async def test_a_turn_takes_three_transactions_on_a_new_thread_and_four_after(store: SqlStore) -> None:
    conversation = Conversation(store, RecordingResponder(), history_items=20)
    transactions = Transactions(store)
    thread_id = _thread_id(await _all(conversation.create_thread(ALICE, "en", _message("hi"))))
    assert transactions.take() == ["start_thread", "write", "release_lease"]
    await _all(conversation.add_user_message(ALICE, "en", thread_id, _message("again")))
    assert transactions.take() == ["lease_thread", "write_recent", "write", "release_lease"]


@pytest.mark.parametrize("history_items", [0, 1, 3, 20])
async def test_the_model_sees_the_history_the_store_has(store: SqlStore, history_items: int) -> None:
    responder = RecordingResponder()
    conversation = Conversation(store, responder, history_items=history_items)
    events = await _all(conversation.create_thread(ALICE, "en", _message("first")))
    thread_id = _thread_id(events)
    user = events[1]
    assert isinstance(user, ThreadItemDoneEvent) and isinstance(user.item, UserMessageItem)
    first = responder.turns[-1]
    assert first.input_user_message is not None and first.input_user_message.id == user.item.id
    assert first.history == ([user.item] if history_items else [])
    assert all(h is not user.item for h in first.history), "a copy: the responder may not alias it"

    for text in ("second", "third"):
        await _all(conversation.add_user_message(ALICE, "en", thread_id, _message(text)))
        turn = responder.turns[-1]
        stored = (await store.list_items(ALICE, thread_id, limit=100, after=None, order="asc")).data
        before_answer = stored[:-1]  # the assistant message was written after the turn began
        expected = before_answer[-history_items:] if history_items else []
        assert turn.history == expected
        assert turn.input_user_message is not None
        if history_items:
            assert turn.history[-1].id == turn.input_user_message.id


async def test_a_stranger_and_a_busy_thread_write_nothing(store: SqlStore) -> None:
    conversation = Conversation(store, RecordingResponder(), history_items=20)
    thread_id = _thread_id(await _all(conversation.create_thread(ALICE, "en", _message("hi"))))
    before = (await store.list_items(ALICE, thread_id, limit=100, after=None, order="asc")).data
    assert await store.acquire_lease(thread_id, "someone", ttl_s=30)
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: anext(conversation.add_user_message(BOB, "en", thread_id, _message("hello?"))),
        lambda: anext(conversation.add_user_message(ALICE, "en", thread_id, _message("me too"))),
    ]
    errors: list[SwitchboardError] = []
    for call in calls:
        with pytest.raises(SwitchboardError) as caught:
            await call()
        errors.append(caught.value)
    assert [type(error) for error in errors] == [NotFound, ThreadBusy]
    assert isinstance(errors[1], Busy)
    assert (await store.list_items(ALICE, thread_id, limit=100, after=None, order="asc")).data == before
    assert await store.renew_lease(thread_id, "someone", ttl_s=30), "the holder kept its lease"
