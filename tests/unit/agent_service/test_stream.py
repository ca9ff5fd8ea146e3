"""`StreamTranslator` event by event: message lifecycle, end detection, tool events, handoffs; and
`find_agent`, which resumes the agent a handoff went to."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents import Agent, HandoffOutputItem, RawResponsesStreamEvent, RunItemStreamEvent
from chatkit.types import (
    ProgressUpdateEvent,
    ThreadItemDoneEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    WidgetItem,
    WorkflowItem,
)
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from services.agent_service.agents.stream import StreamTranslator, find_agent
from services.agent_service.turn import ACTIVE_AGENT_KEY
from switchboard.app._responses import ResponseStream
from switchboard.demo.team import build_team
from tests.unit.agent_service.agent_support import answers, assert_message_lifecycle, check_wire

ROUTER = build_team()


def _agent(name: str) -> Agent[Any]:
    agent = find_agent(ROUTER, name)
    assert agent is not None, name
    return agent


def _translator() -> tuple[StreamTranslator, ThreadMetadata]:
    thread = ThreadMetadata(id="thr_1", created_at=datetime.now(UTC), metadata={"keep": 1})
    return StreamTranslator(thread), thread


def _raw(data: Any) -> RawResponsesStreamEvent:
    return RawResponsesStreamEvent(data=data)


def _delta(text: str) -> RawResponsesStreamEvent:
    return _raw(
        ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id="__fake_id__",
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
            sequence_number=0,
        )
    )


def _ends() -> list[RawResponsesStreamEvent]:
    part = ResponseOutputText(type="output_text", text="x", annotations=[])
    return [
        _raw(
            ResponseTextDoneEvent(
                type="response.output_text.done",
                item_id="__fake_id__",
                output_index=0,
                content_index=0,
                text="x",
                logprobs=[],
                sequence_number=1,
            )
        ),
        _raw(
            ResponseContentPartDoneEvent(
                type="response.content_part.done",
                item_id="__fake_id__",
                output_index=0,
                content_index=0,
                part=part,
                sequence_number=2,
            )
        ),
        _raw(ResponseStream().completed([])),
    ]


def _run(translator: StreamTranslator, events: list[Any]) -> list[ThreadStreamEvent]:
    out: list[ThreadStreamEvent] = []
    for event in events:
        if isinstance(event, RawResponsesStreamEvent | RunItemStreamEvent):
            out.extend(translator.on_sdk_event(event))
        else:
            out.extend(translator.on_tool_event(event))
    out.extend(translator.finish())
    for event in out:
        check_wire(event)
    return out


def test_a_message_is_added_once_and_closed_once_whatever_end_events_follow() -> None:
    translator, _ = _translator()
    events = _run(translator, [_delta(""), _delta("Hel"), _delta("lo"), *_ends()])
    assert_message_lifecycle(events)
    assert answers(events) == ["Hello"]
    assert [e.type for e in events].count("thread.item.done") == 1


def test_two_messages_in_a_run_get_two_fresh_ids() -> None:
    translator, _ = _translator()
    events = _run(translator, [_delta("one"), *_ends(), _delta("two"), *_ends()])
    assert answers(events) == ["one", "two"]
    ids = {e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)}
    assert len(ids) == 2 and "__fake_id__" not in ids


def test_no_end_events_still_closes_the_message_at_finish() -> None:
    translator, _ = _translator()
    events = _run(translator, [_delta("partial")])
    assert_message_lifecycle(events)
    assert answers(events) == ["partial"]


def test_only_end_events_produce_nothing() -> None:
    translator, _ = _translator()
    completed = _raw(ResponseCompletedEvent.model_validate(ResponseStream().completed([]).model_dump()))
    assert _run(translator, [*_ends(), completed]) == []


def test_a_tool_item_closes_the_open_message_first_but_progress_does_not() -> None:
    translator, _ = _translator()
    widget = WidgetItem.model_validate(
        {
            "id": "msg_w",
            "thread_id": "thr_1",
            "created_at": datetime.now(UTC),
            "widget": {"type": "Card", "children": []},
        }
    )
    progress = ProgressUpdateEvent(text="working")
    events = _run(
        translator, [_delta("Let me check"), progress, ThreadItemDoneEvent(item=widget), _delta("ok")]
    )
    kinds = [(e.type, getattr(getattr(e, "item", None), "type", None)) for e in events]
    message_done = kinds.index(("thread.item.done", "assistant_message"))
    assert kinds.index(("progress_update", None)) < message_done < kinds.index(("thread.item.done", "widget"))
    assert answers(events) == ["Let me check", "ok"]
    assert_message_lifecycle(events)


def _handoff(target: Agent[Any], call_id: str) -> RunItemStreamEvent:
    item = HandoffOutputItem(
        agent=ROUTER,
        raw_item={"type": "function_call_output", "call_id": call_id, "output": "{}"},  # type: ignore[typeddict-item]
        source_agent=ROUTER,
        target_agent=target,
    )
    return RunItemStreamEvent(name="handoff_occured", item=item)


def test_handoffs_to_specialists_are_visible_and_remembered() -> None:
    translator, thread = _translator()
    original = thread.metadata
    events = _run(translator, [_handoff(_agent("Tech specialist"), "c1")])
    [done] = events
    assert isinstance(done, ThreadItemDoneEvent) and isinstance(done.item, WorkflowItem)
    assert done.item.workflow.tasks[0].title == "Routed to the Tech specialist"  # type: ignore[union-attr]
    assert thread.metadata == {"keep": 1, ACTIVE_AGENT_KEY: "Tech specialist"}, "the agent's name"
    assert original == {"keep": 1}, "a new dict, so the conversation sees the change"

    # The translator knows no graph: any handoff target is shown and remembered by its name. The next
    # turn looks the name up in the app's graph (`find_agent`); a name it does not know starts over
    # with the starting agent.
    [again] = _run(translator, [_handoff(Agent(name="Someone else"), "c2")])
    assert isinstance(again, ThreadItemDoneEvent) and isinstance(again.item, WorkflowItem)
    assert thread.metadata[ACTIVE_AGENT_KEY] == "Someone else"
    assert find_agent(ROUTER, thread.metadata[ACTIVE_AGENT_KEY]) is None


def test_find_agent_walks_the_handoff_graph_by_name() -> None:
    assert find_agent(ROUTER, "Router") is ROUTER
    billing, tech, general = (_agent(f"{label} specialist") for label in ("Billing", "Tech", "General"))
    assert len({id(billing), id(tech), id(general)}) == 3
    assert find_agent(tech, "Billing specialist") is billing, "specialists reach their peers"
    assert find_agent(tech, "Router") is None, "and never hand back to the router"
    for unknown in ("billing", "", None, 42, "Nobody"):
        assert find_agent(ROUTER, unknown) is None
