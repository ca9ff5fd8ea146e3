"""Scale-out with real processes: two agent replicas on one PostgreSQL server, behind one edge.

The edge gets both replicas as `SWITCHBOARD_AGENT_ADDRESS=127.0.0.1:p1,127.0.0.1:p2` and balances
with gRPC's round_robin. The PostgreSQL cluster is this module's own (the last test restarts it).
Tests run in file order on one stack: load, a busy thread, `kill -9` of a replica (restarted
afterwards), SIGTERM of a replica, then a PostgreSQL restart with the replica that is left.

The run lease TTL is 2 s here, so a killed replica's threads free up quickly; the local model pauses
10 ms between tokens so that streams last long enough to interrupt.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from chatkit.types import (
    ErrorEvent,
    ThreadCreatedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    UserMessageItem,
)
from grpc import aio

from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2
from tests.support.chatkit_wire import EVENT, assistant_text, call, error_of, request, stream, user_input
from tests.support.postgres import PostgresCluster, private_postgres
from tests.support.processes import Service, Stack, running_stack

LEASE_TTL_S = 2.0
CONVERSATIONS = 200
FOLLOW_UP_EVERY = 5
QUESTIONS = [  # every specialist; one in eight calls an ERP tool and shows a widget
    "Who is employee E1001?",
    "I have a question about my invoice",
    "I get an error when I log in",
    "Tell me something nice",
    "Why was I charged twice on my invoice?",
    "The app shows an error after login",
    "Hello there",
    "What can you do?",
]
LONG_QUESTION = "Please explain in detail how I can reset my password after a login error"


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresCluster]:
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def scaled(pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("scale"),
        database_url=pg.create_database("scale"),
        agent_replicas=2,
        uploads=False,
        SWITCHBOARD_RUN_LEASE_TTL_S=str(LEASE_TTL_S),
        SWITCHBOARD_LOCAL_TOKEN_DELAY_MS="10",
        SWITCHBOARD_SHUTDOWN_GRACE_S="8",
    ) as stack:
        yield stack


def _runs(service: Service) -> list[str]:
    """The threads this replica ran a turn on (one log line per run lease taken)."""
    return re.findall(r"run lease taken on thread (thr_\w+)", service.log_text())


def _replica_of(stack: Stack, thread_id: str) -> Service:
    serving = [agent for agent in stack.agents() if thread_id in _runs(agent)]
    assert len(serving) == 1, [agent.name for agent in serving]
    return serving[0]


def _done_ids(events: list[ThreadStreamEvent]) -> list[str]:
    return [event.item.id for event in events if isinstance(event, ThreadItemDoneEvent)]


async def _items(http: aiohttp.ClientSession, stack: Stack, thread_id: str, user: str) -> list[Any]:
    page = await call(
        http,
        stack.edge_url,
        request("items.list", thread_id=thread_id, limit=100, order="asc"),
        stack.headers(user=user),
    )
    assert not page["has_more"]
    return list(page["data"])


class OpenStream:
    """A ChatKit stream read event by event (to act in the middle of it)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[ThreadStreamEvent] = []
        self._buffer = b""

    @classmethod
    async def start(
        cls, http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any], user: str = "alice"
    ) -> OpenStream:
        response = await http.post(
            f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers(user=user)
        )
        assert response.status == 200, await response.text()
        return cls(response)

    async def next(self) -> ThreadStreamEvent | None:
        while b"\n\n" not in self._buffer:
            chunk = await self.response.content.readany()
            if not chunk:
                return None
            self._buffer += chunk
        frame, self._buffer = self._buffer.split(b"\n\n", 1)
        assert frame.startswith(b"data: ")
        event = EVENT.validate_json(frame[6:])
        self.events.append(event)
        return event

    async def until_delta(self) -> None:
        while not isinstance(await self.next(), ThreadItemUpdatedEvent):
            assert self.events, "the stream ended early"

    async def rest(self) -> list[ThreadStreamEvent]:
        while await self.next() is not None:
            pass
        self.response.close()
        return self.events

    @property
    def thread_id(self) -> str:
        created = self.events[0]
        assert isinstance(created, ThreadCreatedEvent)
        return created.thread.id


# ---------------------------------------------------------------------------- load


async def test_conversations_spread_over_both_replicas_and_lose_nothing(
    http: aiohttp.ClientSession, scaled: Stack, pg: PostgresCluster
) -> None:
    limit = asyncio.Semaphore(40)

    async def conversation(index: int) -> tuple[str, str, list[str]]:
        user = f"user{index % 8}"
        async with limit:
            first = await stream(
                http,
                scaled.edge_url,
                request("threads.create", input=user_input(QUESTIONS[index % len(QUESTIONS)])),
                scaled.headers(user=user),
            )
            thread_id = first[0].thread.id  # type: ignore[union-attr]
            turns = [first]
            if index % FOLLOW_UP_EVERY == 0:  # a second turn: the next run may land on the other replica
                turns.append(
                    await stream(
                        http,
                        scaled.edge_url,
                        request("threads.add_user_message", thread_id=thread_id, input=user_input("and?")),
                        scaled.headers(user=user),
                    )
                )
        for events in turns:
            assert not [e for e in events if isinstance(e, ErrorEvent)], events
            assert assistant_text(events)
        return thread_id, user, [item_id for events in turns for item_id in _done_ids(events)]

    started = time.monotonic()
    results = await asyncio.gather(*(conversation(index) for index in range(CONVERSATIONS)))
    elapsed = time.monotonic() - started

    expected = 0
    for thread_id, user, seen in results:
        stored = [item["id"] for item in await _items(http, scaled, thread_id, user)]
        assert stored == seen, f"thread {thread_id}: stored items differ from the streamed ones"
        expected += len(seen)
    count, distinct, threads = pg.psql(
        scaled.database_url or "",
        "SELECT (SELECT count(*) FROM items), (SELECT count(DISTINCT id) FROM items), "
        "(SELECT count(*) FROM threads)",
    ).split("|")
    assert int(count) == int(distinct) == expected, "no item lost, none duplicated"
    assert int(threads) == CONVERSATIONS

    ours = {thread_id for thread_id, _, _ in results}
    turns = CONVERSATIONS + len(range(0, CONVERSATIONS, FOLLOW_UP_EVERY))
    per_replica = {agent.name: sum(1 for t in _runs(agent) if t in ours) for agent in scaled.agents()}
    assert sum(per_replica.values()) == turns
    assert all(runs > turns / 4 for runs in per_replica.values()), per_replica
    print(
        f"\n{CONVERSATIONS} conversations, {turns} turns in {elapsed:.1f} s, runs per replica: {per_replica}"
    )


# ---------------------------------------------------------------------------- the run lease


def _grpc_input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


async def test_a_second_message_on_a_busy_thread_is_refused_on_every_replica(
    http: aiohttp.ClientSession, scaled: Stack
) -> None:
    created = await stream(
        http, scaled.edge_url, request("threads.create", input=user_input("hello")), scaled.headers()
    )
    thread_id = created[0].thread.id  # type: ignore[union-attr]
    before = await _items(http, scaled, thread_id, "alice")

    running = await OpenStream.start(
        http,
        scaled,
        request("threads.add_user_message", thread_id=thread_id, input=user_input(LONG_QUESTION)),
    )
    await running.until_delta()
    payload = await call(
        http,
        scaled.edge_url,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("me too")),
        scaled.headers(),
        status=409,
    )
    code, message = error_of(payload)
    assert code == "ABORTED" and "busy" in message
    for address in scaled.agent_addresses:  # whichever replica runs it, both refuse over gRPC too
        async with aio.insecure_channel(address) as channel:
            call_ = chat_pb2_grpc.ChatServiceStub(channel).AddUserMessage(
                chat_pb2.AddUserMessageRequest(thread_id=thread_id, input=_grpc_input("me too")),
                metadata=(("authorization", f"Bearer {scaled.token()}"),),
                timeout=10,
            )
            with pytest.raises(aio.AioRpcError) as caught:
                await call_.read()
            assert caught.value.code() == grpc.StatusCode.ABORTED

    events = await running.rest()
    assert not [e for e in events if isinstance(e, ErrorEvent)], "the first run was not disturbed"
    assert assistant_text(events)
    after = await _items(http, scaled, thread_id, "alice")
    assert [item["id"] for item in after] == [item["id"] for item in before] + _done_ids(events)
    assert "me too" not in json.dumps(after), "the refused requests wrote nothing"


# ---------------------------------------------------------------------------- failures


async def test_kill_9_of_the_serving_replica(
    http: aiohttp.ClientSession, scaled: Stack, pg: PostgresCluster
) -> None:
    running = await OpenStream.start(http, scaled, request("threads.create", input=user_input(LONG_QUESTION)))
    await running.next()
    thread_id = running.thread_id
    victim = _replica_of(scaled, thread_id)
    survivor = next(agent for agent in scaled.agents() if agent is not victim)
    await running.until_delta()
    victim.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.process.wait(timeout=5)
    left = float(
        pg.psql(
            scaled.database_url or "",
            "SELECT expires_at - extract(epoch FROM clock_timestamp()) FROM run_leases "
            f"WHERE thread_id = '{thread_id}'",
        )
    )
    assert 0 < left <= LEASE_TTL_S, f"the dead replica's lease expires within the TTL ({left:.2f} s left)"

    events = await running.rest()
    last = events[-1]
    assert isinstance(last, ErrorEvent) and last.allow_retry, last
    user_message = next(e.item for e in events if isinstance(e, ThreadItemDoneEvent))
    assert isinstance(user_message, UserMessageItem)
    stored = await _items(http, scaled, thread_id, "alice")
    assert stored[0]["id"] == user_message.id, "the user message was stored before the run"

    retry = request("threads.retry_after_item", thread_id=thread_id, item_id=user_message.id)
    attempts: list[int] = []
    while True:
        async with http.post(f"{scaled.edge_url}/chatkit/api", json=retry, headers=scaled.headers()) as reply:
            attempts.append(reply.status)
            if reply.status == 200:
                retried = [
                    EVENT.validate_json(frame[6:])
                    for frame in (await reply.read()).split(b"\n\n")
                    if frame.startswith(b"data: ")
                ]
                break
            assert reply.status == 409, await reply.text()
        assert time.monotonic() - killed < LEASE_TTL_S + 3, "the dead replica's lease did not expire"
        await asyncio.sleep(0.2)
    freed = time.monotonic() - killed
    assert attempts[0] == 409, "the dead replica still held the thread right after the crash"
    assert freed < LEASE_TTL_S + 1.5
    assert assistant_text(retried) and not [e for e in retried if isinstance(e, ErrorEvent)]
    assert _runs(survivor).count(thread_id) == 1, "the retry ran on the other replica"
    after = await _items(http, scaled, thread_id, "alice")
    assert [item["id"] for item in after] == [user_message.id, *_done_ids(retried)]
    print(f"\nkill -9: thread free again after {freed:.1f} s (TTL {LEASE_TTL_S} s), attempts {attempts}")

    scaled.start_agent(victim.name)  # back to two replicas for the next test


async def test_sigterm_drains_a_replica_without_errors(http: aiohttp.ClientSession, scaled: Stack) -> None:
    # Streams in flight on both replicas (the one restarted by the previous test must be back in the
    # edge's rotation first).
    deadline = time.monotonic() + 20
    while True:
        streams = [
            await OpenStream.start(http, scaled, request("threads.create", input=user_input(LONG_QUESTION)))
            for _ in range(4)
        ]
        for running in streams:
            await running.next()
        serving = {_replica_of(scaled, running.thread_id).name for running in streams}
        if len(serving) == 2:
            break
        assert time.monotonic() < deadline, "both replicas never served at the same time"
        for running in streams:
            await running.rest()
    victim = scaled.services["agent"]
    on_victim = [running for running in streams if _replica_of(scaled, running.thread_id) is victim]
    for running in streams:
        await running.until_delta()

    victim.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    async def new_conversation(index: int) -> list[ThreadStreamEvent]:
        await asyncio.sleep(0.05 * index)
        return await stream(
            http, scaled.edge_url, request("threads.create", input=user_input("hi there")), scaled.headers()
        )

    async def reads() -> None:
        for _ in range(10):
            await call(http, scaled.edge_url, request("threads.list", limit=5), scaled.headers())
            await asyncio.sleep(0.05)

    fresh, _ = await asyncio.gather(asyncio.gather(*(new_conversation(i) for i in range(8))), reads())
    finished = [await running.rest() for running in streams]
    for events in [*finished, *fresh]:
        assert not [e for e in events if isinstance(e, ErrorEvent)], events
        assert assistant_text(events)
    assert victim.process.wait(timeout=10) == 0
    drained = time.monotonic() - signalled
    assert drained < 8, "in-flight streams finished within the grace period"
    new_threads = {events[0].thread.id for events in fresh}  # type: ignore[union-attr]
    assert not new_threads & set(_runs(victim)), "new conversations went to the other replica"
    print(f"\nSIGTERM: {len(on_victim)} in-flight streams drained in {drained:.1f} s, 0 errors")


async def test_postgres_restart_gives_503_then_recovers(
    http: aiohttp.ClientSession, scaled: Stack, pg: PostgresCluster
) -> None:
    create = request("threads.create", input=user_input("hello"))
    await stream(http, scaled.edge_url, create, scaled.headers())
    running = await OpenStream.start(http, scaled, request("threads.create", input=user_input(LONG_QUESTION)))
    await running.until_delta()

    await asyncio.to_thread(pg.stop)
    stopped = time.monotonic()
    for body in (request("threads.list"), create):
        payload = await call(http, scaled.edge_url, body, scaled.headers(), status=503)
        assert error_of(payload)[0] == "UNAVAILABLE"
    assert time.monotonic() - stopped < 5, "refused fast while the database is down"
    interrupted = await running.rest()
    last = interrupted[-1]
    assert isinstance(last, ErrorEvent) and last.allow_retry, (
        "the turn in flight ended with a retryable error"
    )

    await asyncio.to_thread(pg.start)
    restarted = time.monotonic()
    recovered = None
    while time.monotonic() - restarted < 15:
        async with http.post(
            f"{scaled.edge_url}/chatkit/api", json=request("threads.list"), headers=scaled.headers()
        ) as reply:
            if reply.status == 200:
                recovered = time.monotonic() - restarted
                break
            assert reply.status == 503
        await asyncio.sleep(0.2)
    assert recovered is not None, "the services did not reconnect"
    events = await stream(http, scaled.edge_url, create, scaled.headers())
    assert assistant_text(events)

    # The interrupted turn's user message was stored; retrying it works once its lease (which could
    # not be released while the database was down) has expired.
    user_message = next(e.item for e in interrupted if isinstance(e, ThreadItemDoneEvent))
    retry = request("threads.retry_after_item", thread_id=running.thread_id, item_id=user_message.id)
    while True:
        async with http.post(f"{scaled.edge_url}/chatkit/api", json=retry, headers=scaled.headers()) as reply:
            body = await reply.read()
            if reply.status == 200:
                break
            assert reply.status == 409, body
        assert time.monotonic() - restarted < LEASE_TTL_S + 3
        await asyncio.sleep(0.2)
    assert b'"type":"error"' not in body and b"assistant_message" in body
    print(f"\nPostgreSQL restart: serving again {recovered:.1f} s after the server came back")
