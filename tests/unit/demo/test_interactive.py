"""The demo's turns that wait for the user: the client tool round trip (`get_user_local_time`) and the
ticket form (`ask_ticket_details`, a structured input), through the responder on the demo model, on a
scripted Responses-style model and on a real Chat Completions HTTP path. Every event is validated
with `TypeAdapter(chatkit.types.ThreadStreamEvent)` (`collect`)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from agents import ModelBehaviorError
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.types import (
    ClientToolCallItem,
    CustomTask,
    StructuredInputAnswer,
    StructuredInputFreeform,
    StructuredInputItem,
    StructuredInputMultipleChoice,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
)

from services.agent_service.agents.responder import AppResponder, create_responder
from services.agent_service.agents.stream import find_agent
from services.agent_service.models.factory import build_models
from services.agent_service.turn import ACTIVE_AGENT_KEY
from switchboard.app import Caller, stop_when_waiting_for_user
from switchboard.demo.interactive import (
    DEFAULT_PRIORITY,
    LOCAL_TIME_TOOL,
    TICKET_TOOL,
    ask_ticket_details,
    get_user_local_time,
)
from switchboard.demo.team import ROUTER_NAME, SPECIALISTS
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    demo_responder,
    done_items,
    settings,
    turn,
    user,
    workflows,
)

BROWSER_TIME = {"time": "14:05", "timezone": "Europe/Paris"}


@pytest.fixture
async def responder(tmp_path: Path) -> AsyncIterator[AppResponder]:
    instance = await create_responder(settings(data_dir=tmp_path))
    yield instance
    await instance.aclose()


@asynccontextmanager
async def _scripted(model: ScriptedModel) -> AsyncIterator[AppResponder]:
    """The demo app with every agent on `model`."""
    instance = await demo_responder(model)
    try:
        yield instance
    finally:
        await instance.aclose()


def _items(events: Sequence[ThreadStreamEvent]) -> list[ThreadItem]:
    """The items the conversation would store, in order."""
    return [event.item for event in events if isinstance(event, ThreadItemDoneEvent)]


def _completed(call: ClientToolCallItem, output: Any) -> ClientToolCallItem:
    """What `threads.add_client_tool_output` stores."""
    return call.model_copy(update={"status": "completed", "output": output})


def _answered(form: StructuredInputItem, priority: str | None, details: str | None) -> StructuredInputItem:
    """What `threads.add_structured_input` stores (None = skipped)."""
    answered = form.model_copy(deep=True)
    for question, value in zip(answered.inputs, (priority, details), strict=True):
        question.answer = (
            StructuredInputAnswer(values=[value]) if value else StructuredInputAnswer(skipped=True)
        )
    answered.status = "answered" if priority or details else "skipped"
    return answered


# ------------------------------------------------------------------------------------ client tool


async def test_a_time_question_ends_the_turn_with_one_pending_client_tool_call(
    responder: AppResponder,
) -> None:
    current = turn("What time is it for me?")
    events = await collect(responder.respond(current))

    assert len(workflows(events)) == 1
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "General specialist"
    [call] = done_items(events, ClientToolCallItem)
    assert call.status == "pending" and call.output is None
    assert call.name == LOCAL_TIME_TOOL and call.arguments == {"include_date": False}
    assert call.call_id.startswith("call_") and call.id.startswith("tc_") and len(call.id) > 30
    assert call.thread_id == current.thread.id
    assert _items(events)[-1] == call, "the pending call is the turn's last item"
    assert answers(events) == [], "the run stopped at the client tool: no answer before the browser's"
    assert not any(isinstance(e, ThreadItemAddedEvent) for e in events)


async def test_the_pending_call_carries_the_sdk_call_id_and_the_run_stops() -> None:
    """A Responses-style model may write text before its call; nothing runs after the call."""
    model = ScriptedModel(
        [
            [
                assistant_message("Let me ask your browser."),
                function_call(LOCAL_TIME_TOOL, {"include_date": True}, call_id="call_sdk_42"),
            ]
        ]
    )
    async with _scripted(model) as responder:
        events = await collect(responder.respond(turn("what's my local time?", active="Billing specialist")))
    assert answers(events) == ["Let me ask your browser."]
    assert [item.type for item in _items(events)] == ["assistant_message", "client_tool_call"]
    [call] = done_items(events, ClientToolCallItem)
    assert call.call_id == "call_sdk_42" and call.arguments == {"include_date": True}
    assert len(model.calls) == 1 and model.remaining_steps == 0, "stopped at the tool: no second model call"
    assert_message_lifecycle(events)


async def test_only_one_client_tool_call_per_turn() -> None:
    model = ScriptedModel(
        [
            [
                function_call(LOCAL_TIME_TOOL, {"include_date": False}, call_id="call_first"),
                function_call(LOCAL_TIME_TOOL, {"include_date": True}, call_id="call_second"),
            ]
        ]
    )
    async with _scripted(model) as responder:
        events = await collect(responder.respond(turn("what time is it?", active="General specialist")))
    [call] = done_items(events, ClientToolCallItem)
    assert call.call_id == "call_first" and call.arguments == {"include_date": False}


async def test_the_specialist_answers_from_the_completed_call(responder: AppResponder) -> None:
    first = turn("What time is it for me?")
    stored = _items(await collect(responder.respond(first)))
    [call] = [item for item in stored if isinstance(item, ClientToolCallItem)]

    history = [*first.history, *stored[:-1], _completed(call, BROWSER_TIME)]
    follow_up = turn(*history, active=first.thread.metadata[ACTIVE_AGENT_KEY], title="Time")
    assert follow_up.input_user_message is None
    events = await collect(responder.respond(follow_up))

    assert answers(events) == ["Your local time is 14:05 (Europe/Paris)."]
    assert workflows(events) == [], "the same specialist continues, no routing"
    assert done_items(events, ClientToolCallItem) == [], "the answer does not ask again"
    assert follow_up.thread.metadata == {ACTIVE_AGENT_KEY: "General specialist"}
    assert_message_lifecycle(events)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            {"time": "09:30", "date": "2026-03-01", "timezone": "Asia/Tokyo"},
            "Your local time is 09:30 on 2026-03-01 (Asia/Tokyo).",
        ),
        ({"timezone": "UTC"}, "Your time zone is UTC."),
        (None, "Your browser did not report its local time."),
    ],
)
async def test_other_browser_answers(responder: AppResponder, output: Any, expected: str) -> None:
    first = turn("my local time please")
    stored = _items(await collect(responder.respond(first)))
    call = stored[-1]
    assert isinstance(call, ClientToolCallItem)
    follow_up = turn(
        *first.history, *stored[:-1], _completed(call, output), active="General specialist", title="t"
    )
    assert answers(await collect(responder.respond(follow_up))) == [expected]


async def test_a_new_message_after_an_unanswered_call_leaves_the_call_out(responder: AppResponder) -> None:
    first = turn("What time is it for me?")
    stored = _items(await collect(responder.respond(first)))
    follow_up = turn(
        *first.history, *stored, user("Never mind, hello!"), active="General specialist", title="t"
    )
    events = await collect(responder.respond(follow_up))
    [answer] = answers(events)
    assert answer.startswith("Happy to help") and '"Never mind, hello!"' in answer


async def test_a_malformed_client_tool_call_fails_the_turn_instead_of_ending_silently() -> None:
    model = ScriptedModel([[function_call(LOCAL_TIME_TOOL, "{not json", call_id="call_bad")]])
    async with _scripted(model) as responder:
        with pytest.raises(ModelBehaviorError):
            await collect(responder.respond(turn("what time is it?", active="General specialist")))


async def test_the_completed_call_reaches_a_chat_completions_provider_as_a_tool_exchange() -> None:
    """Through the real openai client and the SDK's Chat Completions converter, over HTTP."""
    async with fake_openai_server() as fake:
        await _continue_on_chat_completions(fake)


async def _continue_on_chat_completions(fake: FakeOpenAI) -> None:
    config = settings(llm_provider="openai", openai_base_url=fake.base_url, openai_default_model="gpt-fake")
    responder = await demo_responder(models=build_models(config))
    call = ClientToolCallItem(
        id="tc_1",
        thread_id="thr_test",
        created_at=turn("x").thread.created_at,
        status="completed",
        call_id="call_browser_1",
        name=LOCAL_TIME_TOOL,
        arguments={"include_date": False},
        output=BROWSER_TIME,
    )
    try:
        events = await collect(
            responder.respond(turn("What time is it for me?", call, active="General specialist", title="t"))
        )
    finally:
        await responder.aclose()
    [body] = fake.requests
    messages = body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    [tool_call] = messages[2]["tool_calls"]
    assert tool_call["id"] == "call_browser_1" and tool_call["function"]["name"] == LOCAL_TIME_TOOL
    assert json.loads(tool_call["function"]["arguments"]) == {"include_date": False}
    assert messages[3]["tool_call_id"] == "call_browser_1"
    assert json.loads(messages[3]["content"]) == BROWSER_TIME
    assert answers(events) == ["Tool said: " + json.dumps(BROWSER_TIME)]
    assert LOCAL_TIME_TOOL in {schema["name"] for schema in fake.tool_schemas()}


# ------------------------------------------------------------------------------- structured input


async def test_a_ticket_request_shows_one_pending_form_and_stops(responder: AppResponder) -> None:
    current = turn("Please open a ticket, my app keeps crashing")
    events = await collect(responder.respond(current))

    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "Tech specialist"
    [form] = done_items(events, StructuredInputItem)
    assert form.status == "pending" and form.id.startswith("msg_") and form.thread_id == current.thread.id
    priority, details = form.inputs
    assert isinstance(priority, StructuredInputMultipleChoice) and priority.id == "priority"
    assert priority.question == "How urgent is it?" and not priority.multiple
    assert [option.value for option in priority.options] == ["Low", "Normal", "High"]
    assert isinstance(details, StructuredInputFreeform) and details.id == "details"
    assert details.question == "Anything else we should know?"
    assert details.description is not None and "crashing" in details.description
    assert all(question.answer is None for question in form.inputs)
    assert _items(events)[-1] == form, "the form is the turn's last item"
    assert answers(events) == [] and done_items(events, ClientToolCallItem) == []


async def test_the_answered_form_is_confirmed_with_its_priority(responder: AppResponder) -> None:
    first = turn("Please open a ticket, my app keeps crashing")
    stored = _items(await collect(responder.respond(first)))
    form = stored[-1]
    assert isinstance(form, StructuredInputItem)

    answered = _answered(form, "High", "It crashes on startup since v2.3")
    follow_up = turn(*first.history, *stored[:-1], answered, active="Tech specialist", title="Ticket")
    events = await collect(responder.respond(follow_up))
    assert answers(events) == ["Ticket opened with priority High. Details: It crashes on startup since v2.3."]
    assert workflows(events) == [] and done_items(events, StructuredInputItem) == []
    assert_message_lifecycle(events)


@pytest.mark.parametrize(
    ("priority", "details", "expected"),
    [
        (None, None, f"Ticket opened with default priority ({DEFAULT_PRIORITY})."),
        (
            None,
            "Only on Fridays",
            f"Ticket opened with default priority ({DEFAULT_PRIORITY}). Details: Only on Fridays.",
        ),
        ("Low", None, "Ticket opened with priority Low."),
    ],
)
async def test_skipped_answers_use_the_default_priority(
    responder: AppResponder, priority: str | None, details: str | None, expected: str
) -> None:
    first = turn("Can you file a ticket for me? Login is broken")
    stored = _items(await collect(responder.respond(first)))
    form = stored[-1]
    assert isinstance(form, StructuredInputItem)
    follow_up = turn(
        *first.history,
        *stored[:-1],
        _answered(form, priority, details),
        active="Tech specialist",
        title="t",
    )
    assert answers(await collect(responder.respond(follow_up))) == [expected]


async def test_other_specialists_hand_ticket_requests_to_tech(responder: AppResponder) -> None:
    current = turn("Please open a ticket about my invoice", active="Billing specialist")
    events = await collect(responder.respond(current))
    [routed] = workflows(events)
    task = routed.workflow.tasks[0]
    assert isinstance(task, CustomTask) and task.title == "Routed to the Tech specialist"
    assert len(done_items(events, StructuredInputItem)) == 1


# -------------------------------------------------------------------------------------- the team


def test_every_specialist_stops_at_the_interactive_tools_and_only_tech_has_the_form(
    responder: AppResponder,
) -> None:
    router = responder.app.starting_agent(Caller(tenant="acme", user="ada", role="user", locale="en-US"))
    assert router.name == ROUTER_NAME
    for spec in SPECIALISTS:
        agent = find_agent(router, spec.name)
        assert agent is not None, spec.name
        names = {tool.name for tool in agent.tools}
        assert LOCAL_TIME_TOOL in names
        assert (TICKET_TOOL in names) == (spec.key == "tech")
        # Stops when a tool waits for the user (a client tool or a form), whichever tool it was.
        assert agent.tool_use_behavior is stop_when_waiting_for_user
    assert router.tools == []


def test_interactive_tool_schemas_are_portable() -> None:
    """Each tool has at least one parameter: Gemini rejects an object schema without properties."""
    for tool in (get_user_local_time, ask_ticket_details):
        schema = tool.params_json_schema
        assert schema["properties"] and schema["additionalProperties"] is False
        assert "pattern" not in json.dumps(schema)
