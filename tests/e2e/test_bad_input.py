"""Bad input for every operation: the right status, a clear JSON error, nothing written, still serving."""

from __future__ import annotations

import sqlite3
from typing import Any

import aiohttp
import pytest

from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.processes import Stack

UNKNOWN = "thr_" + "0" * 32


def _counts(stack: Stack) -> tuple[int, int]:
    with sqlite3.connect(stack.store_path) as db:
        threads = db.execute("SELECT COUNT(*) FROM threads").fetchone()[0]
        items = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    return int(threads), int(items)


async def _post_raw(
    http: aiohttp.ClientSession, stack: Stack, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(
        f"{stack.edge_url}/chatkit/api", data=body, headers={"Content-Type": "application/json", **headers}
    ) as response:
        return response.status, await response.json(content_type=None)


MALFORMED: list[tuple[str, bytes]] = [
    ("not json", b"{nope"),
    ("not an object", b"[1, 2]"),
    ("no type", b'{"params": {}}'),
    ("unknown type", b'{"type": "threads.teleport", "params": {}}'),
    ("missing params", b'{"type": "threads.create"}'),
    ("input without content", b'{"type": "threads.create", "params": {"input": {"attachments": []}}}'),
    ("wrong type for thread_id", b'{"type": "threads.get_by_id", "params": {"thread_id": 5}}'),
    ("wrong limit type", b'{"type": "threads.list", "params": {"limit": "many"}}'),
    ("bad order", b'{"type": "items.list", "params": {"thread_id": "thr_x", "order": "sideways"}}'),
    (
        "bad feedback kind",
        b'{"type": "items.feedback", "params": {"thread_id": "t", "item_ids": ["a"], "kind": "meh"}}',
    ),
    ("utf-8 garbage", b'{"type": "\xff\xfe"}'),
]


@pytest.mark.parametrize(("case", "body"), MALFORMED, ids=[case for case, _ in MALFORMED])
async def test_malformed_requests_are_400_and_write_nothing(
    http: aiohttp.ClientSession, stack: Stack, case: str, body: bytes
) -> None:
    before = _counts(stack)
    status, payload = await _post_raw(http, stack, body, stack.headers())
    assert status == 400, (case, payload)
    code, message = error_of(payload)
    assert code == "INVALID_ARGUMENT" and message
    assert _counts(stack) == before


async def test_semantic_validation_in_the_agent_service_is_400(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    before = _counts(stack)
    cases: list[dict[str, Any]] = [
        request("threads.create", input={"content": [], "attachments": [], "inference_options": {}}),
        request("threads.create", input=user_input("x" * 40_000)),
        request("threads.list", limit=1000),
    ]
    for body in cases:
        payload = await call(http, stack.edge_url, body, stack.headers(), status=400)
        assert error_of(payload)[0] == "INVALID_ARGUMENT"
    assert _counts(stack) == before


async def test_unknown_attachments_are_404_and_write_nothing(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    before = _counts(stack)
    for attachment_id in ("atc_unknown", "atc_" + "0" * 32):
        body = request("threads.create", input={**user_input("hi"), "attachments": [attachment_id]})
        payload = await call(http, stack.edge_url, body, stack.headers(), status=404)
        assert error_of(payload)[0] == "NOT_FOUND"
    assert _counts(stack) == before


async def test_missing_or_bad_tokens_are_401(http: aiohttp.ClientSession, stack: Stack) -> None:
    body = request("threads.create", input=user_input("hello"))
    before = _counts(stack)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        async with http.post(f"{stack.edge_url}/chatkit/api", json=body, headers=headers) as response:
            assert response.status == 401
            assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert error_of(await response.json())[0] == "UNAUTHENTICATED"
    assert _counts(stack) == before


async def test_huge_bodies_are_413(http: aiohttp.ClientSession, stack: Stack) -> None:
    before = _counts(stack)
    huge = request("threads.create", input=user_input("x" * 2_000_000))
    async with http.post(f"{stack.edge_url}/chatkit/api", json=huge, headers=stack.headers()) as response:
        assert response.status == 413
        error_of(await response.json())
    assert _counts(stack) == before


async def test_unknown_and_foreign_ids_are_404_for_every_operation(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("mine")), stack.headers()
    )
    mine = events[0].thread.id  # type: ignore[union-attr]
    before = _counts(stack)
    strangers = [stack.headers(tenant="globex"), stack.headers(user="someone-else")]
    for thread_id, who in [(UNKNOWN, stack.headers()), *((mine, h) for h in strangers)]:
        for body in (
            request("threads.get_by_id", thread_id=thread_id),
            request("threads.update", thread_id=thread_id, title="stolen"),
            request("threads.delete", thread_id=thread_id),
            request("items.list", thread_id=thread_id),
            request("items.feedback", thread_id=thread_id, item_ids=["msg_x"], kind="positive"),
            request("threads.add_user_message", thread_id=thread_id, input=user_input("hi")),
            request("threads.add_client_tool_output", thread_id=thread_id, result={"ok": True}),
            request(
                "threads.add_structured_input",
                thread_id=thread_id,
                item_id="msg_x",
                input={"status": "answered", "answers": {}},
            ),
            request("threads.retry_after_item", thread_id=thread_id, item_id="msg_x"),
            request("threads.custom_action", thread_id=thread_id, item_id=None, action={"type": "x"}),
            request("threads.sync_custom_action", thread_id=thread_id, item_id=None, action={"type": "x"}),
        ):
            payload = await call(http, stack.edge_url, body, who, status=404)
            assert error_of(payload)[0] == "NOT_FOUND", body
    assert _counts(stack) == before
    thread = await call(http, stack.edge_url, request("threads.get_by_id", thread_id=mine), stack.headers())
    assert thread["id"] == mine and thread.get("title") != "stolen"


async def test_wrong_state_is_400_and_writes_nothing(http: aiohttp.ClientSession, stack: Stack) -> None:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("state")), stack.headers()
    )
    thread_id = events[0].thread.id  # type: ignore[union-attr]
    user_id = events[1].item.id  # type: ignore[union-attr]
    before = _counts(stack)
    for body in (
        request("threads.add_client_tool_output", thread_id=thread_id, result={"ok": True}),
        request(
            "threads.add_structured_input",
            thread_id=thread_id,
            item_id=user_id,
            input={"status": "answered", "answers": {}},
        ),
        request("threads.update", thread_id=thread_id, title="   "),
    ):
        payload = await call(http, stack.edge_url, body, stack.headers(), status=400)
        assert error_of(payload)[0] in ("FAILED_PRECONDITION", "INVALID_ARGUMENT")
    assert _counts(stack) == before
    not_a_user_message = [e for e in events if e.type == "thread.item.done"][-1].item.id  # type: ignore[union-attr]
    payload = await call(
        http,
        stack.edge_url,
        request("threads.retry_after_item", thread_id=thread_id, item_id=not_a_user_message),
        stack.headers(),
        status=400,
    )
    assert error_of(payload)[0] == "INVALID_ARGUMENT"
    assert _counts(stack) == before


async def test_still_serving_after_all_that(http: aiohttp.ClientSession, stack: Stack) -> None:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("still there?")), stack.headers()
    )
    assert events[0].type == "thread.created"
    async with http.get(f"{stack.edge_url}/readyz") as response:
        assert response.status == 200
