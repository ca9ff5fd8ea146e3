"""Metrics and logs of the real stack: one conversation through edge → agent → (fake) model, then
every service's /metrics is scraped and parsed with prometheus_client's parser, and the JSON logs are
read line by line. A second stack runs with SWITCHBOARD_METRICS_ENABLED=false: it converses and
serves no metrics anywhere.

The stack runs on the fake OpenAI-compatible server (its completions report `USAGE`) with the demo
app, and `SWITCHBOARD_LOG_FORMAT=json`. Tests run in file order on one stack; each compares
counters before and after what it does.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from chatkit.types import ThreadItemUpdatedEvent

from tests.fakes.openai_server import USAGE, FakeOpenAI, fake_openai_server
from tests.support.chatkit_wire import assistant_text, call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack
from tests.support.prometheus import Samples, label_values, scrape, value

EMPLOYEE_QUESTION = "Who is employee E1001?"
REQUEST_ID = "obs-test-0001"


class Scrapes:
    """Before/after snapshots of every service's metrics."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before = self.take()

    def take(self) -> dict[str, Samples]:
        return {name: scrape(self.stack.metrics_url(name)) for name in ("edge", "agent", "upload")}

    def delta(self, after: dict[str, Samples], service: str, name: str, **labels: str) -> float:
        return value(after[service], name, **labels) - value(self.before[service], name, **labels)


@pytest.fixture(scope="module")
async def observed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    async with fake_openai_server() as fake:
        with running_stack(
            tmp_path_factory.mktemp("observe"),
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
            SWITCHBOARD_LOG_FORMAT="json",
        ) as stack:
            yield stack, fake


async def test_one_conversation_moves_every_metric(
    http: aiohttp.ClientSession, observed: tuple[Stack, FakeOpenAI]
) -> None:
    stack, fake = observed
    scrapes = Scrapes(stack)
    calls_before = len(fake.requests)

    events = await stream(
        http,
        stack.edge_url,
        request("threads.create", input=user_input(EMPLOYEE_QUESTION)),
        {**stack.headers(), "X-Request-Id": REQUEST_ID},
    )
    deltas = [
        e for e in events if isinstance(e, ThreadItemUpdatedEvent) and e.update.type.endswith("text_delta")
    ]
    assert deltas, [e.type for e in events]
    model_calls = len(fake.requests) - calls_before
    assert model_calls >= 3, "router, tool call, answer (and the title)"
    after = scrapes.take()

    # edge: the HTTP request, by route, operation and status; no stream left open
    edge = {"route": "/chatkit/api", "operation": "threads.create"}
    assert scrapes.delta(after, "edge", "switchboard_http_requests_total", status="200", **edge) == 1
    assert scrapes.delta(after, "edge", "switchboard_http_request_duration_seconds_count", **edge) == 1
    assert value(after["edge"], "switchboard_edge_streams_in_flight") == 0

    # agent: the gRPC call (the edge streams through `Stream`) and its stream, by operation
    agent = "agent"
    grpc = {"grpc_service": "switchboard.v1.ChatService", "grpc_method": "Stream"}
    assert scrapes.delta(after, agent, "switchboard_grpc_server_handled_total", grpc_code="OK", **grpc) == 1
    assert scrapes.delta(after, agent, "switchboard_grpc_server_started_total", **grpc) == 1
    op = {"operation": "CreateThread"}
    assert scrapes.delta(after, agent, "switchboard_agent_stream_first_text_seconds_count", **op) == 1
    assert scrapes.delta(after, agent, "switchboard_agent_stream_duration_seconds_count", **op) == 1
    assert scrapes.delta(after, agent, "switchboard_agent_stream_text_deltas_total", **op) == len(deltas)
    assert scrapes.delta(after, agent, "switchboard_agent_stream_events_total", **op) == len(events)
    assert value(after[agent], "switchboard_agent_streams_in_flight") == 0

    # the model calls and the usage the provider reported, the handoff and the tool call
    provider = {"provider": "openai"}
    assert scrapes.delta(after, agent, "switchboard_model_calls_total", **provider) == model_calls
    tokens = "switchboard_model_tokens_total"
    assert scrapes.delta(after, agent, tokens, direction="input", **provider) == (
        model_calls * USAGE["prompt_tokens"]
    )
    assert scrapes.delta(after, agent, tokens, direction="output", **provider) == (
        model_calls * USAGE["completion_tokens"]
    )
    assert label_values(after[agent], tokens, "model") == {"gpt-4.1-mini"}
    assert scrapes.delta(after, agent, "switchboard_agent_handoffs_total") == 1
    assert scrapes.delta(after, agent, "switchboard_agent_tool_calls_total", tool="lookup_employee") == 1

    # the store: transactions observed, the pool gauge present
    assert scrapes.delta(after, agent, "switchboard_store_transaction_seconds_count", outcome="commit") >= 2
    assert ("switchboard_store_pool_connections_in_use", frozenset()) in after[agent]


async def test_a_busy_thread_counts_a_lease_conflict(
    http: aiohttp.ClientSession, observed: tuple[Stack, FakeOpenAI]
) -> None:
    stack, fake = observed
    created = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("hello")), stack.headers()
    )
    thread_id = created[0].thread.id  # type: ignore[union-attr]
    scrapes = Scrapes(stack)
    fake.word_delay_s = 0.2
    try:
        body = request("threads.add_user_message", thread_id=thread_id, input=user_input("tell me more"))
        async with http.post(f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers()) as running:
            assert running.status == 200
            seen = b""
            while b"text_delta" not in seen:  # the turn is running: it holds the lease
                chunk = await running.content.readany()
                assert chunk, "the stream ended early"
                seen += chunk
            refused = await call(
                http,
                stack.edge_url,
                request("threads.add_user_message", thread_id=thread_id, input=user_input("me too")),
                stack.headers(),
                status=409,
            )
            assert error_of(refused)[0] == "ABORTED"
            fake.word_delay_s = 0
            await running.read()
    finally:
        fake.word_delay_s = 0
    after = scrapes.take()
    assert scrapes.delta(after, "agent", "switchboard_store_run_lease_conflicts_total") == 1
    grpc = {"grpc_method": "Stream"}
    assert (
        scrapes.delta(after, "agent", "switchboard_grpc_server_handled_total", grpc_code="ABORTED", **grpc)
        == 1
    )
    assert scrapes.delta(after, "edge", "switchboard_http_requests_total", status="409") == 1


async def test_uploads_count_bytes_and_refusals(
    http: aiohttp.ClientSession, observed: tuple[Stack, FakeOpenAI]
) -> None:
    stack, _ = observed
    scrapes = Scrapes(stack)

    async def upload(content: bytes, content_type: str) -> int:
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", content, filename="notes.txt", content_type=content_type)
        url = f"{stack.edge_url}/chatkit/api/upload"
        async with http.post(url, data=form, headers=stack.headers()) as reply:
            await reply.read()
            return reply.status

    assert await upload(b"hello metrics", "text/plain") == 200
    assert await upload(b"MZ\x90\x00 not allowed", "application/x-msdownload") == 400
    after = scrapes.take()
    assert scrapes.delta(after, "upload", "switchboard_upload_bytes_total") == len(b"hello metrics")
    assert scrapes.delta(after, "upload", "switchboard_upload_files_total", method="direct") == 1
    assert scrapes.delta(after, "upload", "switchboard_upload_refusals_total", reason="invalid") == 1
    upload_grpc = {"grpc_service": "switchboard.v1.UploadService", "grpc_method": "Upload"}
    assert (
        scrapes.delta(after, "upload", "switchboard_grpc_server_handled_total", grpc_code="OK", **upload_grpc)
        == 1
    )
    assert (
        scrapes.delta(
            after,
            "upload",
            "switchboard_grpc_server_handled_total",
            grpc_code="INVALID_ARGUMENT",
            **upload_grpc,
        )
        == 1
    )
    assert scrapes.delta(after, "edge", "switchboard_http_requests_total", route="/chatkit/api/upload") == 2


async def test_json_logs_parse_and_carry_the_request_id(observed: tuple[Stack, FakeOpenAI]) -> None:
    stack, _ = observed
    await asyncio.sleep(0.2)  # let the last lines reach the files
    for name in ("edge", "agent", "upload"):
        lines = [line for line in stack.services[name].log_text().splitlines() if line.strip()]
        assert lines, name
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"{name}: not a JSON line: {line!r}")
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records), name
    edge_lines = [
        json.loads(line) for line in stack.services["edge"].log_text().splitlines() if REQUEST_ID in line
    ]
    assert edge_lines, "the edge logged the request"
    assert all(r.get("request_id") == REQUEST_ID for r in edge_lines)
    access = [r for r in edge_lines if r["logger"] == "switchboard.edge.access"]
    assert access and access[0]["operation"] == "threads.create" and access[0]["tenant"] == "acme"
    agent_lines = [json.loads(line) for line in stack.services["agent"].log_text().splitlines()]
    mine = [r for r in agent_lines if r.get("request_id") == REQUEST_ID]
    assert mine, "the agent service logged lines for the request"
    assert all(r.get("tenant") == "acme" and r.get("operation") == "CreateThread" for r in mine)
    # no user content at INFO
    for name in ("edge", "agent", "upload"):
        assert EMPLOYEE_QUESTION not in stack.services[name].log_text(), name


# --------------------------------------------------------------------------- metrics off


@pytest.fixture(scope="module")
def unobserved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("unobserved"), SWITCHBOARD_METRICS_ENABLED="false") as stack:
        yield stack


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


async def _upload(http: aiohttp.ClientSession, stack: Stack, content: bytes, content_type: str) -> int:
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("file", content, filename="notes.txt", content_type=content_type)
    async with http.post(f"{stack.edge_url}/chatkit/api/upload", data=form, headers=stack.headers()) as reply:
        await reply.read()
        return reply.status


async def test_with_metrics_off_the_stack_converses_and_serves_no_metrics(
    http: aiohttp.ClientSession, unobserved: Stack
) -> None:
    stack = unobserved
    # a conversation, an upload and a refused upload: every path that observes metrics when they are on
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input("hello")), stack.headers()
    )
    assert assistant_text(events)
    assert await _upload(http, stack, b"hello, no metrics", "text/plain") == 200
    assert await _upload(http, stack, b"MZ\x90\x00 not allowed", "application/x-msdownload") == 400

    async with http.get(f"{stack.edge_url}/metrics") as reply:
        assert reply.status == 404
    for name in ("agent", "upload"):
        address = urllib.parse.urlsplit(stack.metrics_url(name)).netloc
        assert not _listening(address), f"the {name} service serves metrics on {address}"
        log = stack.services[name].log_text()
        assert "metrics off" in log and "metrics on http" not in log, name
    assert "metrics off" in stack.services["edge"].log_text()
    for name, service in stack.services.items():
        assert "Traceback" not in service.log_text(), name
