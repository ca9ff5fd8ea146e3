"""The comparison systems are correct ChatKit servers: every frame validates against chatkit.types."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from chatkit.types import (
    AssistantMessageItem,
    ThreadCreatedEvent,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
    UserMessageItem,
)

from benchmarks import ceiling_server, reference_server
from benchmarks.workload import SECOND_TEXT, USER_TEXT, SseTurnReader, add_message_body, create_body
from switchboard.demo.benchmark import benchmark_text
from tests.support.chatkit_wire import THREAD_PAGE, assistant_text, parse_sse

TOKENS = 12
Client = TestClient[web.Request, web.Application]
SSE = "text/event-stream"


@pytest.fixture
async def reference() -> AsyncIterator[Client]:
    async with TestClient(TestServer(reference_server.create_app(TOKENS))) as client:
        yield client


@pytest.fixture
async def ceiling() -> AsyncIterator[Client]:
    async with TestClient(TestServer(ceiling_server.create_app(TOKENS))) as client:
        yield client


async def _turn(client: Client, body: bytes) -> tuple[bytes, list[ThreadStreamEvent]]:
    response = await client.post("/chatkit/api", data=body)
    raw = await response.read()
    assert response.status == 200, raw
    assert response.headers["Content-Type"].startswith(SSE)
    return raw, parse_sse(raw)  # exact framing, chatkit.types validation, ChatKitServer's bytes


def _types(events: list[ThreadStreamEvent]) -> list[str]:
    return [
        event.type + (f":{event.update.type}" if event.type == "thread.item.updated" else "")
        for event in events
    ]


async def test_the_reference_server_is_a_correct_chatkit_server(
    reference: Client,
) -> None:
    _, first = await _turn(reference, create_body())
    assert isinstance(first[0], ThreadCreatedEvent)
    thread_id = first[0].thread.id
    assert assistant_text(first) == benchmark_text(TOKENS)
    _, second = await _turn(reference, add_message_body(thread_id))
    assert assistant_text(second) == benchmark_text(TOKENS)
    # What it streamed, it stored: the thread reads back with both turns.
    response = await reference.post(
        "/chatkit/api", json={"type": "threads.list", "params": {"limit": 10, "order": "desc"}}
    )
    [thread] = THREAD_PAGE.validate_python(await response.json()).data
    assert thread.id == thread_id
    response = await reference.post(
        "/chatkit/api", json={"type": "items.list", "params": {"thread_id": thread_id, "limit": 10}}
    )
    kinds = [item["type"] for item in (await response.json())["data"]]
    assert sorted(kinds) == ["assistant_message"] * 2 + ["user_message"] * 2


async def test_the_ceiling_streams_the_same_events_as_the_reference(
    reference: Client, ceiling: Client
) -> None:
    ref_created_raw, ref_created = await _turn(reference, create_body())
    assert isinstance(ref_created[0], ThreadCreatedEvent)
    thread_id = ref_created[0].thread.id
    ref_added_raw, ref_added = await _turn(reference, add_message_body(thread_id))
    ceil_created_raw, ceil_created = await _turn(ceiling, create_body())
    ceil_added_raw, ceil_added = await _turn(ceiling, add_message_body(ceiling_server.THREAD_ID))
    for (ref_raw, ref_events), (ceil_raw, ceil_events) in (
        ((ref_created_raw, ref_created), (ceil_created_raw, ceil_created)),
        ((ref_added_raw, ref_added), (ceil_added_raw, ceil_added)),
    ):
        assert _types(ceil_events) == _types(ref_events)
        # The same sizes, frame by frame (ids and timestamps have the reference's lengths).
        assert [len(f) for f in ceil_raw.split(b"\n\n")] == [len(f) for f in ref_raw.split(b"\n\n")]
        assert assistant_text(ceil_events) == benchmark_text(TOKENS)


async def test_the_ceilings_turns_are_what_a_client_expects(ceiling: Client) -> None:
    _, events = await _turn(ceiling, create_body())
    users = [
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, UserMessageItem)
    ]
    assert [u.content[0].text for u in users] == [USER_TEXT]
    _, events = await _turn(ceiling, add_message_body(ceiling_server.THREAD_ID))
    assert not any(isinstance(e, ThreadCreatedEvent) for e in events)
    users = [
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, UserMessageItem)
    ]
    assert [u.content[0].text for u in users] == [SECOND_TEXT]
    done = [
        e.item
        for e in events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, AssistantMessageItem)
    ]
    assert len(done) == 1


async def test_the_load_generators_reader_checks_a_real_answer(reference: Client) -> None:
    raw, _ = await _turn(reference, create_body())
    reader = SseTurnReader(started=0.0)
    for start in range(0, len(raw), 7):  # frames split at awkward places, as TCP does
        reader.feed(raw[start : start + 7], now=1.0)
    result = reader.close()
    result.check(benchmark_text(TOKENS))
    assert result.ok, result.error
    assert result.deltas == TOKENS and result.text_bytes == len(benchmark_text(TOKENS))
    assert result.ttft_s == 1.0 and result.thread_id == json.loads(raw.split(b"\n\n")[0][6:])["thread"]["id"]
