"""Limits and usage through real processes: two agent replicas behind one edge, sharing one database
(a SQLite file, or a PostgreSQL database), answering with the fake OpenAI server (which reports the
usage `USAGE` per call).

Each test works in a tenant of its own whose limits are set as per-tenant overrides (through
`LimitsStore`, as `switchboard limits set` does); the suite's defaults (tests/support/processes.py)
leave the rate and run limits off. The run lease TTL is 2 s, so a killed replica's slots expire
quickly; the fake server pauses between words when a test needs turns that last.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from chatkit.types import ErrorEvent, ThreadCreatedEvent
from grpc import aio

from services.common.auth import Principal
from services.common.config import Settings
from services.limits import LimitsStore, UsageRow, usage_rows_total
from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2
from tests.fakes.openai_server import USAGE, FakeOpenAI, fake_openai_server
from tests.support.chatkit_wire import assistant_text, error_of, parse_sse, request, user_input
from tests.support.postgres import shared_postgres
from tests.support.processes import Stack, running_stack
from tests.support.prometheus import scrape, value

LEASE_TTL_S = 2.0
OPERATOR = Principal(tenant="ops", user="test", role="platform-admin")
LONG_TEXT = " ".join(f"word{index}" for index in range(30))
"""The fake echoes it word by word: a turn that lasts 30 word pauses."""
REFUSALS = "switchboard_agent_limit_refusals_total"
SLOW_WORD_S = 0.2
"""Turns of 6 s: every concurrent start reaches admission while the admitted ones still run, even
on a loaded machine (a run that ended early would free its slot for a later start)."""


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Stack, FakeOpenAI, LimitsStore]]:
    data_dir = tmp_path_factory.mktemp(f"limits-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{data_dir / 'shared.sqlite3'}"
    else:
        database_url = shared_postgres().create_database("limits")
    async with fake_openai_server() as fake:
        with running_stack(
            data_dir,
            database_url=database_url,
            agent_replicas=2,
            uploads=False,
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
            SWITCHBOARD_RUN_LEASE_TTL_S=str(LEASE_TTL_S),
        ) as stack:
            limits = LimitsStore(Settings(SWITCHBOARD_DATABASE_URL=database_url), application_name="test")
            await limits.open()
            try:
                yield stack, fake, limits
            finally:
                await limits.close()


async def _post(
    http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any], tenant: str, user: str = "alice"
) -> tuple[int, bytes, dict[str, str]]:
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers(tenant=tenant, user=user)
    ) as response:
        return response.status, await response.read(), dict(response.headers)


def _refusal(status: int, raw: bytes, headers: dict[str, str], limit: str) -> int:
    """Check a 429 that names `limit`; returns its Retry-After (seconds)."""
    assert status == 429, (status, raw[:300])
    code, message = error_of(json.loads(raw))
    assert code == "RESOURCE_EXHAUSTED" and f"({limit})" in message, message
    retry_after = int(headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


async def _usage(
    limits: LimitsStore, tenant: str, user: str | None = None
) -> tuple[list[UsageRow], dict[str, int]]:
    rows, _stored = await limits.usage(tenant, user=user)
    return rows, usage_rows_total(rows)


def _create(text: str) -> dict[str, Any]:
    return request("threads.create", input=user_input(text))


def _refusals(stack: Stack) -> dict[str, float]:
    """Each agent replica's `switchboard_agent_limit_refusals_total{limit="runs_per_user"}`."""
    return {
        agent.name: value(
            scrape(stack.metrics_url(agent.name)),
            "switchboard_agent_limit_refusals_total",
            limit="runs_per_user",
        )
        for agent in stack.agents()
    }


def _calls_started(stack: Stack) -> dict[str, float]:
    return {
        agent.name: value(scrape(stack.metrics_url(agent.name)), "switchboard_grpc_server_started_total")
        for agent in stack.agents()
    }


async def _both_replicas_in_rotation(http: aiohttp.ClientSession, stack: Stack) -> None:
    """Send cheap reads through the edge until each replica has served one.

    The edge connects to the replicas lazily and `round_robin` picks only among connected ones, so
    a burst sent to a fresh edge can land on whichever replica answered first.
    """
    before = _calls_started(stack)
    deadline = time.monotonic() + 20
    while True:
        status, raw, _ = await _post(http, stack, request("threads.list"), "t-warm")
        assert status == 200, raw[:300]
        after = _calls_started(stack)
        if all(after[name] > before[name] for name in after):
            return
        assert time.monotonic() < deadline, ("the edge never reached both replicas", before, after)
        await asyncio.sleep(0.05)


async def test_fifty_simultaneous_starts_on_two_replicas_run_exactly_the_limit(
    http: aiohttp.ClientSession, limited: tuple[Stack, FakeOpenAI, LimitsStore]
) -> None:
    stack, fake, limits = limited
    await limits.set_limits(OPERATOR, "t-runs", {"runs_per_user": 5}, via="test")
    await _both_replicas_in_rotation(http, stack)
    refused_before = _refusals(stack)
    fake.word_delay_s = SLOW_WORD_S
    try:
        answers = await asyncio.gather(
            *(
                _post(http, stack, request("threads.create", input=user_input(LONG_TEXT)), "t-runs")
                for _ in range(50)
            )
        )
    finally:
        fake.word_delay_s = 0.0
    accepted = [raw for status, raw, _ in answers if status == 200]
    refused = [(status, raw, headers) for status, raw, headers in answers if status != 200]
    assert len(accepted) == 5, [status for status, _, _ in answers]
    assert len(refused) == 45
    for status, raw, headers in refused:
        _refusal(status, raw, headers, "runs_per_user")
    for raw in accepted:  # the admitted ones ran to the end
        events = parse_sse(raw)
        assert isinstance(events[0], ThreadCreatedEvent)
        assert LONG_TEXT in assistant_text(events)
        assert not [event for event in events if isinstance(event, ErrorEvent)]
    refused_after = _refusals(stack)
    counted = {name: refused_after[name] - refused_before[name] for name in refused_after}
    assert sum(counted.values()) == 45 and all(counted.values()), ("both replicas refused starts", counted)
    # Only what ran is counted; the slots are free again once the runs ended.
    _rows, total = await _usage(limits, "t-runs")
    assert (total["conversations"], total["turns"]) == (5, 5)
    status, raw, _ = await _post(http, stack, request("threads.create", input=user_input("again")), "t-runs")
    assert status == 200, raw[:300]


async def test_the_tenant_limit_counts_every_user_of_the_tenant(
    http: aiohttp.ClientSession, limited: tuple[Stack, FakeOpenAI, LimitsStore]
) -> None:
    stack, fake, limits = limited
    await limits.set_limits(OPERATOR, "t-tenant", {"runs_per_tenant": 3}, via="test")
    fake.word_delay_s = SLOW_WORD_S
    try:
        answers = await asyncio.gather(
            *(
                _post(http, stack, request("threads.create", input=user_input(LONG_TEXT)), "t-tenant", user)
                for user in ("ann", "bob", "cat", "dan")
                for _ in range(3)
            )
        )
    finally:
        fake.word_delay_s = 0.0
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 3 + [429] * 9
    for status, raw, headers in answers:
        if status == 429:
            _refusal(status, raw, headers, "runs_per_tenant")


async def test_the_request_rate_is_a_token_bucket_with_retry_after(
    http: aiohttp.ClientSession, limited: tuple[Stack, FakeOpenAI, LimitsStore]
) -> None:
    stack, _fake, limits = limited
    await limits.set_limits(OPERATOR, "t-rate", {"requests_per_minute": 60, "request_burst": 3}, via="test")
    listing = request("threads.list", limit=5)
    for _ in range(3):  # the burst
        status, raw, _ = await _post(http, stack, listing, "t-rate")
        assert status == 200, raw[:300]
    status, raw, headers = await _post(http, stack, listing, "t-rate")
    retry_after = _refusal(status, raw, headers, "requests_per_minute")
    assert retry_after <= 2, "one request per second refills"
    # Another user of the tenant has a bucket of their own.
    status, _, _ = await _post(http, stack, listing, "t-rate", user="bob")
    assert status == 200
    # Over gRPC: RESOURCE_EXHAUSTED with the same detail and the hint as trailing metadata.
    metadata = (("authorization", f"Bearer {stack.token(tenant='t-rate')}"),)
    async with aio.insecure_channel(stack.agent_addresses[1]) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.ListThreads(chat_pb2.ListThreadsRequest(limit=5), metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(requests_per_minute)" in (refused.value.details() or "")
        trailing = dict(refused.value.trailing_metadata() or ())
        assert int(trailing["retry-after"]) >= 1
    await asyncio.sleep(retry_after)
    status, raw, _ = await _post(http, stack, listing, "t-rate")
    assert status == 200, raw[:300]


async def test_a_spent_token_budget_finishes_the_turn_and_refuses_the_next(
    http: aiohttp.ClientSession, limited: tuple[Stack, FakeOpenAI, LimitsStore]
) -> None:
    stack, fake, limits = limited
    per_call = USAGE["prompt_tokens"] + USAGE["completion_tokens"]
    await limits.set_limits(OPERATOR, "t-budget", {"tokens_per_day": per_call + 1}, via="test")
    calls_before = len(fake.requests)
    status, raw, _ = await _post(
        http,
        stack,
        request("threads.create", input=user_input("I have a question about my invoice")),
        "t-budget",
    )
    assert status == 200, raw[:300]
    events = parse_sse(raw)
    calls = len(fake.requests) - calls_before
    assert calls >= 2, "the router hands off, the specialist answers (and the title is made)"
    # The budget ran out during the turn: the turn still finished, with its answer.
    assert assistant_text(events) and not [event for event in events if isinstance(event, ErrorEvent)]
    thread_id = next(event.thread.id for event in events if isinstance(event, ThreadCreatedEvent))
    # The usage is exactly what the model reported, per model.
    rows, total = await _usage(limits, "t-budget")
    assert (total["input_tokens"], total["output_tokens"]) == (
        calls * USAGE["prompt_tokens"],
        calls * USAGE["completion_tokens"],
    )
    assert {row.model for row in rows if row.input_tokens} == {"gpt-4.1-mini"}
    assert (total["conversations"], total["turns"]) == (1, 1)
    # The next turn, and a new conversation, are refused before anything runs or is stored.
    for body in (
        request("threads.add_user_message", thread_id=thread_id, input=user_input("and another thing")),
        request("threads.create", input=user_input("hello")),
    ):
        status, raw, headers = await _post(http, stack, body, "t-budget")
        retry_after = _refusal(status, raw, headers, "tokens_per_day")
        assert retry_after <= 86_400
    assert len(fake.requests) - calls_before == calls
    status, raw, _ = await _post(
        http, stack, request("items.list", thread_id=thread_id, limit=50), "t-budget"
    )
    assert status == 200
    assert [item["type"] for item in json.loads(raw)["data"]].count("user_message") == 1
    assert (await _usage(limits, "t-budget"))[1] == total
    # The operator raises the budget: the next turn runs.
    await limits.set_limits(OPERATOR, "t-budget", {"tokens_per_day": 100 * per_call}, via="test")
    status, raw, _ = await _post(
        http,
        stack,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("and another thing")),
        "t-budget",
    )
    assert status == 200, raw[:300]
    assert assistant_text(parse_sse(raw))


async def test_refused_and_retried_requests_leave_the_usage_unchanged(
    http: aiohttp.ClientSession, limited: tuple[Stack, FakeOpenAI, LimitsStore]
) -> None:
    stack, fake, limits = limited
    status, raw, _ = await _post(http, stack, _create("Who is employee E1001?"), "t-retry")
    assert status == 200
    thread_id = next(event.thread.id for event in parse_sse(raw) if isinstance(event, ThreadCreatedEvent))
    _rows, before = await _usage(limits, "t-retry")
    assert (before["conversations"], before["turns"], before["tool_calls"]) == (1, 1, 1)

    # Sent twice at once (a client retrying too early): one turn runs, the other is 409 and counts nothing.
    calls_before = len(fake.requests)
    fake.word_delay_s = 0.05
    try:
        body = request("threads.add_user_message", thread_id=thread_id, input=user_input(LONG_TEXT))
        answers = await asyncio.gather(*(_post(http, stack, body, "t-retry") for _ in range(2)))
    finally:
        fake.word_delay_s = 0.0
    assert sorted(status for status, _, _ in answers) == [200, 409]
    calls = len(fake.requests) - calls_before
    _rows, after = await _usage(limits, "t-retry")
    assert after["turns"] == before["turns"] + 1
    assert after["input_tokens"] - before["input_tokens"] == calls * USAGE["prompt_tokens"]
    assert after["output_tokens"] - before["output_tokens"] == calls * USAGE["completion_tokens"]

    # Refused after the thread was leased (nothing pending): nothing counted.
    status, raw, _ = await _post(
        http,
        stack,
        request("threads.add_client_tool_output", thread_id=thread_id, result={"ok": True}),
        "t-retry",
    )
    assert status == 400 and error_of(json.loads(raw))[0] == "FAILED_PRECONDITION", raw[:300]
    # Refused by a limit, then retried once the operator lifted it: counted once.
    await limits.set_limits(OPERATOR, "t-retry", {"tokens_per_day": 1}, via="test")
    body = request("threads.add_user_message", thread_id=thread_id, input=user_input("once"))
    status, raw, headers = await _post(http, stack, body, "t-retry")
    _refusal(status, raw, headers, "tokens_per_day")
    assert (await _usage(limits, "t-retry"))[1] == after
    await limits.set_limits(OPERATOR, "t-retry", {}, reset=True, via="test")
    status, _, _ = await _post(http, stack, body, "t-retry")
    assert status == 200
    _rows, last = await _usage(limits, "t-retry")
    assert last["turns"] == after["turns"] + 1


def _input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


async def _first_event(
    stub: chat_pb2_grpc.ChatServiceStub, start: chat_pb2.CreateThreadRequest, metadata: Any
) -> str | None:
    """The kind of the stream's first event; None when the start is refused by the run limit."""
    try:
        events = [event async for event in stub.CreateThread(start, metadata=metadata, timeout=30)]
    except aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        raise
    return str(events[0].WhichOneof("kind"))


async def test_a_crashed_replicas_slots_are_freed_within_the_lease_ttl(
    limited: tuple[Stack, FakeOpenAI, LimitsStore],
) -> None:
    stack, fake, limits = limited
    await limits.set_limits(OPERATOR, "t-crash", {"runs_per_user": 1}, via="test")
    metadata = (("authorization", f"Bearer {stack.token(tenant='t-crash')}"),)
    first, second = stack.agent_addresses
    victim = next(agent for agent in stack.agents() if agent.name == "agent")
    fake.word_delay_s = 0.5
    try:
        async with aio.insecure_channel(first) as doomed, aio.insecure_channel(second) as survivor:
            running = chat_pb2_grpc.ChatServiceStub(doomed).CreateThread(
                chat_pb2.CreateThreadRequest(input=_input(LONG_TEXT)), metadata=metadata, timeout=60
            )
            kinds = []
            async for event in running:
                kinds.append(event.WhichOneof("kind"))
                if kinds[-1] == "stream_options":
                    break
            stub = chat_pb2_grpc.ChatServiceStub(survivor)
            start = chat_pb2.CreateThreadRequest(input=_input("hello"))
            with pytest.raises(aio.AioRpcError) as refused:
                async for _event in stub.CreateThread(start, metadata=metadata, timeout=30):
                    pass
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "(runs_per_user)" in (refused.value.details() or "")

            victim.stop(signal.SIGKILL)
            killed_at = time.monotonic()
            fake.word_delay_s = 0.0
            while (kind := await _first_event(stub, start, metadata)) is None:
                assert time.monotonic() - killed_at < LEASE_TTL_S + 3, "the slot outlived its lease"
                await asyncio.sleep(0.1)
            freed_after = time.monotonic() - killed_at
            assert kind == "thread_created"
            assert freed_after <= LEASE_TTL_S + 1.0, freed_after
    finally:
        fake.word_delay_s = 0.0
        stack.start_agent("agent")
