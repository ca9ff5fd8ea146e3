"""The ChatKit <-> protobuf codec is lossless for every item, update and event type."""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest
from chatkit.actions import ActionConfig
from chatkit.types import (
    Annotation,
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartAnnotationAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    AttachmentUploadDescriptor,
    ClientEffectEvent,
    ClientToolCallItem,
    ClosedStatus,
    CustomSummary,
    CustomTask,
    DurationSummary,
    EndOfTurnItem,
    EntitySource,
    ErrorEvent,
    FileAttachment,
    FileSource,
    FileTask,
    GeneratedImage,
    GeneratedImageItem,
    GeneratedImageUpdated,
    HiddenContextItem,
    ImageAttachment,
    ImageTask,
    InferenceOptions,
    LockedStatus,
    NoticeEvent,
    Page,
    ProgressUpdateEvent,
    SDKHiddenContextItem,
    SearchTask,
    StreamOptions,
    StreamOptionsEvent,
    StructuredInputAnswer,
    StructuredInputFreeform,
    StructuredInputItem,
    StructuredInputMultipleChoice,
    StructuredInputMultipleChoiceOption,
    TaskItem,
    ThoughtTask,
    Thread,
    ThreadCreatedEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
    ToolChoice,
    URLSource,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
    WidgetItem,
    WidgetRootUpdated,
    WidgetStreamingTextValueDelta,
    WorkflowItem,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)
from chatkit.types import Workflow as ChatKitWorkflow
from chatkit.widgets import Badge, Button, Card, Text
from pydantic import BaseModel

from services.common import codec
from switchboard.v1 import chat_pb2, events_pb2

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def wire(model: BaseModel) -> str:
    """Exactly what ChatKitServer puts after `data: `."""
    return model.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})


def _items() -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        card = Card(
            children=[
                Text(value="Ada Lovelace", id="name", size="sm"),
                Badge(label="active", color="success"),
                Button(
                    label="Show open orders", onClickAction=ActionConfig(type="erp.orders", payload={"id": 5})
                ),
            ]
        )
    base = {"thread_id": "thr_1", "created_at": NOW}
    return [
        UserMessageItem(
            id="msg_u",
            **base,
            content=[
                UserMessageTextContent(text="hi"),
                UserMessageTagContent(id="a1", text="Doc", data={"k": "v"}, group="G", interactive=True),
            ],
            attachments=[
                ImageAttachment(
                    id="atc_1",
                    name="p.png",
                    mime_type="image/png",
                    preview_url="https://x.test/p",  # type: ignore[arg-type]
                    thread_id="thr_1",
                    upload_descriptor=AttachmentUploadDescriptor(
                        url="https://u.test/x",  # type: ignore[arg-type]
                        method="PUT",
                        headers={"content-type": "image/png"},
                    ),
                ),
                FileAttachment(id="atc_2", name="f.txt", mime_type="text/plain"),
            ],
            quoted_text="q",
            inference_options=InferenceOptions(tool_choice=ToolChoice(id="search"), model="m"),
        ),
        AssistantMessageItem(
            id="msg_a",
            **base,
            content=[
                AssistantMessageContent(
                    text="Hello",
                    annotations=[
                        Annotation(source=URLSource(title="A", url="https://a"), index=3),
                        Annotation(source=EntitySource(title="E", id="e", icon="map-pin", data={"x": 1})),
                        Annotation(source=FileSource(title="F", filename="f.pdf")),
                    ],
                )
            ],
        ),
        ClientToolCallItem(
            id="tc_1", **base, call_id="c", name="n", arguments={"a": 1}, output=[1, "x"], status="completed"
        ),
        ClientToolCallItem(id="tc_2", **base, call_id="c", name="n", arguments={}),
        WidgetItem(id="msg_w", **base, widget=card, copy_text="Ada"),
        GeneratedImageItem(id="img_1", **base, image=GeneratedImage(id="i", url="https://i")),
        GeneratedImageItem(id="img_2", **base),
        StructuredInputItem(
            id="msg_s",
            **base,
            inputs=[
                StructuredInputMultipleChoice(
                    id="p",
                    question="Priority?",
                    options=[StructuredInputMultipleChoiceOption(value="Low")],
                    answer=StructuredInputAnswer(values=["Low"]),
                ),
                StructuredInputFreeform(id="n", question="Notes?", description="d"),
            ],
        ),
        WorkflowItem(
            id="wf_1",
            **base,
            workflow=ChatKitWorkflow(
                type="custom",
                tasks=[
                    CustomTask(title="Search", icon="search", status_indicator="loading"),
                    SearchTask(queries=["q"], sources=[URLSource(title="X", url="https://x")]),
                    ThoughtTask(content="hmm"),
                    FileTask(sources=[FileSource(title="f", filename="f")]),
                    ImageTask(),
                ],
                summary=CustomSummary(title="Done", icon="check"),
            ),
        ),
        WorkflowItem(
            id="wf_2",
            **base,
            workflow=ChatKitWorkflow(type="reasoning", tasks=[], summary=DurationSummary(duration=3)),
        ),
        TaskItem(id="tsk_1", **base, task=CustomTask(content="c")),
        HiddenContextItem(id="hc_1", **base, content={"a": [1, "b", None, 2.5]}),
        SDKHiddenContextItem(id="shcx_1", **base, content="The user cancelled"),
        EndOfTurnItem(id="eot_1", **base),
    ]


def _events() -> list[Any]:
    items = _items()
    return [
        *(ThreadItemDoneEvent(item=item) for item in items),
        ThreadItemAddedEvent(item=items[1]),
        ThreadItemReplacedEvent(item=items[7]),
        ThreadCreatedEvent(
            thread=Thread(id="thr_1", created_at=NOW, items=Page(), status=LockedStatus(reason="r"))
        ),
        ThreadUpdatedEvent(
            thread=Thread(
                id="thr_1",
                title="T1",
                created_at=NOW,
                items=Page(data=items[:2], has_more=True, after="msg_a"),
                allowed_image_domains=["img.example.com"],
                status=ClosedStatus(),
            )
        ),
        ThreadItemUpdatedEvent(
            item_id="m", update=AssistantMessageContentPartTextDelta(content_index=0, delta="Hé")
        ),
        ThreadItemUpdatedEvent(
            item_id="m",
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        ),
        ThreadItemUpdatedEvent(
            item_id="m",
            update=AssistantMessageContentPartAnnotationAdded(
                content_index=0,
                annotation_index=0,
                annotation=Annotation(source=URLSource(title="A", url="https://a")),
            ),
        ),
        ThreadItemUpdatedEvent(
            item_id="m",
            update=AssistantMessageContentPartDone(
                content_index=1, content=AssistantMessageContent(text="x")
            ),
        ),
        ThreadItemUpdatedEvent(
            item_id="m", update=WidgetStreamingTextValueDelta(component_id="c", delta="d", done=True)
        ),
        ThreadItemUpdatedEvent(item_id="m", update=WidgetRootUpdated(widget=items[4].widget)),
        ThreadItemUpdatedEvent(
            item_id="m", update=WorkflowTaskAdded(task_index=0, task=CustomTask(title="x"))
        ),
        ThreadItemUpdatedEvent(
            item_id="m", update=WorkflowTaskUpdated(task_index=2, task=ThoughtTask(content="y"))
        ),
        ThreadItemUpdatedEvent(
            item_id="m",
            update=GeneratedImageUpdated(image=GeneratedImage(id="i", url="https://i"), progress=0.5),
        ),
        ThreadItemRemovedEvent(item_id="x"),
        StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True)),
        ProgressUpdateEvent(icon="search", text="Searching"),
        ProgressUpdateEvent(text="no icon"),
        ClientEffectEvent(name="fx", data={"a": 1}),
        ErrorEvent(code="stream.error", allow_retry=True),
        ErrorEvent(message="custom failure"),
        NoticeEvent(level="warning", message="**note**", title="t"),
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: f"{e.type}")
def test_every_event_round_trips_to_the_same_wire_bytes(event: ThreadStreamEvent) -> None:
    message = codec.event_to_proto(event)
    again = codec.event_from_proto(events_pb2.ThreadStreamEvent.FromString(message.SerializeToString()))
    assert wire(again) == wire(event)


def test_every_chatkit_item_and_event_type_is_covered() -> None:
    import typing

    from chatkit.types import ThreadItem

    item_types = {m.model_fields["type"].default for m in typing.get_args(typing.get_args(ThreadItem)[0])}
    event_types = {
        m.model_fields["type"].default for m in typing.get_args(typing.get_args(ThreadStreamEvent)[0])
    }
    assert item_types == {item.type for item in _items()}
    assert event_types == {event.type for event in _events()}


def test_free_form_objects_keep_their_values_but_not_key_order() -> None:
    data = {"zeta": 1, "alpha": {"b": [1, 2.5, None, True], "a": "x"}, "big": 2**40}
    event = ClientEffectEvent(name="fx", data=data)
    again = codec.event_from_proto(codec.event_to_proto(event))
    assert json.loads(wire(again)) == json.loads(wire(event))
    assert isinstance(again.data["big"], int)


def test_unknown_type_is_refused() -> None:
    with pytest.raises(codec.CodecError, match="no kind"):
        codec.to_proto({"type": "thread.item.teleported"}, events_pb2.ThreadStreamEvent())


def test_chatkit_request_params_fill_the_rpc_requests_by_name() -> None:
    params = {
        "thread_id": "thr_1",
        "item_id": "msg_1",
        "action": {"type": "erp.orders", "payload": {"employee_id": "E1001"}},
    }
    request = codec.to_proto(params, chat_pb2.CustomActionRequest())
    assert request.thread_id == "thr_1"
    assert request.item_id == "msg_1"
    assert request.action.type == "erp.orders"
    assert codec.json_value(request.action.payload) == {"employee_id": "E1001"}
