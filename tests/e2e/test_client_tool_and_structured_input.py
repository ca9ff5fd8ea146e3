"""Turns that wait for the user, through the real edge and agent service over HTTP: the client tool
round trip (`threads.add_client_tool_output`) and a structured input form
(`threads.add_structured_input`). Every SSE event is validated against openai-chatkit's models by
the wire helpers."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiohttp
from chatkit.types import (
    AssistantMessageItem,
    ClientToolCallItem,
    StructuredInputItem,
    ThreadCreatedEvent,
    ThreadItemDoneEvent,
    ThreadItemReplacedEvent,
    ThreadStreamEvent,
)

from tests.support.chatkit_wire import (
    ITEM_PAGE,
    assistant_text,
    call,
    error_of,
    request,
    stream,
    user_input,
)
from tests.support.processes import Stack

BROWSER_TIME = {"time": "14:05", "timezone": "Europe/Paris"}


def _counts(stack: Stack) -> tuple[int, int]:
    with sqlite3.connect(stack.store_path) as db:
        threads = db.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
        items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    return int(threads), int(items)


def _done_items(events: list[ThreadStreamEvent]) -> list[Any]:
    return [event.item for event in events if isinstance(event, ThreadItemDoneEvent)]


async def _create(
    http: aiohttp.ClientSession, stack: Stack, text: str
) -> tuple[str, list[ThreadStreamEvent]]:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input(text)), stack.headers()
    )
    created = events[0]
    assert isinstance(created, ThreadCreatedEvent)
    return created.thread.id, events


async def _items(http: aiohttp.ClientSession, stack: Stack, thread_id: str) -> list[Any]:
    page = ITEM_PAGE.validate_python(
        await call(
            http,
            stack.edge_url,
            request("items.list", thread_id=thread_id, order="asc", limit=50),
            stack.headers(),
        )
    )
    return list(page.data)


async def test_client_tool_round_trip(http: aiohttp.ClientSession, stack: Stack) -> None:
    thread_id, events = await _create(http, stack, "What time is it for me?")
    done = _done_items(events)
    pending = done[-1]
    assert isinstance(pending, ClientToolCallItem), [event.type for event in events]
    assert pending.status == "pending" and pending.name == "get_user_local_time"
    assert pending.call_id.startswith("call_") and pending.output is None
    assert not any(isinstance(item, AssistantMessageItem) for item in done), "no answer before the browser's"
    last_item_event = max(i for i, e in enumerate(events) if e.type.startswith("thread.item."))
    assert events[last_item_event] == ThreadItemDoneEvent(item=pending), "the pending call ends the turn"

    answer = await stream(
        http,
        stack.edge_url,
        request("threads.add_client_tool_output", thread_id=thread_id, result=BROWSER_TIME),
        stack.headers(),
    )
    assert answer[0].type == "stream_options"
    assert "14:05" in assistant_text(answer) and "Europe/Paris" in assistant_text(answer)
    assert not any(item.type == "workflow" for item in _done_items(answer)), "the same specialist continues"

    stored = await _items(http, stack, thread_id)
    [completed] = [item for item in stored if isinstance(item, ClientToolCallItem)]
    assert completed.id == pending.id and completed.call_id == pending.call_id
    assert completed.status == "completed" and completed.output == BROWSER_TIME
    assert isinstance(stored[-1], AssistantMessageItem) and "14:05" in stored[-1].content[0].text

    before = _counts(stack)
    again = await call(
        http,
        stack.edge_url,
        request("threads.add_client_tool_output", thread_id=thread_id, result=BROWSER_TIME),
        stack.headers(),
        status=400,
    )
    code, message = error_of(again)
    assert code == "FAILED_PRECONDITION" and "pending" in message
    assert _counts(stack) == before
    assert await _items(http, stack, thread_id) == stored


async def test_structured_input_round_trip(http: aiohttp.ClientSession, stack: Stack) -> None:
    thread_id, events = await _create(http, stack, "Please open a ticket, my app keeps crashing")
    form = _done_items(events)[-1]
    assert isinstance(form, StructuredInputItem), [event.type for event in events]
    assert form.status == "pending"
    assert [question.id for question in form.inputs] == ["priority", "details"]
    assert not assistant_text(events), "the form ends the turn"

    submission = {
        "status": "answered",
        "answers": {"priority": {"values": ["High"]}, "details": {"values": ["It crashes on startup"]}},
    }
    answer = await stream(
        http,
        stack.edge_url,
        request("threads.add_structured_input", thread_id=thread_id, item_id=form.id, input=submission),
        stack.headers(),
    )
    assert [event.type for event in answer[:2]] == ["stream_options", "thread.item.replaced"]
    replaced = answer[1]
    assert isinstance(replaced, ThreadItemReplacedEvent) and isinstance(replaced.item, StructuredInputItem)
    assert replaced.item.id == form.id and replaced.item.status == "answered"
    answers = {question.id: question.answer for question in replaced.item.inputs}
    assert answers["priority"] is not None and answers["priority"].values == ["High"]
    assert answers["details"] is not None and answers["details"].values == ["It crashes on startup"]
    text = assistant_text(answer)
    assert "priority High" in text and "It crashes on startup" in text

    stored = await _items(http, stack, thread_id)
    [saved] = [item for item in stored if isinstance(item, StructuredInputItem)]
    assert saved == replaced.item

    before = _counts(stack)
    again = await call(
        http,
        stack.edge_url,
        request("threads.add_structured_input", thread_id=thread_id, item_id=form.id, input=submission),
        stack.headers(),
        status=400,
    )
    assert error_of(again)[0] == "FAILED_PRECONDITION"
    assert _counts(stack) == before
    assert await _items(http, stack, thread_id) == stored
