"""`AppResponder` end to end on the demo app and its offline model: routing, tools, history, context,
titles, cancellation, errors and widget actions. Every event is checked against chatkit's wire models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from agents import Agent, MaxTurnsExceeded, function_tool
from agents.testing import ScriptedModel, assistant_message, function_call
from chatkit.actions import Action
from chatkit.errors import CustomStreamError
from chatkit.types import (
    ProgressUpdateEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    WidgetItem,
)

from services.agent_service.agents.responder import AppResponder, create_responder
from services.agent_service.models.factory import ConfiguredModels
from services.agent_service.models.offline import OfflineTitleModel
from services.agent_service.turn import ACTIVE_AGENT_KEY, ActionRequest
from services.common.auth import Principal
from switchboard.app import App, InvalidRequest, NotFound, show_errors_to_user
from switchboard.demo import create_app
from switchboard.demo.model import DemoModel
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    demo_responder,
    settings,
    text_deltas,
    turn,
    widgets,
    workflows,
)

LONG_QUESTION = "Please explain in detail how I can reset my password after a login error"


@pytest.fixture
async def responder(tmp_path: Path) -> AsyncIterator[AppResponder]:
    """The service's own path: the default app (the demo) loaded and started from settings."""
    instance = await create_responder(settings(data_dir=tmp_path))
    yield instance
    await instance.aclose()


@asynccontextmanager
async def _responder(model: Any, *, app: Any = None, max_turns: int = 8) -> AsyncIterator[AppResponder]:
    """The demo app on `model` (offline), on a fresh in-memory ERP directory, closed afterwards."""
    instance = await demo_responder(model, app=app, max_turns=max_turns)
    try:
        yield instance
    finally:
        await instance.aclose()


# ---------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("text", "label", "opening"),
    [
        ("I was charged twice on my invoice, can I get a refund?", "Billing", "Billing here"),
        ("The app shows an error and crashes when I log in", "Tech", "Tech support here"),
        ("What can you help me with today?", "General", "Happy to help"),
    ],
)
async def test_router_hands_off_visibly_and_the_specialist_answers(
    responder: AppResponder, text: str, label: str, opening: str
) -> None:
    current = turn(text)
    events = await collect(responder.respond(current))

    [workflow] = workflows(events)
    assert workflow.workflow.type == "custom"
    [task] = workflow.workflow.tasks
    assert task.type == "custom" and task.title == f"Routed to the {label} specialist"
    assert task.icon == "agent" and task.status_indicator == "complete"
    assert workflow.workflow.summary is not None
    assert workflow.workflow.summary.title == f"{label} specialist"  # type: ignore[union-attr]
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == f"{label} specialist", "the agent's name"

    assert_message_lifecycle(events)
    [answer] = answers(events)
    assert answer.startswith(f"{opening} (tenant acme).")
    assert "".join(text_deltas(events)) == answer and len(text_deltas(events)) > 10
    assert events.index(next(e for e in events if isinstance(e, ThreadItemAddedEvent))) > events.index(
        next(e for e in events if isinstance(e, ThreadItemDoneEvent))
    ), "the routing trace comes before the answer"
    ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert len(ids) == len(set(ids)) and all("__fake_id__" not in i for i in ids)


async def test_the_active_specialist_continues_without_a_second_handoff(responder: AppResponder) -> None:
    current = turn(
        "My invoice is wrong", "Billing here…", "Thanks, one more thing.", active="Billing specialist"
    )
    events = await collect(responder.respond(current))
    assert workflows(events) == []
    [answer] = answers(events)
    assert answer.startswith("Billing here") and "1 earlier message" in answer
    assert current.thread.metadata == {ACTIVE_AGENT_KEY: "Billing specialist"}


async def test_a_specialist_hands_off_to_a_peer_when_the_topic_changes(responder: AppResponder) -> None:
    current = turn("The app crashes at login", active="Billing specialist")
    events = await collect(responder.respond(current))
    [workflow] = workflows(events)
    assert workflow.workflow.tasks[0].title == "Routed to the Tech specialist"  # type: ignore[union-attr]
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "Tech specialist"
    assert answers(events)[0].startswith("Tech support here")


@pytest.mark.parametrize("active", ["sales", "billing"])
async def test_an_unknown_active_agent_starts_with_the_router(responder: AppResponder, active: str) -> None:
    """A name that is not in the app's handoff graph (including a specialist's old key) is ignored."""
    current = turn("Hello", active=active)
    events = await collect(responder.respond(current))
    assert len(workflows(events)) == 1
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "General specialist"


# ------------------------------------------------------------------------------------------- ERP


async def test_erp_answers_are_tenant_scoped_with_progress_and_a_card(responder: AppResponder) -> None:
    acme = await collect(responder.respond(turn("Who is employee E1001?")))
    globex = await collect(responder.respond(turn("Who is employee E1001?", tenant="globex")))
    assert answers(acme)[0].startswith("Employee E1001 is Ada Lovelace")
    assert answers(globex)[0].startswith("Employee E1001 is Hank Scorpio")
    assert "Salary hidden for your role." in answers(acme)[0]

    kinds = [type(e).__name__ for e in acme]
    progress = kinds.index("ProgressUpdateEvent")
    card = next(
        i for i, e in enumerate(acme) if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
    )
    message = next(i for i, e in enumerate(acme) if isinstance(e, ThreadItemAddedEvent))
    assert progress < card < message, kinds
    [widget] = widgets(acme)
    assert '"erp.show_open_orders"' in widget.widget.model_dump_json()
    assert_message_lifecycle(acme)


async def test_other_tenants_ids_are_not_found_and_hr_sees_salaries(responder: AppResponder) -> None:
    missing = await collect(responder.respond(turn("Who is E2001?", tenant="acme")))
    assert answers(missing) == ["No employee E2001 in your organisation."]
    assert widgets(missing) == []
    hr = await collect(responder.respond(turn("Who is E1001?", role="hr")))
    assert "Salary: 128,000 USD a year." in answers(hr)[0]


async def test_tool_events_keep_item_order_with_a_responses_style_model() -> None:
    """Text and a tool call in one response, then an answer; item ids are ours, not the model's."""
    model = ScriptedModel(
        [
            [
                assistant_message("Let me check."),
                function_call("lookup_employee", {"query": {"employee_id": "E1004"}}, call_id="c1"),
            ],
            [assistant_message("She runs Engineering.")],
        ]
    )
    async with _responder(model) as responder:
        events = await collect(responder.respond(turn("who runs engineering?", active="General specialist")))
    assert answers(events) == ["Let me check.", "She runs Engineering."]
    done = [e.item.type for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert done == ["assistant_message", "widget", "assistant_message"]
    first_done = next(i for i, e in enumerate(events) if isinstance(e, ThreadItemDoneEvent))
    assert first_done < next(i for i, e in enumerate(events) if isinstance(e, ProgressUpdateEvent))
    ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert len(set(ids)) == 3 and "scripted-message" not in ids
    assert_message_lifecycle(events)


# --------------------------------------------------------------------------- history and context


async def test_history_reaches_the_model(responder: AppResponder) -> None:
    events = await collect(
        responder.respond(
            turn("Hi, my name is Ada.", "Nice to meet you.", "What is my name?", active="General specialist")
        )
    )
    assert answers(events) == ["Your name is Ada."]


class RecordingModel(DemoModel):
    """The demo model, recording what the SDK sends it."""

    def __init__(self, token_delay_s: float = 0.0) -> None:
        super().__init__(token_delay_s)
        self.instructions: list[str | None] = []
        self.tool_schemas: list[dict[str, Any]] = []

    def stream_response(
        self, system_instructions: Any, input: Any, model_settings: Any, tools: Any, *a: Any, **kw: Any
    ) -> Any:
        self.instructions.append(system_instructions)
        self.tool_schemas.extend(getattr(tool, "params_json_schema", {}) for tool in tools)
        return super().stream_response(system_instructions, input, model_settings, tools, *a, **kw)


def _property_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        names = set(node.get("properties", {})) if isinstance(node.get("properties"), dict) else set()
        return names.union(*(_property_names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_property_names(value) for value in node))
    return set()


async def test_caller_context_reaches_instructions_but_never_tool_schemas() -> None:
    model = RecordingModel()
    current = turn("Who is E1001?", tenant="globex", user_id="u-7f3q", role="hr", locale="fr-FR")
    async with _responder(model) as responder:
        events = await collect(responder.respond(current))
    assert answers(events)[0].startswith("Employee E1001 is Hank Scorpio")
    assert len(model.instructions) == 3, "router, specialist tool call, specialist answer"
    for instructions in model.instructions:
        assert instructions is not None
        assert "tenant=globex; user=u-7f3q; role=hr; locale=fr-FR" in instructions
    assert model.tool_schemas, "the specialist was offered tools"
    schemas = json.dumps(model.tool_schemas)
    assert "globex" not in schemas and "u-7f3q" not in schemas
    assert not _property_names(model.tool_schemas) & {"tenant", "user", "role", "principal", "context", "ctx"}
    assert _property_names(model.tool_schemas) >= {"query", "employee_id", "order_id"}


# ----------------------------------------------------------------------------------------- titles


async def test_the_first_turn_names_the_thread(responder: AppResponder) -> None:
    current = turn("can you help me with my March invoice?")
    await collect(responder.respond(current))
    assert current.thread.title == "Can you help me with my"

    titled = turn("another question about invoices", title="Kept")
    await collect(responder.respond(titled))
    assert titled.thread.title == "Kept"


async def test_no_title_without_a_user_message_and_title_failures_do_not_fail_the_turn() -> None:
    class Broken(OfflineTitleModel):
        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("title model down")

    app = create_app()
    app.title_agent = Agent(name="Title writer", model=Broken())  # a Model instance bypasses the provider
    current = turn("hello there", active="General specialist")
    async with _responder(DemoModel(), app=app) as responder:
        events = await collect(responder.respond(current))
    assert answers(events) and current.thread.title is None

    after_tool = turn("hello there", active="General specialist")
    after_tool.input_user_message = None
    async with _responder(DemoModel()) as responder:
        await collect(responder.respond(after_tool))
    assert after_tool.thread.title is None


async def test_an_app_without_a_title_agent_names_no_thread() -> None:
    app = create_app()
    app.title_agent = None
    current = turn("can you help me with my March invoice?")
    async with _responder(DemoModel(), app=app) as responder:
        assert answers(await collect(responder.respond(current)))
    assert current.thread.title is None


# ----------------------------------------------------------------------------------- cancellation


async def _assert_stopped(model: DemoModel) -> None:
    produced = model.deltas_emitted
    await asyncio.sleep(0.3)  # six more deltas at 50 ms if the run were still going
    assert model.deltas_emitted == produced, "the model kept streaming after the client left"
    assert 0 < produced < len(LONG_QUESTION.split())


async def test_closing_the_stream_stops_the_model() -> None:
    model = DemoModel(token_delay_s=0.05)
    async with _responder(model) as responder:
        stream = responder.respond(turn(LONG_QUESTION, active="Tech specialist"))
        seen = 0
        async for event in stream:
            if isinstance(event, ThreadItemUpdatedEvent) and event.update.type.endswith("text_delta"):
                seen += 1
                if seen == 3:
                    break
        await stream.aclose()
        await _assert_stopped(model)


async def test_cancelling_the_consumer_stops_the_model() -> None:
    model = DemoModel(token_delay_s=0.05)
    three_deltas = asyncio.Event()
    responder = await demo_responder(model)

    async def consume() -> None:
        seen = 0
        async for event in responder.respond(turn(LONG_QUESTION, active="Tech specialist")):
            if isinstance(event, ThreadItemUpdatedEvent) and event.update.type.endswith("text_delta"):
                seen += 1
                if seen == 3:
                    three_deltas.set()

    task = asyncio.create_task(consume())
    try:
        async with asyncio.timeout(2):
            await three_deltas.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _assert_stopped(model)
    finally:
        await responder.aclose()


# ----------------------------------------------------------------------------------------- errors


async def test_too_many_turns_is_a_retryable_custom_error() -> None:
    async with _responder(DemoModel(), max_turns=1) as responder:
        with pytest.raises(CustomStreamError) as raised:
            await collect(responder.respond(turn("my invoice is wrong")))
    assert raised.value.allow_retry is True
    assert "too many steps" in raised.value.message
    assert isinstance(raised.value.__cause__, MaxTurnsExceeded)


async def test_a_domain_error_a_tool_raises_ends_the_turn_with_its_message() -> None:
    """`show_errors_to_user`: the SDK wraps the tool's error; the responder unwraps it for the user."""

    @function_tool(failure_error_function=show_errors_to_user)
    async def fetch_record(record_id: str) -> str:
        """Fetch a record."""
        raise NotFound(f"No record {record_id}.")

    model = ScriptedModel([[function_call("fetch_record", {"record_id": "R1"}, call_id="c1")]])
    app = App[None](name="errors", agent=Agent(name="Clerk", tools=[fetch_record]), title_agent=None)
    responder = AppResponder(app, None, ConfiguredModels("local", offline=model))
    try:
        with pytest.raises(NotFound) as raised:
            await collect(responder.respond(turn("fetch R1")))
    finally:
        await responder.aclose()
    assert raised.value.message == "No record R1." and raised.value.retryable is False


async def test_model_errors_propagate() -> None:
    class Failing(DemoModel):
        async def stream_response(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise ConnectionError("provider unreachable")
            yield  # pragma: no cover

    async with _responder(Failing()) as responder:
        with pytest.raises(ConnectionError, match="provider unreachable"):
            await collect(responder.respond(turn("hello", active="General specialist")))


# ---------------------------------------------------------------------------------------- actions


def _action(kind: str, payload: Any, tenant: str = "acme") -> ActionRequest:
    current = turn("x", tenant=tenant)
    return ActionRequest(
        thread=current.thread,
        action=Action(type=kind, payload=payload),
        sender=None,
        principal=Principal(tenant=tenant, user="u1", role="user"),
        locale="en-US",
    )


async def test_show_open_orders_lists_the_tenants_open_orders(responder: AppResponder) -> None:
    events = await collect(responder.action(_action("erp.show_open_orders", {"employee_id": "E1001"})))
    assert isinstance(events[0], ProgressUpdateEvent)
    assert_message_lifecycle(events)
    [text] = answers(events)
    assert text.startswith("Ada Lovelace (E1001) has 2 open orders:")
    assert "SO-1001 · Initech · 1,250.00 USD" in text and "SO-1004" in text
    assert "SO-1002" not in text, "shipped orders are not open"

    globex = answers(
        await collect(responder.action(_action("erp.show_open_orders", {"employee_id": "E1001"}, "globex")))
    )
    assert "Hank Scorpio" in globex[0] and "Springfield Power" in globex[0] and "Initech" not in globex[0]
    nothing = answers(
        await collect(responder.action(_action("erp.show_open_orders", {"employee_id": "E1002"}, "globex")))
    )
    assert nothing == ["Homer Simpson (E1002) has no open orders."]
    stranger = answers(
        await collect(responder.action(_action("erp.show_open_orders", {"employee_id": "E2001"})))
    )
    assert stranger == ["No employee E2001 in your organisation."]


@pytest.mark.parametrize(
    ("kind", "payload", "message"),
    [
        ("erp.delete_everything", {}, "unknown action type 'erp.delete_everything'"),
        ("erp.show_open_orders", {"employee_id": "nope"}, "invalid payload for 'erp.show_open_orders'"),
        ("erp.show_open_orders", None, "invalid payload for 'erp.show_open_orders'"),
    ],
)
async def test_bad_actions_are_invalid_requests_before_anything_streams(
    responder: AppResponder, kind: str, payload: Any, message: str
) -> None:
    """Refused by `check_action` (the conversation calls it before the stream: HTTP 400), and by the
    stream itself, which emits nothing."""
    with pytest.raises(InvalidRequest) as checked:
        responder.check_action(Action(type=kind, payload=payload))
    assert checked.value.message.startswith(message)
    assert checked.value.retryable is False
    with pytest.raises(InvalidRequest) as raised:
        await anext(responder.action(_action(kind, payload)))  # the first step: no event before it
    assert raised.value.message.startswith(message)
    assert raised.value.retryable is False


async def test_sync_action(responder: AppResponder) -> None:
    assert await responder.sync_action(_action("erp.show_open_orders", {"employee_id": "E1001"})) is None
    with pytest.raises(InvalidRequest, match="unknown action type"):
        await responder.sync_action(_action("erp.other", {}))
    with pytest.raises(InvalidRequest, match="employee_id"):
        await responder.sync_action(_action("erp.show_open_orders", {"employee_id": "x"}))
