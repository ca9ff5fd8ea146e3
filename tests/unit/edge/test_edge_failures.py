"""gRPC failures -> HTTP, failures mid-stream, client disconnects, and an unreachable agent."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import grpc
import pytest
from grpc import aio

from services.edge.app import rpc_error_response
from tests.unit.edge.conftest import EdgeUnderTest, make_settings, running_edge, unused_address
from tests.unit.edge.fake_agent import STREAM_OPTIONS, TURN_EVENTS, FakeAgent, to_events
from tests.unit.edge.test_edge_chatkit_api import CREATE, GET_THREAD, frames, wire

ERROR_TABLE = [
    (grpc.StatusCode.NOT_FOUND, 404),
    (grpc.StatusCode.INVALID_ARGUMENT, 400),
    (grpc.StatusCode.PERMISSION_DENIED, 403),
    (grpc.StatusCode.UNAUTHENTICATED, 401),
    (grpc.StatusCode.UNAVAILABLE, 503),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.ABORTED, 409),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (grpc.StatusCode.UNIMPLEMENTED, 501),
    (grpc.StatusCode.INTERNAL, 500),
]
# Server-side failures: their details stay in the logs.
PRIVATE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}


@pytest.mark.parametrize("body", [CREATE, GET_THREAD], ids=["stream-before-first-event", "unary"])
@pytest.mark.parametrize(("code", "status"), ERROR_TABLE, ids=[code.name for code, _ in ERROR_TABLE])
async def test_grpc_status_becomes_the_http_status_of_the_error_table(
    edge: EdgeUnderTest, agent: FakeAgent, body: dict[str, Any], code: grpc.StatusCode, status: int
) -> None:
    agent.servicer.script.fail = (code, "details from the agent")
    reply = await edge.post(body)
    assert reply.status == status
    error_code, message = reply.error()
    assert error_code == code.name
    if code in PRIVATE:
        assert "details from the agent" not in message
    else:
        assert message == "details from the agent"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(agent.servicer.received) == 1


@pytest.mark.parametrize(
    ("code", "allow_retry"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.INTERNAL, True),
        (grpc.StatusCode.UNKNOWN, True),
        (grpc.StatusCode.ABORTED, True),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
        (grpc.StatusCode.PERMISSION_DENIED, False),
        (grpc.StatusCode.NOT_FOUND, False),
    ],
    ids=lambda value: value.name if isinstance(value, grpc.StatusCode) else str(value),
)
async def test_a_failure_after_the_stream_started_ends_it_with_an_error_event(
    edge: EdgeUnderTest, agent: FakeAgent, code: grpc.StatusCode, allow_retry: bool
) -> None:
    agent.servicer.script.events = to_events(TURN_EVENTS[:3])
    agent.servicer.script.fail = (code, "secret internals")
    agent.servicer.script.fail_after = 2
    async with edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth()) as response:
        assert response.status == 200
        body = await response.read()  # a clean end: no payload or connection error
    retry = b"true" if allow_retry else b"false"
    assert frames(body) == [
        wire(TURN_EVENTS[0]),
        wire(TURN_EVENTS[1]),
        b'{"type":"error","code":"stream.error","allow_retry":%s}' % retry,
    ]
    assert b"secret internals" not in body


async def test_a_client_disconnect_mid_stream_cancels_the_grpc_call(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    agent.servicer.script.endless = True
    response = await edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth())
    assert response.status == 200
    first = await response.content.readuntil(b"\n\n")
    assert first == b"data: " + wire(STREAM_OPTIONS) + b"\n\n"
    await response.content.readuntil(b"\n\n")  # a delta: the endless stream is running
    assert not agent.servicer.cancelled.is_set()
    response.close()  # drop the connection, as a closed browser tab does
    started = time.perf_counter()
    await asyncio.wait_for(agent.servicer.cancelled.wait(), timeout=1.0)
    assert time.perf_counter() - started < 1.0
    sent = agent.servicer.sent
    await asyncio.sleep(0.1)
    assert agent.servicer.sent == sent  # nothing is produced for a client that left


async def test_a_failed_write_cancels_the_call_even_without_handler_cancellation(agent: FakeAgent) -> None:
    agent.servicer.script.endless = True
    async with running_edge(make_settings(agent.address), handler_cancellation=False) as edge:
        response = await edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth())
        await response.content.readuntil(b"\n\n")
        response.close()
        await asyncio.wait_for(agent.servicer.cancelled.wait(), timeout=1.0)


async def test_a_disconnect_while_the_agent_is_silent_cancels_the_call_at_once(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    """handler_cancellation: the edge notices the disconnect without having to write anything."""
    agent.servicer.script.hang = True
    response = await edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth())
    assert response.status == 200
    assert await response.content.readuntil(b"\n\n") == b"data: " + wire(STREAM_OPTIONS) + b"\n\n"
    await asyncio.sleep(0.05)
    assert not agent.servicer.cancelled.is_set()
    response.close()
    await asyncio.wait_for(agent.servicer.cancelled.wait(), timeout=1.0)


async def test_a_disconnect_before_the_first_event_cancels_the_call(
    edge: EdgeUnderTest, agent: FakeAgent
) -> None:
    agent.servicer.script.events = []
    agent.servicer.script.hang = True
    task = asyncio.create_task(
        edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth()).__aenter__()
    )
    for _ in range(100):
        if agent.servicer.received:
            break
        await asyncio.sleep(0.01)
    assert agent.servicer.received
    task.cancel()  # aborts the request: the client closes its connection
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(agent.servicer.cancelled.wait(), timeout=1.0)


async def test_an_unreachable_agent_is_503_fast_while_the_edge_stays_alive() -> None:
    async with running_edge(make_settings(unused_address())) as edge:
        for body in (CREATE, GET_THREAD):
            started = time.perf_counter()
            reply = await edge.post(body)
            assert time.perf_counter() - started < 3.0
            assert reply.status == 503
            code, message = reply.error()
            assert code == "UNAVAILABLE"
            assert "127.0.0.1" not in message  # internal addresses stay in the logs
        ready = await edge.request("GET", "/readyz")
        assert ready.status == 503
        assert ready.error()[0] == "UNAVAILABLE"
        alive = await edge.request("GET", "/healthz")
        assert alive.status == 200
        assert alive.json() == {"status": "ok"}


async def test_the_stream_deadline_ends_a_silent_stream_with_a_retryable_error(agent: FakeAgent) -> None:
    agent.servicer.script.hang = True
    async with running_edge(make_settings(agent.address, stream_timeout_s=0.3)) as edge:
        started = time.perf_counter()
        async with edge.session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth()) as response:
            body = await response.read()
        assert time.perf_counter() - started < 1.5
    assert frames(body) == [
        wire(STREAM_OPTIONS),
        b'{"type":"error","code":"stream.error","allow_retry":true}',
    ]


async def test_no_grpc_call_outlives_an_aborted_client_session(agent: FakeAgent) -> None:
    agent.servicer.script.endless = True
    async with running_edge(make_settings(agent.address)) as edge:
        session = aiohttp.ClientSession()
        response = await session.post(edge.url + "/chatkit/api", json=CREATE, headers=edge.auth())
        await response.content.readuntil(b"\n\n")
        await session.close()
        await asyncio.wait_for(agent.servicer.cancelled.wait(), timeout=1.0)


UPLOAD_REFUSALS = [
    # (rpc, trailing retry-after, HTTP status, Retry-After): a limit that frees up later carries a
    # hint and is 429 with it; a file over the size limit carries none and is 413.
    ("Upload", "3600", 429, "3600"),
    ("CreateAttachment", "86399", 429, "86399"),
    ("DeleteAttachment", "2", 429, "2"),
    ("Upload", None, 413, None),
    ("CreateAttachment", None, 413, None),
    ("CreateThread", "30", 429, "30"),
    ("CreateThread", None, 429, None),
]


@pytest.mark.parametrize(("rpc", "hint", "status", "retry_after"), UPLOAD_REFUSALS)
def test_resource_exhausted_is_429_with_a_retry_after_hint_and_413_for_uploads_without(
    rpc: str, hint: str | None, status: int, retry_after: str | None
) -> None:
    trailing = aio.Metadata(("retry-after", hint)) if hint is not None else aio.Metadata()
    error = aio.AioRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, aio.Metadata(), trailing, details="limit reached (x): details"
    )
    reply = rpc_error_response(error, "req-1", rpc)
    assert reply.status == status
    assert reply.headers.get("Retry-After") == retry_after
    assert json.loads(reply.body)["error"] == {  # type: ignore[arg-type]
        "code": "RESOURCE_EXHAUSTED",
        "message": "limit reached (x): details",
    }
