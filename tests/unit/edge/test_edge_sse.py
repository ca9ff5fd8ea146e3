"""sse.py: the bytes of ChatKit's SSE frames and JSON bodies, compared with ChatKitServer's serializer."""

from __future__ import annotations

import pytest
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    FileAttachment,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)
from pydantic import BaseModel, TypeAdapter

from services.common import codec
from services.edge.sse import encode_event, encode_model, encode_stream_error, event_model
from switchboard.v1 import events_pb2
from tests.unit.edge.fake_agent import TURN_EVENTS

EVENT = TypeAdapter[ThreadStreamEvent](ThreadStreamEvent)


def wire(model: BaseModel) -> bytes:
    """What ChatKitServer writes for a model."""
    return model.model_dump_json(
        by_alias=True, exclude_none=True, context={"exclude_metadata": True}
    ).encode()


@pytest.mark.parametrize("model", TURN_EVENTS, ids=lambda model: model.type)
def test_an_event_frame_is_exactly_chatkit_servers_frame(model: ThreadStreamEvent) -> None:
    frame = encode_event(codec.event_to_proto(model))
    assert frame == b"data: " + wire(model) + b"\n\n"
    assert EVENT.validate_json(frame[len(b"data: ") : -2]) == model


@pytest.mark.parametrize(
    ("index", "text"),
    [
        (0, ""),
        (0, "Hel"),
        (3, "héllo 👋 — ünïcode"),
        (1, 'quotes " \\ and\nnew\tlines\u0000'),
        (0, "</script>"),
    ],
)
def test_the_text_delta_fast_path_equals_the_generic_codec_path(index: int, text: str) -> None:
    model = ThreadItemUpdatedEvent(
        item_id="msg_a", update=AssistantMessageContentPartTextDelta(content_index=index, delta=text)
    )
    proto = codec.event_to_proto(model)
    assert event_model(proto) == codec.event_from_proto(proto) == model
    assert encode_event(proto) == b"data: " + wire(codec.event_from_proto(proto)) + b"\n\n"
    assert encode_event(proto) == b"data: " + wire(model) + b"\n\n"


def test_json_bodies_never_carry_attachment_metadata() -> None:
    attachment = FileAttachment(
        id="atc_1", name="a.txt", mime_type="text/plain", metadata={"bucket": "secret"}
    )
    body = encode_model(attachment)
    assert body == wire(attachment)
    assert b"secret" not in body
    assert b'"metadata"' not in body


def test_json_bodies_omit_nulls_and_keep_defaults() -> None:
    body = encode_model(TURN_EVENTS[0])  # thread.created: title set, no allowed_image_domains
    assert b"null" not in body
    assert b'"items":{"data":[],"has_more":false}' in body


@pytest.mark.parametrize("allow_retry", [True, False])
def test_the_stream_error_frame_is_chatkits_generic_error(allow_retry: bool) -> None:
    frame = encode_stream_error(allow_retry=allow_retry)
    expected = b'{"type":"error","code":"stream.error","allow_retry":%s}' % (
        b"true" if allow_retry else b"false"
    )
    assert frame == b"data: " + expected + b"\n\n"
    event = EVENT.validate_json(frame[6:-2])
    assert event.type == "error"
    assert event.allow_retry is allow_retry


def test_an_event_without_a_kind_is_refused() -> None:
    with pytest.raises(codec.CodecError):
        encode_event(events_pb2.ThreadStreamEvent())
