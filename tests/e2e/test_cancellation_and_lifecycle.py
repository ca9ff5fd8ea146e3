"""Client disconnects, agent outages and graceful shutdown, with real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from chatkit.types import AssistantMessageItem, ThreadItemUpdatedEvent

from tests.support.chatkit_wire import EVENT, assistant_text, call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack

QUESTION = "Please explain in detail how I can reset my password after a login error"


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose local model takes 40 ms per token, so a stream can be interrupted midway."""
    with running_stack(tmp_path_factory.mktemp("slow"), SWITCHBOARD_LOCAL_TOKEN_DELAY_MS="40") as running:
        yield running


def _items(store: Path, thread_id: str) -> list[dict[str, object]]:
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT items.data FROM items JOIN threads ON threads.seq = items.thread_seq "
            "WHERE threads.id = ? ORDER BY items.seq",
            (thread_id,),
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


async def test_disconnect_stops_the_model_and_saves_the_partial_answer(
    http: aiohttp.ClientSession, slow_stack: Stack
) -> None:
    full = assistant_text(
        await stream(
            http,
            slow_stack.edge_url,
            request("threads.create", input=user_input(QUESTION)),
            slow_stack.headers(),
        )
    )
    assert len(full.split()) > 10

    body = request("threads.create", input=user_input(QUESTION))
    thread_id, deltas = None, 0
    response = await http.post(f"{slow_stack.edge_url}/chatkit/api", json=body, headers=slow_stack.headers())
    assert response.status == 200
    async for line in response.content:
        if not line.startswith(b"data: "):
            continue
        event = EVENT.validate_json(line[6:])
        if event.type == "thread.created":
            thread_id = event.thread.id  # type: ignore[union-attr]
        if isinstance(event, ThreadItemUpdatedEvent) and event.update.type.endswith("text_delta"):
            deltas += 1
            if deltas == 3:
                break
    assert thread_id is not None
    response.close()  # the browser goes away
    disconnected = time.monotonic()

    note_seen = None
    while time.monotonic() - disconnected < 5:
        kinds = [item["type"] for item in _items(slow_stack.store_path, thread_id)]
        if "sdk_hidden_context" in kinds:
            note_seen = time.monotonic() - disconnected
            break
        await asyncio.sleep(0.01)
    assert note_seen is not None, "the cancel note was never stored"
    print(f"\ndisconnect -> agent run stopped and partial answer saved in {note_seen * 1000:.0f} ms")
    assert note_seen < 1.0

    stored = _items(slow_stack.store_path, thread_id)
    await asyncio.sleep(0.5)
    assert _items(slow_stack.store_path, thread_id) == stored, "nothing is written after the cancellation"
    partial = [AssistantMessageItem.model_validate(i) for i in stored if i["type"] == "assistant_message"]
    assert len(partial) == 1
    text = "".join(part.text for part in partial[0].content)
    assert text and full.startswith(text) and len(text) < len(full)
    notes = [i for i in stored if i["type"] == "sdk_hidden_context"]
    assert "cancelled" in str(notes[0]["content"])

    follow_up = await stream(
        http,
        slow_stack.edge_url,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("ok, short answer then")),
        slow_stack.headers(),
    )
    assert assistant_text(follow_up)
    visible = await call(
        http, slow_stack.edge_url, request("items.list", thread_id=thread_id, limit=50), slow_stack.headers()
    )
    assert all(item["type"] != "sdk_hidden_context" for item in visible["data"])


async def test_agent_down_means_not_ready_and_503_fast(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with running_stack(tmp_path / "down", agent=False) as stack:
        async with http.get(f"{stack.edge_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{stack.edge_url}/readyz") as response:
            assert response.status == 503
        started = time.monotonic()
        payload = await call(
            http,
            stack.edge_url,
            request("threads.create", input=user_input("anyone?")),
            stack.headers(),
            status=503,
        )
        assert error_of(payload)[0] == "UNAVAILABLE"
        payload = await call(http, stack.edge_url, request("threads.list"), stack.headers(), status=503)
        assert time.monotonic() - started < 3


async def test_sigterm_lets_inflight_streams_finish(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    with running_stack(tmp_path / "term", SWITCHBOARD_LOCAL_TOKEN_DELAY_MS="30") as stack:
        body = request("threads.create", input=user_input(QUESTION))
        async with http.post(f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers()) as response:
            assert response.status == 200
            raw = b""
            async for chunk in response.content.iter_any():
                raw += chunk
                if raw.count(b"text_delta") >= 2 and stack.services["agent"].process.poll() is None:
                    stack.services["agent"].process.send_signal(signal.SIGTERM)
                    break
            raw += await response.read()
        events = [
            EVENT.validate_json(frame[6:]) for frame in raw.split(b"\n\n") if frame.startswith(b"data: ")
        ]
        assert assistant_text(events), "the in-flight answer completed during the grace period"
        assert stack.services["agent"].process.wait(timeout=10) == 0
        payload = await call(http, stack.edge_url, request("threads.list"), stack.headers(), status=503)
        assert error_of(payload)[0] == "UNAVAILABLE"
