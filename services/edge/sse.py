"""ChatKit wire bytes: protobuf stream events -> `data: <json>\\n\\n` frames, models -> JSON bodies.

Both functions serialise exactly as `chatkit.server.ChatKitServer._serialize` does
(`model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})`), so null
fields are omitted, defaults are kept and `Attachment.metadata` never leaves the server.

`encode_event` runs once per token delta, so it stays lean: one proto -> model conversion, one
serialisation straight to bytes by pydantic-core, and one formatting into the frame; there is no
intermediate `dict` -> `json.dumps` round trip. Text deltas (the bulk of any stream) skip the
codec's generic descriptor walk and pydantic altogether: their frame is a fixed byte template
around the two strings, each escaped by pydantic-core's own JSON string encoder
(`pydantic_core.to_json`), so the bytes are exactly what `model_dump_json` writes for the same
event (the keys in the models' field order; tests compare both paths on awkward strings). That
is ~1.5 us per delta instead of ~7 us for building the model and serialising it (~25 us through
the generic codec). Every other event goes through `codec.event_from_proto`. `encode_events` joins
the frames of a batch of events (one message of `ChatService.Stream`) for one write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from chatkit.errors import ErrorCode
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    ErrorEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from services.common import codec
from switchboard.v1 import events_pb2

# ChatKitServer's serialisation context: never send `Attachment.metadata` to clients.
_CONTEXT: Final[dict[str, Any]] = {"exclude_metadata": True}
_PREFIX: Final = b"data: "
_SUFFIX: Final = b"\n\n"
_TEXT_DELTA: Final = "assistant_message_content_part_text_delta"
_DELTA_HEAD: Final = b'data: {"type":"thread.item.updated","item_id":'
_DELTA_MIDDLE: Final = b',"update":{"type":"assistant_message.content_part.text_delta","content_index":'
_DELTA_TEXT: Final = b',"delta":'
_DELTA_TAIL: Final = b"}}\n\n"


def encode_model(model: BaseModel) -> bytes:
    """The JSON bytes of a chatkit model, as ChatKitServer sends it (JSON bodies and SSE payloads).

    `model_dump_json` is `__pydantic_serializer__.to_json(...).decode()`; calling `to_json` directly
    yields the same bytes without the bytes -> str -> bytes round trip.
    """
    return model.__pydantic_serializer__.to_json(model, by_alias=True, exclude_none=True, context=_CONTEXT)


def event_model(event: events_pb2.ThreadStreamEvent) -> ThreadStreamEvent:
    """The chatkit model of a protobuf stream event (`codec.event_from_proto`, with a delta fast path)."""
    if event.WhichOneof("kind") == "thread_item_updated":
        updated = event.thread_item_updated
        if updated.update.WhichOneof("kind") == _TEXT_DELTA:
            delta = updated.update.assistant_message_content_part_text_delta
            return ThreadItemUpdatedEvent(
                item_id=updated.item_id,
                update=AssistantMessageContentPartTextDelta(
                    content_index=delta.content_index, delta=delta.delta
                ),
            )
    return codec.event_from_proto(event)


def encode_text_delta(item_id: str, content_index: int, delta: str) -> bytes:
    """The SSE frame of an `assistant_message.content_part.text_delta` update, byte for byte as
    `encode_model(ThreadItemUpdatedEvent(...))` frames it (see the module docstring)."""
    return b"%b%b%b%d%b%b%b" % (
        _DELTA_HEAD,
        to_json(item_id),
        _DELTA_MIDDLE,
        content_index,
        _DELTA_TEXT,
        to_json(delta),
        _DELTA_TAIL,
    )


def encode_event(event: events_pb2.ThreadStreamEvent) -> bytes:
    """One SSE frame for a protobuf stream event: `b"data: " + json + b"\\n\\n"`.

    Raises `codec.CodecError` or `pydantic.ValidationError` when the event is not a valid ChatKit
    event (for example, no `kind` set); the edge treats that as an internal error of the agent.
    """
    if event.WhichOneof("kind") == "thread_item_updated":
        updated = event.thread_item_updated
        if updated.update.WhichOneof("kind") == _TEXT_DELTA:
            delta = updated.update.assistant_message_content_part_text_delta
            return encode_text_delta(updated.item_id, delta.content_index, delta.delta)
    return b"%b%b%b" % (_PREFIX, encode_model(event_model(event)), _SUFFIX)


def encode_events(events: Iterable[events_pb2.ThreadStreamEvent]) -> tuple[bytes, Exception | None]:
    """The SSE frames of consecutive stream events (a batch of `ChatService.Stream`), joined for one
    write, and None; or, at the first invalid event (see `encode_event`), the frames of the events
    before it and the error."""
    frames: list[bytes] = []
    try:
        for event in events:
            frames.append(encode_event(event))
    except (codec.CodecError, ValidationError) as error:
        return b"".join(frames), error
    return b"".join(frames), None


def encode_stream_error(*, allow_retry: bool) -> bytes:
    """The final frame of a stream that failed after it started.

    The `stream.error` code makes the ChatKit UI show its own localised text (as ChatKitServer does
    for unexpected exceptions), so no internal detail reaches the browser; `allow_retry` decides
    whether the UI offers a retry button.
    """
    event = ErrorEvent(code=ErrorCode.STREAM_ERROR, allow_retry=allow_retry)
    return _PREFIX + encode_model(event) + _SUFFIX
