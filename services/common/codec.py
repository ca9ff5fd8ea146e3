"""Lossless conversion between openai-chatkit's pydantic models and Switchboard's protobuf messages.

The protos mirror `chatkit.types` by a fixed convention (see protos/switchboard/v1/thread.proto), so one
generic walker converts in both directions instead of a hand-written function per type:

- a ChatKit union (`{"type": "thread.item.done", ...}`) is a message with a `oneof kind`; the oneof
  field is the type with dots turned into underscores, and keys that the outer message has (an
  item's `id`, `thread_id`, `created_at`) stay on the outer message;
- a `type` key on a message without such a field is a fixed ChatKit literal (`output_text`,
  `annotation`) that pydantic restores from its default;
- google.protobuf.Struct/Value carry open-ended JSON; Timestamp carries datetimes (UTC).

What does not survive the trip: the key order inside free-form JSON objects (tag `data`, tool
`arguments`, effect `data`; a Struct is a map), and the difference between an empty and an unset
`allowed_image_domains`. Typed fields, including every widget field (pydantic re-validates widgets),
come back byte-identical.

The agent service turns the events its agents produce into protobuf here, and the edge turns them
back into `chatkit.types` models to serialise them exactly as `ChatKitServer` does.
"""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from chatkit.types import (
    Attachment,
    Thread,
    ThreadItem,
    ThreadItemUpdate,
    ThreadStreamEvent,
)
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from pydantic import BaseModel, TypeAdapter

from switchboard.v1 import events_pb2, thread_pb2

_M = TypeVar("_M", bound=Message)

# Keys that ChatKit's own serializer never sends to clients, so the public API does not carry them.
_SERVER_ONLY_KEYS: Final = frozenset({"metadata", "preview"})
_ONEOF: Final = "kind"
_SUMMARY: Final = "switchboard.v1.WorkflowSummary"
_THREAD: Final = "switchboard.v1.Thread"
# Integers survive a float64 round trip exactly up to 2**53, as in JSON itself.
_MAX_SAFE_INT: Final = 2**53


def _dotted_type_names() -> dict[str, str]:
    """Map oneof field names back to ChatKit's dotted type names (`thread_item_done` -> ...)."""
    names: dict[str, str] = {}
    for union in (ThreadStreamEvent, ThreadItemUpdate):
        for model in typing.get_args(typing.get_args(union)[0] if union is ThreadStreamEvent else union):
            literal = model.model_fields["type"].default
            names[literal.replace(".", "_")] = literal
    return names


_DOTTED: Final = _dotted_type_names()


class CodecError(ValueError):
    """The data does not fit the protobuf schema (an unknown type or field)."""


# --------------------------------------------------------------------------- JSON-like -> protobuf


def _fill(message: Message, data: dict[str, Any]) -> None:
    descriptor: Any = message.DESCRIPTOR
    oneof = descriptor.oneofs_by_name.get(_ONEOF)
    if oneof is not None:
        kind = data.get("type")
        if descriptor.full_name == _SUMMARY:
            # ChatKit tells its two workflow summaries apart by their fields, not by a type.
            kind = "duration" if "duration" in data else "custom"
        if not isinstance(kind, str):
            raise CodecError(f"{descriptor.name} needs a string 'type'")
        field_name = kind.replace(".", "_")
        if not any(f.name == field_name for f in oneof.fields):
            raise CodecError(f"{descriptor.name} has no kind {kind!r}")
        variant: Message = getattr(message, field_name)
        variant.SetInParent()
        own = {k: v for k, v in data.items() if k in descriptor.fields_by_name and k != field_name}
        rest = {k: v for k, v in data.items() if k not in own and k != "type"}
        _fill_fields(message, own)
        _fill_fields(variant, rest)
        return
    _fill_fields(
        message, {k: v for k, v in data.items() if k != "type" or "type" in descriptor.fields_by_name}
    )


def _fill_fields(message: Message, data: dict[str, Any]) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    for key, value in data.items():
        if value is None:
            continue
        field = fields.get(key)
        if field is None:
            if key in _SERVER_ONLY_KEYS:
                continue
            raise CodecError(f"{message.DESCRIPTOR.name} has no field {key!r}")
        _set_field(message, field, value)


def _set_field(message: Message, field: Any, value: Any) -> None:
    name = field.name
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        target = getattr(message, name)
        value_field = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_field.message_type is None:
                target[k] = v
            else:
                _fill_value(target[k], v)
        return
    if field.is_repeated:
        target = getattr(message, name)
        if field.message_type is None:
            target.extend(value)
        else:
            for element in value:
                _fill_value(target.add(), element)
        return
    if field.message_type is None:
        setattr(message, name, value)
        return
    _fill_value(getattr(message, name), value)


def _fill_value(message: Message, value: Any) -> None:
    full_name = message.DESCRIPTOR.full_name
    if full_name == "google.protobuf.Struct":
        message.SetInParent()
        typing.cast(struct_pb2.Struct, message).update(value)
    elif full_name == "google.protobuf.Value":
        json_format.ParseDict(value, message)
    elif full_name == "google.protobuf.Timestamp":
        moment = datetime.fromisoformat(value) if isinstance(value, str) else value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        typing.cast(timestamp_pb2.Timestamp, message).FromDatetime(moment)
    else:
        message.SetInParent()
        _fill(message, value)


def to_proto(data: BaseModel | dict[str, Any], message: _M) -> _M:
    """Fill `message` from a chatkit model (or its JSON-like dict) and return it."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json", exclude_none=True, by_alias=True)
    _fill(message, data)
    return message


# --------------------------------------------------------------------------- protobuf -> JSON-like


def _plain_number(value: Any) -> Any:
    """Struct stores every number as a double; give JSON integers back their integer form."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_number(v) for v in value]
    return value


def _read(message: Message) -> dict[str, Any]:
    descriptor = message.DESCRIPTOR
    result = _read_fields(message)
    if _ONEOF in descriptor.oneofs_by_name:
        field_name = message.WhichOneof(_ONEOF)
        if field_name is None:
            raise CodecError(f"{descriptor.name} has no kind set")
        variant = result.pop(field_name)
        result.update(variant)
        if descriptor.full_name != _SUMMARY:
            result["type"] = _DOTTED.get(field_name, field_name)
    elif descriptor.full_name == _THREAD and not result["allowed_image_domains"]:
        # ChatKit omits the list when it is unset; protobuf cannot tell unset from empty.
        del result["allowed_image_domains"]
    return result


def _read_fields(message: Message) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        name = field.name
        value = getattr(message, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            result[name] = {
                k: (v if value_field.message_type is None else _read_value(v)) for k, v in value.items()
            }
        elif field.is_repeated:
            result[name] = [_read_value(v) for v in value] if field.message_type else list(value)
        elif field.has_presence:
            if message.HasField(name):
                result[name] = _read_value(value) if field.message_type else value
        else:
            result[name] = value
    return result


def _read_value(message: Message) -> Any:
    full_name = message.DESCRIPTOR.full_name
    if full_name in ("google.protobuf.Struct", "google.protobuf.Value"):
        return _plain_number(json_format.MessageToDict(message))
    if full_name == "google.protobuf.Timestamp":
        return typing.cast(timestamp_pb2.Timestamp, message).ToDatetime(tzinfo=UTC)
    return _read(message)


def to_data(message: Message) -> dict[str, Any]:
    """The chatkit JSON-like dict for a protobuf message (validate it with a chatkit model)."""
    return _read(message)


def json_value(message: struct_pb2.Value) -> Any:
    """The plain JSON value of a google.protobuf.Value (integral numbers as ints)."""
    return _read_value(message)


# --------------------------------------------------------------------------- typed helpers

_EVENT: Final = TypeAdapter[ThreadStreamEvent](ThreadStreamEvent)
_ITEM: Final = TypeAdapter[ThreadItem](ThreadItem)
_ATTACHMENT: Final = TypeAdapter[Attachment](Attachment)


def event_to_proto(event: ThreadStreamEvent) -> events_pb2.ThreadStreamEvent:
    return to_proto(event, events_pb2.ThreadStreamEvent())


def event_from_proto(message: events_pb2.ThreadStreamEvent) -> ThreadStreamEvent:
    return _EVENT.validate_python(to_data(message))


def item_to_proto(item: ThreadItem) -> thread_pb2.ThreadItem:
    return to_proto(item, thread_pb2.ThreadItem())


def item_from_proto(message: thread_pb2.ThreadItem) -> ThreadItem:
    return _ITEM.validate_python(to_data(message))


def attachment_from_proto(message: thread_pb2.Attachment) -> Attachment:
    return _ATTACHMENT.validate_python(to_data(message))


def thread_to_proto(thread: Thread) -> thread_pb2.Thread:
    data = thread.model_dump(mode="json", exclude_none=True, by_alias=True)
    data.pop("metadata", None)
    return to_proto(data, thread_pb2.Thread())


def thread_from_proto(message: thread_pb2.Thread) -> Thread:
    data = to_data(message)
    data.setdefault("items", {"data": [], "has_more": False})
    return Thread.model_validate(data)
