"""threads.update during a streaming turn: the new title survives the turn, and the turn's handoff
(the active specialist in the thread metadata) is not reset by the rename."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import aiohttp

from tests.support.chatkit_wire import EVENT, call, request, user_input
from tests.support.processes import Stack


async def test_a_rename_during_a_streaming_turn_survives_and_keeps_the_handoff(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    headers = stack.headers(user="renamer")
    body = request(
        "threads.create", input=user_input("I was charged twice on my invoice, can I get a refund?")
    )
    renamed: asyncio.Task[object] | None = None
    async with http.post(f"{stack.edge_url}/chatkit/api", json=body, headers=headers) as response:
        assert response.status == 200
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            event = EVENT.validate_json(line[6:])
            if event.type == "thread.created" and renamed is None:
                thread_id = event.thread.id  # type: ignore[union-attr]
                rename = request("threads.update", thread_id=thread_id, title="My refund")
                renamed = asyncio.ensure_future(call(http, stack.edge_url, rename, headers))
    assert renamed is not None
    assert (await renamed)["title"] == "My refund"  # type: ignore[index]

    with sqlite3.connect(stack.store_path) as db:
        data = json.loads(db.execute("SELECT data FROM threads WHERE id = ?", (thread_id,)).fetchone()[0])
    assert data["title"] == "My refund"
    assert "billing" in str(data["metadata"].get("active_agent", "")).lower(), data
    fetched = await call(http, stack.edge_url, request("threads.get_by_id", thread_id=thread_id), headers)
    assert fetched["title"] == "My refund"
