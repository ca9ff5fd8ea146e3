"""The per-thread run lease, alone and inside the conversation, on both backends.

The conversation runs with a scripted responder (no agents): it announces an assistant message,
streams deltas slowly and finishes it, optionally after a "handoff" that changes the thread metadata.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from chatkit.actions import Action
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    InferenceOptions,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageInput,
    UserMessageTextContent,
    WorkflowItem,
)
from chatkit.types import CustomSummary as Summary
from chatkit.types import Workflow as WorkflowModel
from sqlalchemy import text

from services.agent_service.conversation import Conversation
from services.agent_service.store import (
    LeaseLost,
    RunLease,
    SqlStore,
    ThreadBusy,
)
from services.agent_service.turn import ACTIVE_AGENT_KEY, ActionRequest, Turn
from services.common.auth import Principal
from services.common.errors import grpc_status
from services.common.ids import new_id
from switchboard.app import Busy, NotFound
from tests.unit.agent_service.store_support import BACKENDS, opened_store

ALICE = Principal(tenant="acme", user="alice", role="user")
TTL = 0.6


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with opened_store(request.param, tmp_path, "lease") as opened:
        yield opened


async def _steal(store: SqlStore, thread_id: str) -> None:
    """What another replica does after this one's lease expired: take the row over."""
    async with store.engine.begin() as connection:
        await connection.execute(
            text("UPDATE run_leases SET holder = 'thief' WHERE thread_id = :t"), {"t": thread_id}
        )


# ---------------------------------------------------------------------------- RunLease


async def test_the_heartbeat_keeps_a_long_run_leased(store: SqlStore) -> None:
    key, ttl = new_id("thr"), 0.3
    async with RunLease(store, key, ttl_s=ttl).hold() as lease:
        await asyncio.sleep(ttl * 2.5)
        assert not lease.lost
        with pytest.raises(ThreadBusy) as caught:
            await RunLease(store, key, ttl_s=ttl).acquire()
        assert grpc_status(caught.value) == grpc.StatusCode.ABORTED
    async with RunLease(store, key, ttl_s=ttl).hold():
        pass  # released: free at once, no need to wait for the TTL


async def test_a_waiting_request_gets_the_lease_when_the_run_ends(store: SqlStore) -> None:
    key = new_id("thr")
    first = RunLease(store, key, ttl_s=TTL)
    await first.acquire()
    asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(first.release()))
    started = asyncio.get_running_loop().time()
    async with RunLease(store, key, ttl_s=TTL, wait_s=3).hold():
        waited = asyncio.get_running_loop().time() - started
    assert 0.25 < waited < 1.5


async def test_a_lost_lease_is_noticed_and_cancels_a_waiting_run(store: SqlStore) -> None:
    key = new_id("thr")
    lease = RunLease(store, key, ttl_s=TTL)

    held = asyncio.Event()

    async def run() -> str:
        async with lease.hold():
            lease.interruptible = True
            held.set()
            try:
                await asyncio.sleep(30)  # waiting for the model
            except asyncio.CancelledError:
                assert lease.absorb_cancel()
                return "stopped"
            return "finished"

    task = asyncio.create_task(run())
    await held.wait()  # steal only a lease that exists (taking it may take a while under load)
    await _steal(store, key)
    result = await asyncio.wait_for(task, timeout=TTL * 2)
    assert result == "stopped" and lease.lost
    with pytest.raises(LeaseLost):
        lease.check()
    assert not await store.acquire_lease(key, "third", ttl_s=TTL), "the thief's lease was left alone"


async def _claim_existing(store: SqlStore, lease: RunLease) -> ThreadMetadata:
    return await store.lease_thread(ALICE, lease.thread_id, holder=lease.holder, ttl_s=lease.ttl_s)


async def _new_thread(store: SqlStore) -> str:
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))
    await store.create_thread(ALICE, thread)
    return thread.id


@pytest.mark.parametrize("how", ["start_thread", "lease_thread"])
async def test_an_adopted_lease_heartbeats_fences_and_releases_like_an_acquired_one(
    store: SqlStore, how: str
) -> None:
    ttl = 0.3
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC))
    if how == "lease_thread":
        await store.create_thread(ALICE, thread)
    lease = RunLease(store, thread.id, ttl_s=ttl)

    async def claim() -> str:
        if how == "start_thread":
            await store.start_thread(ALICE, thread, holder=lease.holder, ttl_s=lease.ttl_s)
        else:
            await _claim_existing(store, lease)
        return "claimed"

    async with lease.holding(claim) as claimed:
        assert claimed == "claimed"
        await asyncio.sleep(ttl * 2.5)
        assert not lease.lost, "the heartbeat kept it"
        with pytest.raises(ThreadBusy):
            await RunLease(store, thread.id, ttl_s=ttl).acquire()
        other = RunLease(store, thread.id, ttl_s=ttl)
        with pytest.raises(ThreadBusy):
            async with other.holding(lambda: _claim_existing(store, other)):
                pass
        await store.write(ALICE, thread.id, items=[], fence=lease.fence)
        with pytest.raises(LeaseLost):
            await store.write(ALICE, thread.id, items=[], fence=other.fence)
    assert not await store.renew_lease(thread.id, lease.holder, ttl_s=ttl), "released"
    async with RunLease(store, thread.id, ttl_s=ttl).hold():
        pass  # free at once, no need to wait for the TTL


async def test_an_adopted_lease_that_is_stolen_is_lost(store: SqlStore) -> None:
    thread_id = await _new_thread(store)
    lease = RunLease(store, thread_id, ttl_s=TTL)

    held = asyncio.Event()

    async def run() -> str:
        async with lease.holding(lambda: _claim_existing(store, lease)):
            lease.interruptible = True
            held.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                assert lease.absorb_cancel()
                return "stopped"
            return "finished"

    task = asyncio.create_task(run())
    await held.wait()
    await _steal(store, thread_id)
    assert await asyncio.wait_for(task, timeout=TTL * 2) == "stopped"
    assert lease.lost
    with pytest.raises(LeaseLost):
        await store.write(ALICE, thread_id, items=[], fence=lease.fence)


async def test_holding_waits_for_a_busy_thread_but_not_for_a_strangers(store: SqlStore) -> None:
    thread_id = await _new_thread(store)
    first = RunLease(store, thread_id, ttl_s=TTL)
    await first.acquire()
    loop = asyncio.get_running_loop()
    loop.call_later(0.3, lambda: asyncio.ensure_future(first.release()))
    started = loop.time()
    second = RunLease(store, thread_id, ttl_s=TTL, wait_s=3)
    async with second.holding(lambda: _claim_existing(store, second)) as thread:
        waited = loop.time() - started
        assert thread.id == thread_id
    assert 0.25 < waited < 1.5

    await first.acquire()
    try:
        stranger = Principal(tenant="globex", user="alice", role="user")
        third = RunLease(store, thread_id, ttl_s=TTL, wait_s=3)
        started = loop.time()
        with pytest.raises(NotFound):
            async with third.holding(
                lambda: store.lease_thread(stranger, thread_id, holder=third.holder, ttl_s=TTL)
            ):
                pass
        assert loop.time() - started < 0.25, "NOT_FOUND at once: only a busy thread is waited for"
    finally:
        await first.release()


# ---------------------------------------------------------------------------- in the conversation


class ScriptedResponder:
    """Streams one assistant message of `words` deltas, `delay_s` apart; may hand off first."""

    def __init__(self, words: int = 20, delay_s: float = 0.02, handoff_to: str | None = None) -> None:
        self.words = words
        self.delay_s = delay_s
        self.handoff_to = handoff_to
        self.closed = asyncio.Event()
        self.started = asyncio.Event()

    async def respond(self, turn: Turn) -> AsyncIterator[ThreadStreamEvent]:
        try:
            self.started.set()
            if self.handoff_to:
                turn.thread.metadata = {**turn.thread.metadata, ACTIVE_AGENT_KEY: self.handoff_to}
                yield ThreadItemDoneEvent(
                    item=WorkflowItem(
                        id=new_id("wf"),
                        thread_id=turn.thread.id,
                        created_at=datetime.now(UTC),
                        workflow=WorkflowModel(type="custom", tasks=[], summary=Summary(title="routed")),
                    )
                )
            item = AssistantMessageItem(
                id=new_id("msg"), thread_id=turn.thread.id, created_at=datetime.now(UTC), content=[]
            )
            yield ThreadItemAddedEvent(item=item)
            for index in range(self.words):
                await asyncio.sleep(self.delay_s)
                yield ThreadItemUpdatedEvent(
                    item_id=item.id,
                    update=AssistantMessageContentPartTextDelta(content_index=0, delta=f"w{index} "),
                )
            item.content = [AssistantMessageContent(text="".join(f"w{i} " for i in range(self.words)))]
            yield ThreadItemDoneEvent(item=item)
        finally:
            self.closed.set()

    def action(self, request: ActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        raise NotImplementedError

    async def sync_action(self, request: ActionRequest) -> ThreadItem | None:
        raise NotImplementedError

    def check_action(self, action: Action[str, Any], *, streaming: bool = True) -> object:
        raise NotImplementedError


def _message(text_: str) -> UserMessageInput:
    return UserMessageInput(
        content=[UserMessageTextContent(text=text_)], attachments=[], inference_options=InferenceOptions()
    )


async def _thread_with_one_turn(conversation: Conversation) -> str:
    events = [event async for event in conversation.create_thread(ALICE, "en", _message("hi"))]
    return events[0].thread.id  # type: ignore[union-attr]


async def _until_streaming(stream: AsyncIterator[ThreadStreamEvent]) -> list[ThreadStreamEvent]:
    """Read events up to the first text delta: the run is then waiting for the next token."""
    received = []
    async for event in stream:
        received.append(event)
        if isinstance(event, ThreadItemUpdatedEvent):
            return received
    raise AssertionError("the stream ended before any delta")


async def _items(store: SqlStore, thread_id: str) -> list[ThreadItem]:
    return (await store.list_items(ALICE, thread_id, limit=100, after=None, order="asc")).data


async def test_a_second_run_on_a_busy_thread_is_refused_and_writes_nothing(store: SqlStore) -> None:
    fast = Conversation(store, ScriptedResponder(words=2, delay_s=0), history_items=20, lease_ttl_s=TTL)
    thread_id = await _thread_with_one_turn(fast)
    slow_responder = ScriptedResponder(words=30, delay_s=0.01)
    slow = Conversation(store, slow_responder, history_items=20, lease_ttl_s=TTL)
    other_replica = Conversation(store, ScriptedResponder(), history_items=20, lease_ttl_s=TTL)

    first = slow.add_user_message(ALICE, "en", thread_id, _message("long one"))
    received = await _until_streaming(first)
    before = [item.id for item in await _items(store, thread_id)]
    with pytest.raises(Busy) as caught:
        await anext(other_replica.add_user_message(ALICE, "en", thread_id, _message("me too")))
    assert "busy" in caught.value.message
    assert [item.id for item in await _items(store, thread_id)] == before, "the refused request wrote nothing"

    received += [event async for event in first]
    assert isinstance(received[-1], ThreadItemDoneEvent), "the first run was not disturbed"
    assert len(await _items(store, thread_id)) == len(before) + 1
    again = [event async for event in other_replica.add_user_message(ALICE, "en", thread_id, _message("now"))]
    assert isinstance(again[-1], ThreadItemDoneEvent), "the lease was released when the run ended"


async def test_a_stranger_gets_not_found_not_busy(store: SqlStore) -> None:
    conversation = Conversation(store, ScriptedResponder(words=2, delay_s=0), history_items=20)
    thread_id = await _thread_with_one_turn(conversation)
    assert await store.acquire_lease(thread_id, "someone", ttl_s=30)
    stranger = Principal(tenant="globex", user="alice", role="user")
    with pytest.raises(NotFound):
        await anext(conversation.add_user_message(stranger, "en", thread_id, _message("hello?")))


async def test_a_run_that_loses_its_lease_stops_and_writes_nothing_more(store: SqlStore) -> None:
    conversation = Conversation(store, ScriptedResponder(words=2, delay_s=0), history_items=20)
    thread_id = await _thread_with_one_turn(conversation)
    responder = ScriptedResponder(words=200, delay_s=0.02)
    victim = Conversation(store, responder, history_items=20, lease_ttl_s=TTL)
    stream = victim.add_user_message(ALICE, "en", thread_id, _message("long one"))
    await _until_streaming(stream)
    await _steal(store, thread_id)
    stored = [item.id for item in await _items(store, thread_id)]
    with pytest.raises(LeaseLost) as caught:
        async for _ in stream:
            pass
    assert grpc_status(caught.value) == grpc.StatusCode.ABORTED
    assert responder.closed.is_set(), "the agent run was stopped"
    await asyncio.sleep(0.1)
    assert [item.id for item in await _items(store, thread_id)] == stored, "no partial answer, no note"


async def test_cancelling_a_run_saves_the_partial_answer_and_frees_the_thread(store: SqlStore) -> None:
    conversation = Conversation(store, ScriptedResponder(words=2, delay_s=0), history_items=20)
    thread_id = await _thread_with_one_turn(conversation)
    responder = ScriptedResponder(words=200, delay_s=0.01)
    runner = Conversation(store, responder, history_items=20, lease_ttl_s=TTL)

    async def consume() -> None:
        # As the gRPC handler does: the stream is closed when its consumer is cancelled.
        async with aclosing(runner.add_user_message(ALICE, "en", thread_id, _message("long one"))) as events:
            async for event in events:
                if isinstance(event, ThreadItemUpdatedEvent):
                    await asyncio.sleep(0.05)

    task = asyncio.create_task(consume())
    await responder.started.wait()
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    kinds = [item.type for item in await _items(store, thread_id)]
    assert kinds[-2:] == ["assistant_message", "sdk_hidden_context"]
    assert await store.acquire_lease(thread_id, "next", ttl_s=30), "released on cancellation"


class RecordingStore:
    """Wraps a store and records every `write` call."""

    def __init__(self, inner: SqlStore) -> None:
        self.inner = inner
        self.writes: list[tuple[Sequence[str], bool]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def write(self, owner: Principal, thread_id: str, **changes: Any) -> None:
        self.writes.append(
            ([item.id for item in changes.get("items", ())], changes.get("thread") is not None)
        )
        await self.inner.write(owner, thread_id, **changes)

    async def add_item(self, owner: Principal, thread_id: str, item: ThreadItem) -> None:
        await self.write(owner, thread_id, items=[item])

    async def save_thread(self, owner: Principal, thread: ThreadMetadata) -> None:
        await self.write(owner, thread.id, thread=thread)


async def test_a_handoff_is_saved_with_the_item_that_announced_it(store: SqlStore) -> None:
    recording = RecordingStore(store)
    conversation = Conversation(
        recording,  # type: ignore[arg-type]
        ScriptedResponder(words=2, delay_s=0, handoff_to="Billing specialist"),
        history_items=20,
    )
    events = [event async for event in conversation.create_thread(ALICE, "en", _message("invoice?"))]
    thread_id = events[0].thread.id  # type: ignore[union-attr]
    workflow = next(
        event.item
        for event in events
        if isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, WorkflowItem)
    )
    assert (([workflow.id], True)) in recording.writes, "one transaction: the routed item and the metadata"
    assert sum(1 for _, with_thread in recording.writes if with_thread) == 1
    assert (await store.load_thread(ALICE, thread_id)).metadata == {ACTIVE_AGENT_KEY: "Billing specialist"}
