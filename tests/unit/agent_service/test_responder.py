"""`AgentResponder` end to end on the local demo model: routing, tools, history, context, titles,
cancellation, errors and widget actions. Every event is checked against chatkit's wire models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import MaxTurnsExceeded
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
from pydantic import ValidationError

from services.agent_service.agents.erp import ErpDirectory
from services.agent_service.agents.responder import AgentResponder, create_responder
from services.agent_service.models.factory import ModelChoice
from services.agent_service.models.local import LocalDemoModel, LocalTitleModel
from services.agent_service.turn import ACTIVE_AGENT_KEY, ActionRequest
from services.common.auth import Principal
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    settings,
    text_deltas,
    turn,
    widgets,
    workflows,
)

LONG_QUESTION = "Please explain in detail how I can reset my password after a login error"


@pytest.fixture
async def erp() -> AsyncIterator[ErpDirectory]:
    directory = await ErpDirectory.open(":memory:")
    yield directory
    await directory.aclose()


@pytest.fixture
async def responder() -> AsyncIterator[AgentResponder]:
    instance = await create_responder(settings())
    yield instance
    await instance.aclose()


def _responder(erp: ErpDirectory, model: Any, title_model: Any = None, **overrides: Any) -> AgentResponder:
    choice = ModelChoice(
        model=model, title_model=title_model or LocalTitleModel(), provider="local", is_local=True
    )
    return AgentResponder(settings(**overrides), choice, erp)


# ---------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    ("text", "key", "label", "opening"),
    [
        ("I was charged twice on my invoice, can I get a refund?", "billing", "Billing", "Billing here"),
        ("The app shows an error and crashes when I log in", "tech", "Tech", "Tech support here"),
        ("What can you help me with today?", "general", "General", "Happy to help"),
    ],
)
async def test_router_hands_off_visibly_and_the_specialist_answers(
    responder: AgentResponder, text: str, key: str, label: str, opening: str
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
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == key

    assert_message_lifecycle(events)
    [answer] = answers(events)
    assert answer.startswith(f"{opening} (tenant acme).")
    assert "".join(text_deltas(events)) == answer and len(text_deltas(events)) > 10
    assert events.index(next(e for e in events if isinstance(e, ThreadItemAddedEvent))) > events.index(
        next(e for e in events if isinstance(e, ThreadItemDoneEvent))
    ), "the routing trace comes before the answer"
    ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert len(ids) == len(set(ids)) and all("__fake_id__" not in i for i in ids)


async def test_the_active_specialist_continues_without_a_second_handoff(responder: AgentResponder) -> None:
    current = turn("My invoice is wrong", "Billing here…", "Thanks, one more thing.", active="billing")
    events = await collect(responder.respond(current))
    assert workflows(events) == []
    [answer] = answers(events)
    assert answer.startswith("Billing here") and "1 earlier message" in answer
    assert current.thread.metadata == {ACTIVE_AGENT_KEY: "billing"}


async def test_a_specialist_hands_off_to_a_peer_when_the_topic_changes(responder: AgentResponder) -> None:
    current = turn("The app crashes at login", active="billing")
    events = await collect(responder.respond(current))
    [workflow] = workflows(events)
    assert workflow.workflow.tasks[0].title == "Routed to the Tech specialist"  # type: ignore[union-attr]
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "tech"
    assert answers(events)[0].startswith("Tech support here")


async def test_an_unknown_active_agent_starts_with_the_router(responder: AgentResponder) -> None:
    current = turn("Hello", active="sales")
    events = await collect(responder.respond(current))
    assert len(workflows(events)) == 1
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "general"


# ------------------------------------------------------------------------------------------- ERP


async def test_erp_answers_are_tenant_scoped_with_progress_and_a_card(responder: AgentResponder) -> None:
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


async def test_other_tenants_ids_are_not_found_and_hr_sees_salaries(responder: AgentResponder) -> None:
    missing = await collect(responder.respond(turn("Who is E2001?", tenant="acme")))
    assert answers(missing) == ["No employee E2001 in your organisation."]
    assert widgets(missing) == []
    hr = await collect(responder.respond(turn("Who is E1001?", role="hr")))
    assert "Salary: 128,000 USD a year." in answers(hr)[0]


async def test_tool_events_keep_item_order_with_a_responses_style_model(erp: ErpDirectory) -> None:
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
    events = await collect(_responder(erp, model).respond(turn("who runs engineering?", active="general")))
    assert answers(events) == ["Let me check.", "She runs Engineering."]
    done = [e.item.type for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert done == ["assistant_message", "widget", "assistant_message"]
    first_done = next(i for i, e in enumerate(events) if isinstance(e, ThreadItemDoneEvent))
    assert first_done < next(i for i, e in enumerate(events) if isinstance(e, ProgressUpdateEvent))
    ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert len(set(ids)) == 3 and "scripted-message" not in ids
    assert_message_lifecycle(events)


# --------------------------------------------------------------------------- history and context


async def test_history_reaches_the_model(responder: AgentResponder) -> None:
    events = await collect(
        responder.respond(
            turn("Hi, my name is Ada.", "Nice to meet you.", "What is my name?", active="general")
        )
    )
    assert answers(events) == ["Your name is Ada."]


class RecordingModel(LocalDemoModel):
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


async def test_caller_context_reaches_instructions_but_never_tool_schemas(erp: ErpDirectory) -> None:
    model = RecordingModel()
    current = turn("Who is E1001?", tenant="globex", user_id="u-7f3q", role="hr", locale="fr-FR")
    events = await collect(_responder(erp, model).respond(current))
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


async def test_the_first_turn_names_the_thread(responder: AgentResponder) -> None:
    current = turn("can you help me with my March invoice?")
    await collect(responder.respond(current))
    assert current.thread.title == "Can you help me with my"

    titled = turn("another question about invoices", title="Kept")
    await collect(responder.respond(titled))
    assert titled.thread.title == "Kept"


async def test_no_title_without_a_user_message_and_title_failures_do_not_fail_the_turn(
    erp: ErpDirectory,
) -> None:
    class Broken(LocalTitleModel):
        async def get_response(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("title model down")

    responder = _responder(erp, LocalDemoModel(), Broken())
    current = turn("hello there", active="general")
    events = await collect(responder.respond(current))
    assert answers(events) and current.thread.title is None

    after_tool = turn("hello there", active="general")
    after_tool.input_user_message = None
    await collect(_responder(erp, LocalDemoModel()).respond(after_tool))
    assert after_tool.thread.title is None


# ----------------------------------------------------------------------------------- cancellation


async def _assert_stopped(model: LocalDemoModel) -> None:
    produced = model.deltas_emitted
    await asyncio.sleep(0.3)  # six more deltas at 50 ms if the run were still going
    assert model.deltas_emitted == produced, "the model kept streaming after the client left"
    assert 0 < produced < len(LONG_QUESTION.split())


async def test_closing_the_stream_stops_the_model(erp: ErpDirectory) -> None:
    model = LocalDemoModel(token_delay_s=0.05)
    stream = _responder(erp, model).respond(turn(LONG_QUESTION, active="tech"))
    seen = 0
    async for event in stream:
        if isinstance(event, ThreadItemUpdatedEvent) and event.update.type.endswith("text_delta"):
            seen += 1
            if seen == 3:
                break
    await stream.aclose()
    await _assert_stopped(model)


async def test_cancelling_the_consumer_stops_the_model(erp: ErpDirectory) -> None:
    model = LocalDemoModel(token_delay_s=0.05)
    three_deltas = asyncio.Event()

    async def consume() -> None:
        seen = 0
        async for event in _responder(erp, model).respond(turn(LONG_QUESTION, active="tech")):
            if isinstance(event, ThreadItemUpdatedEvent) and event.update.type.endswith("text_delta"):
                seen += 1
                if seen == 3:
                    three_deltas.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await three_deltas.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _assert_stopped(model)


# ----------------------------------------------------------------------------------------- errors


async def test_too_many_turns_is_a_retryable_custom_error(erp: ErpDirectory) -> None:
    responder = _responder(erp, LocalDemoModel(), max_turns=1)
    with pytest.raises(CustomStreamError) as raised:
        await collect(responder.respond(turn("my invoice is wrong")))
    assert raised.value.allow_retry is True
    assert "too many steps" in raised.value.message
    assert isinstance(raised.value.__cause__, MaxTurnsExceeded)


async def test_model_errors_propagate(erp: ErpDirectory) -> None:
    class Failing(LocalDemoModel):
        async def stream_response(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            raise ConnectionError("provider unreachable")
            yield  # pragma: no cover

    with pytest.raises(ConnectionError, match="provider unreachable"):
        await collect(_responder(erp, Failing()).respond(turn("hello", active="general")))


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


async def test_show_open_orders_lists_the_tenants_open_orders(responder: AgentResponder) -> None:
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
        ("erp.delete_everything", {}, "Unknown action"),
        ("erp.show_open_orders", {"employee_id": "nope"}, "Invalid payload"),
        ("erp.show_open_orders", None, "Invalid payload"),
    ],
)
async def test_bad_actions_raise_custom_stream_errors(
    responder: AgentResponder, kind: str, payload: Any, message: str
) -> None:
    with pytest.raises(CustomStreamError) as raised:
        await collect(responder.action(_action(kind, payload)))
    assert raised.value.message.startswith(message)
    assert raised.value.allow_retry is False


async def test_sync_action(responder: AgentResponder) -> None:
    assert await responder.sync_action(_action("erp.show_open_orders", {"employee_id": "E1001"})) is None
    with pytest.raises(ValueError, match="Unknown action"):
        await responder.sync_action(_action("erp.other", {}))
    with pytest.raises(ValidationError):
        await responder.sync_action(_action("erp.show_open_orders", {"employee_id": "x"}))
