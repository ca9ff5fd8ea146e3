"""The demo app's offline model (`DemoModel`): its policy, its Responses event stream, and cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from agents import ModelSettings, ModelTracing
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage

from services.agent_service.agents.stream import find_agent
from switchboard.demo.model import DemoModel, classify
from switchboard.demo.team import build_team
from switchboard.demo.tools import ERP_TOOLS

SYSTEM = (
    "You are the Billing specialist of Switchboard.\nCaller: tenant=acme; user=ada; role=user; locale=en-US"
)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "type": "message", "content": [{"type": "input_text", "text": text}]}


async def _respond(model: DemoModel, items: list[Any], **kw: Any) -> Any:
    return await model.get_response(
        kw.get("system", SYSTEM),
        items,
        ModelSettings(),
        kw.get("tools", []),
        None,
        kw.get("handoffs", []),
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )


async def _stream(model: DemoModel, items: list[Any], **kw: Any) -> list[Any]:
    return [
        event
        async for event in model.stream_response(
            kw.get("system", SYSTEM),
            items,
            ModelSettings(),
            kw.get("tools", []),
            None,
            kw.get("handoffs", []),
            ModelTracing.DISABLED,
            previous_response_id=None,
            conversation_id=None,
            prompt=None,
        )
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I was charged twice, I need a refund", "billing"),
        ("Where is order SO-1001?", "billing"),
        ("The API returns an error after login", "tech"),
        ("What can you do?", None),
    ],
)
def test_classify(text: str, expected: str | None) -> None:
    assert classify(text) == expected


@pytest.mark.parametrize(
    ("text", "specialist"),
    [("My invoice is wrong", "billing"), ("It crashes on install", "tech"), ("Hello!", "general")],
)
async def test_router_calls_the_matching_handoff(text: str, specialist: str) -> None:
    router = build_team()
    response = await _respond(DemoModel(), [_user(text)], handoffs=router.handoffs, system="router")
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.name == f"transfer_to_{specialist}_specialist"


async def test_specialist_calls_a_tool_once_then_answers_from_its_output() -> None:
    model = DemoModel()
    first = await _respond(model, [_user("who is e1001?")], tools=ERP_TOOLS)
    [call] = first.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "lookup_employee"
    assert json.loads(call.arguments) == {"query": {"employee_id": "E1001"}}, "nested as the schema says"

    after_tool = [
        _user("who is e1001?"),
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Employee E1001 is Ada."},
    ]
    second = await _respond(model, after_tool, tools=ERP_TOOLS)
    [message] = second.output
    assert isinstance(message, ResponseOutputMessage)
    assert message.content[0].text == "Employee E1001 is Ada."  # type: ignore[union-attr]


async def test_order_ids_call_the_order_tool() -> None:
    response = await _respond(DemoModel(), [_user("status of so-1004 please")], tools=ERP_TOOLS)
    [call] = response.output
    assert call.name == "lookup_order"
    assert json.loads(call.arguments) == {"query": {"order_id": "SO-1004"}}


async def test_answers_use_history_context_and_ignore_context_messages() -> None:
    history = [
        _user("Hi, my name is Ada Lovelace"),
        {"role": "assistant", "type": "message", "content": [{"type": "output_text", "text": "Hello"}]},
        _user("What is my name?"),
        _user("A message was displayed to the user that the following task was performed: routed"),
    ]
    response = await _respond(DemoModel(), history)
    assert response.output[0].content[0].text == "Your name is Ada Lovelace."

    canned = await _respond(DemoModel(), [_user("first"), _user("Can you help with billing?")])
    text = canned.output[0].content[0].text
    assert text.startswith("Billing here (tenant acme).")
    assert '"Can you help with billing?"' in text
    assert "1 earlier message" in text
    assert 15 <= len(text.split()) <= 45


async def test_stream_is_full_fidelity_with_unique_ids() -> None:
    model = DemoModel()
    events = await _stream(model, [_user("hello there")])
    kinds = [event.type for event in events]
    deltas = kinds.count("response.output_text.delta")
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == len(text.split(" ")) and model.deltas_emitted == deltas
    assert events[-1].response.output[0].content[0].text == text
    assert [e.sequence_number for e in events] == list(range(len(events)))

    again = await _stream(model, [_user("hello there")])
    assert again[-1].response.id != events[-1].response.id
    assert again[-1].response.output[0].id != events[-1].response.output[0].id

    calls = [await _stream(model, [_user("who is E1001")], tools=ERP_TOOLS) for _ in range(2)]
    ids = {events[-1].response.output[0].call_id for events in calls}
    assert len(ids) == 2, "tool call ids are unique"
    assert [e.type for e in calls[0]][2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


async def test_token_delay_is_cancellable() -> None:
    model = DemoModel(token_delay_s=10)
    task = asyncio.create_task(_stream(model, [_user("a long question")]))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.5
    assert model.deltas_emitted == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Please open a ticket, my app keeps crashing", "tech"),
        ("Can you file a support ticket about my invoice?", "tech"),
        ("What time is it for me?", None),
    ],
)
def test_classify_sends_ticket_requests_to_tech(text: str, expected: str | None) -> None:
    assert classify(text) == expected


def _team_tools(label: str) -> list[Any]:
    specialist = find_agent(build_team(), f"{label} specialist")
    assert specialist is not None
    return list(specialist.tools)


@pytest.mark.parametrize(
    ("text", "include_date"),
    [
        ("What time is it for me?", False),
        ("what's my local time and date?", True),
        ("Which time zone am I in?", False),
    ],
)
async def test_time_questions_call_the_client_tool(text: str, include_date: bool) -> None:
    response = await _respond(DemoModel(), [_user(text)], tools=_team_tools("General"))
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_user_local_time"
    assert json.loads(call.arguments) == {"include_date": include_date}


async def test_ticket_requests_call_the_form_tool_with_a_summary() -> None:
    text = "Please open a ticket, my app keeps crashing"
    response = await _respond(DemoModel(), [_user(text)], tools=_team_tools("Tech"))
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "ask_ticket_details"
    assert json.loads(call.arguments) == {"summary": text}


def _form(status: str, priority: str, details: str) -> dict[str, Any]:
    return _user(
        f"A structured input request was displayed to the user with the following status: {status}\n"
        "<StructuredInput>\n"
        f"- [priority] How urgent is it? (choose one of: Low, Normal, High) — answer: {priority}\n"
        f"- [details] Anything else we should know? — answer: {details}\n"
        "</StructuredInput>"
    )


async def test_an_answered_form_is_confirmed_until_the_user_writes_again() -> None:
    tools = _team_tools("Tech")
    ask = "open a ticket please"
    answered = [_user(ask), _form("answered", '["High"]', '["Crashes: always, on start"]')]
    response = await _respond(DemoModel(), answered, tools=tools)
    expected = "Ticket opened with priority High. Details: Crashes: always, on start."
    assert response.output[0].content[0].text == expected

    skipped = [_user(ask), _form("skipped", "skipped", "skipped")]
    response = await _respond(DemoModel(), skipped, tools=tools)
    assert response.output[0].content[0].text == "Ticket opened with default priority (Normal)."

    later = [*answered, _user("thanks!")]
    response = await _respond(DemoModel(), later, tools=tools)
    assert response.output[0].content[0].text.startswith("Billing here"), "only the newest turn counts"

    pending = [_user("hello"), _form("pending", "unanswered", "unanswered")]
    response = await _respond(DemoModel(), pending, tools=tools)
    assert "Ticket opened" not in response.output[0].content[0].text
