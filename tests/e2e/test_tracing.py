"""Traces across the real processes: edge -> agent service -> (fake) model, collected by a local
OTLP/HTTP collector (`tests/support/otlp.py`).

With `OTEL_EXPORTER_OTLP_ENDPOINT` set, one `threads.create` is one trace: the edge's HTTP span is
its root, the agent's gRPC server span is a descendant of it across the process boundary (the gRPC
client span in between carries `traceparent`), and under the server span come the Agents SDK's
spans (the agent runs, the model calls, the tool call, the handoff) and the store's transactions
with their SQL statements. No user text reaches a span. Without the switch, nothing is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.fakes.openai_server import USAGE, FakeOpenAI, fake_openai_server
from tests.support.chatkit_wire import request, stream, user_input
from tests.support.otlp import Collector, ReceivedSpan, otlp_collector
from tests.support.processes import ROOT, Stack, running_stack

EMPLOYEE_QUESTION = "Who is employee E1001?"
REQUEST_ID = "trace-test-0001"
SECRET_WORDS = ("Who is employee", "E1001")
"""Parts of the user's message (and of the tool's arguments): in no span attribute."""


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with otlp_collector() as running:
        yield running


@pytest.fixture(scope="module")
async def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    async with fake_openai_server() as fake:
        with running_stack(
            tmp_path_factory.mktemp("traced"),
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
            SWITCHBOARD_LOG_FORMAT="json",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as stack:
            yield stack, fake


def tree(spans: list[ReceivedSpan]) -> str:
    """The spans as an indented tree (for failure messages)."""
    children: dict[str, list[ReceivedSpan]] = {}
    ids = {s.span_id for s in spans}
    for span in spans:
        children.setdefault(span.parent_id if span.parent_id in ids else "", []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            lines.append(f"{'  ' * depth}{span.service}: {span.name} [{span.kind}]")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


async def test_one_conversation_is_one_trace_from_the_edge_to_the_model(
    http: aiohttp.ClientSession, traced: tuple[Stack, FakeOpenAI], collector: Collector
) -> None:
    stack, _ = traced
    await stream(
        http,
        stack.edge_url,
        request("threads.create", input=user_input(EMPLOYEE_QUESTION)),
        {**stack.headers(), "X-Request-Id": REQUEST_ID},
    )

    def edge_root(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        return next(
            (
                s
                for s in spans
                if s.service == "switchboard-edge"
                and s.attributes.get("switchboard.request_id") == REQUEST_ID
            ),
            None,
        )

    def complete(spans: list[ReceivedSpan]) -> bool:
        root = edge_root(spans)
        names = {s.name for s in spans if root is not None and s.trace_id == root.trace_id}
        return root is not None and "execute_tool lookup_employee" in names and "agent workflow" in names

    everything = collector.wait_for(complete)
    root = edge_root(everything)
    assert root is not None
    spans = [s for s in everything if s.trace_id == root.trace_id]
    by_id = {s.span_id: s for s in spans}
    shown = tree(spans)

    # one trace for the request: every span that names the request id is in it
    assert {s.trace_id for s in everything if s.attributes.get("switchboard.request_id") == REQUEST_ID} == {
        root.trace_id
    }
    # the edge's HTTP span is the root
    assert root.parent_id == "" and root.kind == "SERVER", shown
    assert all(s is root or ancestors(s, by_id)[-1] is root for s in spans), shown

    # the agent's gRPC server span: a child of the edge's client span, across the processes
    (server,) = [s for s in spans if s.service == "switchboard-agent" and s.kind == "SERVER"]
    assert server.name == "/switchboard.v1.ChatService/Stream", shown
    assert server.attributes["switchboard.operation"] == "CreateThread"
    assert server.attributes["switchboard.request_id"] == REQUEST_ID
    client = by_id[server.parent_id]
    assert client.service == "switchboard-edge" and client.kind == "CLIENT", shown
    assert client.parent_id == root.span_id, shown

    def under_server(span: ReceivedSpan) -> bool:
        return server in ancestors(span, by_id)

    # the Agents SDK: the run (workflow) under the server span, the agents under it; the router's
    # model call and its handoff, the specialist's model calls and its tool call, each under the
    # turn of the agent that made them
    workflows = [s for s in spans if s.name == "agent workflow"]
    assert workflows and all(under_server(w) for w in workflows), shown
    agents = {s.attributes["gen_ai.agent.name"]: s for s in spans if s.name.startswith("invoke_agent ")}
    (handoff,) = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "handoff"]
    specialist = handoff.attributes["agents.handoff.to"]
    assert {"Router", specialist} <= set(agents), shown
    for agent in agents.values():
        assert "agent workflow" in [a.name for a in ancestors(agent, by_id)], shown

    def agent_of(span: ReceivedSpan) -> str:
        turn = by_id[span.parent_id]
        assert turn.name.startswith("agent turn "), shown
        return str(by_id[turn.parent_id].attributes["gen_ai.agent.name"])

    assert agent_of(handoff) == "Router"
    (tool,) = [s for s in spans if s.name == "execute_tool lookup_employee"]
    assert agent_of(tool) == specialist
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert [agent_of(c) for c in chats].count(specialist) == 2, shown
    assert all(c.attributes["gen_ai.request.model"] == "gpt-4.1-mini" for c in chats), shown
    assert all(c.attributes["gen_ai.usage.input_tokens"] == USAGE["prompt_tokens"] for c in chats), shown

    # the store: transactions under the server span, their SQL statements under them
    stores = [s for s in spans if s.name.startswith("store ")]
    assert len(stores) >= 2 and all(under_server(s) for s in stores), shown
    statements = [s for s in spans if "db.statement" in s.attributes or "db.query.text" in s.attributes]
    assert statements and all(by_id[s.parent_id].name.startswith("store ") for s in statements), shown

    # no user text in any attribute
    for span in spans:
        for name, value in span.attributes.items():
            for words in SECRET_WORDS:
                assert words not in json.dumps(value), (span.name, name, value)

    # the JSON log lines of the request carry its trace id (and a span id)
    lines = [
        json.loads(line) for line in stack.services["agent"].log_text().splitlines() if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("request_id") == REQUEST_ID]
    assert mine and all(line.get("trace_id") == root.trace_id for line in mine), mine
    assert all(len(line.get("span_id", "")) == 16 for line in mine), mine


async def test_without_the_switch_nothing_is_traced(
    http: aiohttp.ClientSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The endpoint is set, but OTEL_TRACES_EXPORTER=none says no: nothing may reach the collector.
    with otlp_collector() as collector:
        with running_stack(
            tmp_path_factory.mktemp("untraced"),
            uploads=False,
            SWITCHBOARD_LOG_FORMAT="json",
            OTEL_TRACES_EXPORTER="none",
            OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",
        ) as stack:
            await stream(
                http,
                stack.edge_url,
                request("threads.create", input=user_input(EMPLOYEE_QUESTION)),
                {**stack.headers(), "X-Request-Id": REQUEST_ID},
            )
        # the stack has stopped (SIGTERM: a tracing service would have flushed by now)
        assert collector.requests == 0
        for name in ("edge", "agent"):
            text = stack.services[name].log_text()
            assert "tracing on" not in text and '"trace_id"' not in text


def test_tracing_off_imports_no_opentelemetry_sdk() -> None:
    """No cost when off: the services' modules load neither the SDK nor an instrumentation."""
    script = (
        "import sys\n"
        "import services.edge.app, services.agent_service.server, services.upload_service.server\n"
        "import services.agent_service.agents\n"
        "from services.common import tracing\n"
        "assert not tracing.setup_tracing('agent')\n"
        "prefixes = ('opentelemetry.sdk', 'opentelemetry.instrumentation', 'opentelemetry.exporter')\n"
        "loaded = [m for m in sys.modules if m.startswith(prefixes)]\n"
        "assert not loaded, loaded\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=60)
