"""`StreamTranslator` event by event: message lifecycle, end detection, tool events, handoffs."""

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
)
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputText,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from services.agent_service.agents.stream import StreamTranslator
from services.agent_service.agents.team import build_team
from services.agent_service.models.local import LocalDemoModel
from services.agent_service.models.responses import ResponseStream
from services.agent_service.turn import ACTIVE_AGENT_KEY
from tests.unit.agent_service.agent_support import answers, assert_message_lifecycle, check_wire

TEAM = build_team(LocalDemoModel())


def _translator() -> tuple[StreamTranslator, ThreadMetadata]:
    thread = ThreadMetadata(id="thr_1", created_at=datetime.now(UTC), metadata={"keep": 1})
    return StreamTranslator(thread, TEAM), thread


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


def test_handoffs_to_specialists_are_visible_and_remembered() -> None:
    translator, thread = _translator()
    original = thread.metadata
    handoff = HandoffOutputItem(
        agent=TEAM.router,
        raw_item={"type": "function_call_output", "call_id": "c1", "output": "{}"},  # type: ignore[typeddict-item]
        source_agent=TEAM.router,
        target_agent=TEAM.specialists["tech"],
    )
    events = _run(translator, [RunItemStreamEvent(name="handoff_occured", item=handoff)])
    [done] = events
    assert isinstance(done, ThreadItemDoneEvent) and done.item.type == "workflow"
    assert thread.metadata == {"keep": 1, ACTIVE_AGENT_KEY: "tech"}
    assert original == {"keep": 1}, "a new dict, so the conversation sees the change"

    stranger = HandoffOutputItem(
        agent=TEAM.router,
        raw_item={"type": "function_call_output", "call_id": "c2", "output": "{}"},  # type: ignore[typeddict-item]
        source_agent=TEAM.router,
        target_agent=Agent(name="Someone else"),
    )
    assert _run(translator, [RunItemStreamEvent(name="handoff_occured", item=stranger)]) == []
    assert thread.metadata[ACTIVE_AGENT_KEY] == "tech"
