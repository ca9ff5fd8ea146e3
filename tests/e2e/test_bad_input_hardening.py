"""Regressions of issue #12 against the real stack: each is a 4xx with a clear message, writes nothing."""

from __future__ import annotations

import sqlite3

import aiohttp
import pytest

from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.processes import Stack


def _counts(stack: Stack) -> tuple[int, int]:
    with sqlite3.connect(stack.store_path) as db:
        return (
            int(db.execute("SELECT COUNT(*) FROM threads").fetchone()[0]),
            int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0]),
        )


@pytest.mark.parametrize(
    "action",
    [
        {"type": "no.such.action", "payload": {}},
        {"type": "show_orders", "payload": {"status": ["not", "a", "status"], "extra": {"x": 1}}},
        {"type": "x" * 100_000, "payload": None},
    ],
    ids=["unknown-type", "bad-payload", "huge-type"],
)
async def test_sync_custom_action_with_a_bad_action_is_400(
    http: aiohttp.ClientSession, stack: Stack, action: dict[str, object]
) -> None:
    headers = stack.headers(user="actions")
    events = await stream(http, stack.edge_url, request("threads.create", input=user_input("hi")), headers)
    thread_id = next(event.thread.id for event in events if event.type == "thread.created")  # type: ignore[union-attr]
    before = _counts(stack)
    payload = await call(
        http,
        stack.edge_url,
        request("threads.sync_custom_action", thread_id=thread_id, action=action),
        headers,
        status=400,
    )
    code, message = error_of(payload)
    assert code == "INVALID_ARGUMENT" and message and len(message) <= 1000
    assert _counts(stack) == before


@pytest.mark.parametrize("name", ["a\x00b.txt", "line\nbreak.txt", "esc\x1b[31m.txt", "del\x7f.txt"])
async def test_an_upload_whose_name_has_control_characters_is_400(
    http: aiohttp.ClientSession, stack: Stack, name: str
) -> None:
    boundary = "----hardening"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    ).encode()
    headers = {**stack.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with http.post(f"{stack.edge_url}/chatkit/api/upload", data=body, headers=headers) as response:
        payload = await response.json()
        assert response.status == 400, payload
    code, message = error_of(payload)
    assert code == "INVALID_ARGUMENT" and message
