"""ChatKit request -> one gRPC call: parsing, the operation table, and response rendering.

`parse_request` validates a request body exactly as `ChatKitServer.process` does
(`TypeAdapter(ChatKitReq).validate_json`), and `route` maps each request type to one ChatService RPC
with an exhaustive `match` (mypy proves that every ChatKit request type is handled). The proto request
is built from `request.params` by the shared codec: the proto fields are named after ChatKit's params.

The result of `route` is a plan, not a started call, so the HTTP layer (app.py) decides how to run it
(deadline, metadata, cancellation) and how to turn failures into HTTP:
- `StreamingOperation`: a `ChatService.Stream` call (the operation in its `StreamRequest`) whose
  batches of events become SSE frames (the per-event RPCs of the six operations remain for other
  callers; the edge does not use them);
- `UnaryOperation`: a unary RPC whose reply is rendered into the JSON body ChatKitServer would send
  (`Thread`, `Page[Thread]`, `Page[ThreadItem]`, `SyncCustomActionResponse`, `TranscriptionResult`
  or `{}`);
- `UnsupportedOperation`: a ChatKit operation this server does not offer (501).
"""

from __future__ import annotations

import base64
import binascii
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, assert_never

from chatkit.types import (
    AttachmentsCreateReq,
    AttachmentsDeleteReq,
    ChatKitReq,
    InputTranscribeReq,
    ItemsFeedbackReq,
    ItemsListReq,
    Page,
    SyncCustomActionResponse,
    Thread,
    ThreadItem,
    ThreadsAddClientToolOutputReq,
    ThreadsAddStructuredInputReq,
    ThreadsAddUserMessageReq,
    ThreadsCreateReq,
    ThreadsCustomActionReq,
    ThreadsDeleteReq,
    ThreadsGetByIdReq,
    ThreadsListReq,
    ThreadsRetryAfterItemReq,
    ThreadsSyncCustomActionReq,
    ThreadsUpdateReq,
    TranscriptionResult,
)
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc import aio
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_json

from services.common import codec
from services.common.audio import audio_problem
from services.edge.sse import encode_model
from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2, upload_pb2, upload_pb2_grpc

Metadata = Sequence[tuple[str, str]]
"""gRPC metadata as (lowercase key, value) pairs."""

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)

_REQUEST: Final = TypeAdapter[ChatKitReq](ChatKitReq)
_ITEM_PAGE: Final = TypeAdapter[Page[ThreadItem]](Page[ThreadItem])
_EMPTY_JSON: Final = b"{}"
_REQUEST_TYPES: Final[frozenset[str]] = frozenset(
    model.model_fields["type"].default for model in typing.get_args(typing.get_args(ChatKitReq)[0])
)
_MAX_REPORTED_ERRORS: Final = 3
_MAX_MESSAGE_CHARS: Final = 200
_MAX_TAG_CHARS: Final = 64
MAX_JSON_DEPTH: Final = 32
"""Deepest nesting accepted in a free-form JSON value (a client tool `result`, an action `payload`,
request `metadata`): 400 past it. Protobuf's Struct stops at 100 levels with an opaque error."""
MAX_JSON_BYTES: Final = 256 * 1024
"""Largest free-form JSON value, serialised (each one; the whole body is bounded by
SWITCHBOARD_MAX_BODY_BYTES): 400 past it."""


class BadRequest(ValueError):
    """The body is not a valid ChatKit request; the message is short and safe to show (HTTP 400)."""


class InvalidReply(ValueError):
    """The agent service answered with something that is not valid ChatKit data (HTTP 500)."""


@dataclass(frozen=True, slots=True)
class StreamingOperation:
    """A `ChatService.Stream` call, ready to start: `start(metadata, timeout)` returns the live call,
    whose messages are batches of events (`StreamResponse`). `rpc` names the operation (its
    per-event RPC's name, as the agent's logs and metrics do)."""

    type: str
    rpc: str
    start: Callable[[Metadata, float], aio.UnaryStreamCall[Any, chat_pb2.StreamResponse]]


@dataclass(frozen=True, slots=True)
class UnaryOperation:
    """A unary RPC: `start(metadata, timeout)` returns the call; `render` turns its reply into JSON."""

    type: str
    rpc: str
    start: Callable[[Metadata, float], aio.UnaryUnaryCall[Any, Any]]
    render: Callable[[Any], bytes]

    async def run(self, metadata: Metadata, *, deadline_s: float) -> bytes:
        """Run the RPC and render the reply; the call is cancelled if this coroutine is cancelled.

        Raises `grpc.aio.AioRpcError` for a failed RPC and `InvalidReply` for an unusable reply.
        """
        call = self.start(metadata, deadline_s)
        try:
            reply = await call
        finally:
            call.cancel()  # a no-op once the call has finished
        return self.render(reply)


@dataclass(frozen=True, slots=True)
class UnsupportedOperation:
    """A ChatKit operation that this server does not offer (HTTP 501, gRPC UNIMPLEMENTED)."""

    type: str
    message: str


Operation = StreamingOperation | UnaryOperation | UnsupportedOperation


# --------------------------------------------------------------------------- parsing


def _summarise(error: ValidationError) -> str:
    """A one-line summary of a validation error: at most three problems, each cut to 200 characters.

    Input values are not echoed back, except an unknown request type (cut to 64 characters), which
    is what a client developer needs to see.
    """
    parts: list[str] = []
    for detail in error.errors(include_url=False, include_input=False):
        kind = detail["type"]
        if kind == "json_invalid":
            parts.append(f"malformed JSON: {detail['msg'].removeprefix('Invalid JSON: ')}")
        elif kind == "union_tag_invalid" and not detail["loc"]:
            tag = str(detail.get("ctx", {}).get("tag", ""))[:_MAX_TAG_CHARS]
            parts.append(f"unknown request type {tag!r}")
        elif kind == "union_tag_not_found" and not detail["loc"]:
            parts.append("missing request 'type'")
        else:
            loc = list(detail["loc"])
            if loc and loc[0] in _REQUEST_TYPES:
                loc = loc[1:]  # the discriminator tag pydantic puts first
            where = ".".join(str(part) for part in loc)
            parts.append(f"{where}: {detail['msg']}" if where else str(detail["msg"]))
        if len(parts) == _MAX_REPORTED_ERRORS:
            break
    more = error.error_count() - len(parts)
    summary = "; ".join(part[:_MAX_MESSAGE_CHARS] for part in parts)
    return f"{summary} (and {more} more)" if more > 0 else summary


def _too_deep(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` levels deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list | tuple):
            children = current
        else:
            continue
        depth += 1
        if depth > limit:
            return True
        stack.extend((child, depth) for child in children)
    return False


def _free_form(request: ChatKitReq) -> list[tuple[str, Any]]:
    """The request's free-form JSON values, by name (everything else has a typed schema)."""
    values: list[tuple[str, Any]] = [("metadata", request.metadata)]
    match request:
        case ThreadsAddClientToolOutputReq(params=params):
            values.append(("result", params.result))
        case ThreadsCustomActionReq(params=params) | ThreadsSyncCustomActionReq(params=params):
            values.append(("action.payload", params.action.payload))
        case _:
            pass
    return values


def check_free_form(request: ChatKitReq) -> None:
    """Bound the depth and size of every free-form JSON value (`BadRequest` past the limits)."""
    for name, value in _free_form(request):
        if value is None:
            continue
        if _too_deep(value, MAX_JSON_DEPTH):
            raise BadRequest(f"invalid ChatKit request: {name} nests deeper than {MAX_JSON_DEPTH} levels")
        try:
            size = len(to_json(value))
        except ValueError:  # a value pydantic cannot serialise (never from JSON input)
            raise BadRequest(f"invalid ChatKit request: {name} is not JSON") from None
        if size > MAX_JSON_BYTES:
            raise BadRequest(f"invalid ChatKit request: {name} exceeds {MAX_JSON_BYTES} bytes as JSON")


def parse_request(body: bytes) -> ChatKitReq:
    """Validate a request body like `ChatKitServer.process`; raise `BadRequest` with a short reason.

    Free-form JSON values are bounded too (`MAX_JSON_DEPTH`, `MAX_JSON_BYTES`), before anything runs.
    """
    try:
        request = _REQUEST.validate_json(body)
    except ValidationError as error:
        raise BadRequest(f"invalid ChatKit request: {_summarise(error)}") from None
    check_free_form(request)
    return request


# --------------------------------------------------------------------------- rendering


def _render_thread(reply: thread_pb2.Thread) -> bytes:
    return encode_model(_decode(codec.thread_from_proto, reply))


def _render_thread_page(reply: chat_pb2.ListThreadsResponse) -> bytes:
    def decode(message: chat_pb2.ListThreadsResponse) -> Page[Thread]:
        return Page[Thread](
            data=[codec.thread_from_proto(thread) for thread in message.data],
            has_more=message.has_more,
            after=message.after if message.HasField("after") else None,
        )

    return encode_model(_decode(decode, reply))


def _render_item_page(reply: chat_pb2.ListItemsResponse) -> bytes:
    return encode_model(_decode(lambda message: _ITEM_PAGE.validate_python(codec.to_data(message)), reply))


def _render_sync_action(reply: chat_pb2.SyncCustomActionResponse) -> bytes:
    return encode_model(
        _decode(lambda message: SyncCustomActionResponse.model_validate(codec.to_data(message)), reply)
    )


def _render_attachment(reply: upload_pb2.CreateAttachmentResponse) -> bytes:
    return encode_model(_decode(lambda message: codec.attachment_from_proto(message.attachment), reply))


def _render_transcription(reply: chat_pb2.TranscribeResponse) -> bytes:
    return encode_model(TranscriptionResult(text=reply.text))


def _render_empty(_reply: Message) -> bytes:
    return _EMPTY_JSON


_M = TypeVar("_M", bound=Message)
_Model = TypeVar("_Model", bound=BaseModel)


def _decode(decode: Callable[[_M], _Model], reply: _M) -> _Model:
    try:
        return decode(reply)
    except (codec.CodecError, ValidationError) as error:
        raise InvalidReply(f"invalid {reply.DESCRIPTOR.name} from the agent service: {error}") from error


# --------------------------------------------------------------------------- routing


def _proto(params: BaseModel, message: _Req) -> _Req:
    """Build the RPC request from ChatKit params; values that do not fit (an int32 overflow) are 400s."""
    try:
        return codec.to_proto(params, message)
    except (codec.CodecError, json_format.ParseError, ValueError, TypeError) as error:
        raise BadRequest(f"invalid ChatKit request: {str(error)[:_MAX_MESSAGE_CHARS]}") from None


def _transcribe_request(audio_base64: str, mime_type: str, max_bytes: int) -> chat_pb2.TranscribeRequest:
    """Decode and check the audio before any RPC: undecodable base64, an unsupported media type,
    empty or oversized audio are 400s."""
    try:
        audio = base64.b64decode(audio_base64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid input.transcribe request: audio_base64 is not valid base64") from None
    problem = audio_problem(len(audio), mime_type, max_bytes)
    if problem is not None:
        raise BadRequest(f"invalid input.transcribe request: {problem}")
    return chat_pb2.TranscribeRequest(audio=audio, mime_type=mime_type)


def _streaming(
    kind: str, stub: chat_pb2_grpc.ChatServiceAsyncStub, rpc: str, request: chat_pb2.StreamRequest
) -> StreamingOperation:
    def start(metadata: Metadata, timeout: float) -> aio.UnaryStreamCall[Any, chat_pb2.StreamResponse]:
        return stub.Stream(request, metadata=tuple(metadata), timeout=timeout)

    return StreamingOperation(type=kind, rpc=rpc, start=start)


def _unary(
    kind: str,
    method: aio.UnaryUnaryMultiCallable[_Req, _Resp],
    rpc: str,
    request: _Req,
    render: Callable[[_Resp], bytes],
) -> UnaryOperation:
    def start(metadata: Metadata, timeout: float) -> aio.UnaryUnaryCall[Any, Any]:
        return method(request, metadata=tuple(metadata), timeout=timeout)

    return UnaryOperation(type=kind, rpc=rpc, start=start, render=render)


def route(
    request: ChatKitReq,
    stub: chat_pb2_grpc.ChatServiceAsyncStub,
    uploads: upload_pb2_grpc.UploadServiceAsyncStub | None = None,
    *,
    max_audio_bytes: int = 10 * 1024 * 1024,
) -> Operation:
    """The one RPC that serves a ChatKit request (nothing is sent yet).

    `attachments.*` go to the upload service; without an upload stub they are unsupported (501).
    `input.transcribe` is decoded and checked here (at most `max_audio_bytes` of audio).

    Raises `BadRequest` when the params do not fit the proto request.
    """
    kind = request.type
    match request:
        # Streaming: the six operations that make the assistant respond, all through `Stream`.
        case ThreadsCreateReq(params=params):
            return _streaming(
                kind,
                stub,
                "CreateThread",
                chat_pb2.StreamRequest(create_thread=_proto(params, chat_pb2.CreateThreadRequest())),
            )
        case ThreadsAddUserMessageReq(params=params):
            return _streaming(
                kind,
                stub,
                "AddUserMessage",
                chat_pb2.StreamRequest(add_user_message=_proto(params, chat_pb2.AddUserMessageRequest())),
            )
        case ThreadsAddClientToolOutputReq(params=params):
            return _streaming(
                kind,
                stub,
                "AddClientToolOutput",
                chat_pb2.StreamRequest(
                    add_client_tool_output=_proto(params, chat_pb2.AddClientToolOutputRequest())
                ),
            )
        case ThreadsAddStructuredInputReq(params=params):
            return _streaming(
                kind,
                stub,
                "AddStructuredInput",
                chat_pb2.StreamRequest(
                    add_structured_input=_proto(params, chat_pb2.AddStructuredInputRequest())
                ),
            )
        case ThreadsRetryAfterItemReq(params=params):
            return _streaming(
                kind,
                stub,
                "RetryAfterItem",
                chat_pb2.StreamRequest(retry_after_item=_proto(params, chat_pb2.RetryAfterItemRequest())),
            )
        case ThreadsCustomActionReq(params=params):
            return _streaming(
                kind,
                stub,
                "CustomAction",
                chat_pb2.StreamRequest(custom_action=_proto(params, chat_pb2.CustomActionRequest())),
            )
        # Unary: reads, edits and the non-streaming widget action.
        case ThreadsSyncCustomActionReq(params=params):
            return _unary(
                kind,
                stub.SyncCustomAction,
                "SyncCustomAction",
                _proto(params, chat_pb2.SyncCustomActionRequest()),
                _render_sync_action,
            )
        case ThreadsGetByIdReq(params=params):
            return _unary(
                kind, stub.GetThread, "GetThread", _proto(params, chat_pb2.GetThreadRequest()), _render_thread
            )
        case ThreadsListReq(params=params):
            return _unary(
                kind,
                stub.ListThreads,
                "ListThreads",
                _proto(params, chat_pb2.ListThreadsRequest()),
                _render_thread_page,
            )
        case ThreadsUpdateReq(params=params):
            return _unary(
                kind,
                stub.UpdateThread,
                "UpdateThread",
                _proto(params, chat_pb2.UpdateThreadRequest()),
                _render_thread,
            )
        case ThreadsDeleteReq(params=params):
            return _unary(
                kind,
                stub.DeleteThread,
                "DeleteThread",
                _proto(params, chat_pb2.DeleteThreadRequest()),
                _render_empty,
            )
        case ItemsListReq(params=params):
            return _unary(
                kind,
                stub.ListItems,
                "ListItems",
                _proto(params, chat_pb2.ListItemsRequest()),
                _render_item_page,
            )
        case ItemsFeedbackReq(params=params):
            return _unary(
                kind,
                stub.AddFeedback,
                "AddFeedback",
                _proto(params, chat_pb2.AddFeedbackRequest()),
                _render_empty,
            )
        # Attachments: the upload service.
        case AttachmentsCreateReq() | AttachmentsDeleteReq() if uploads is None:
            return UnsupportedOperation(
                type=kind, message=f"file uploads are not enabled ({kind} is unavailable)"
            )
        case AttachmentsCreateReq(params=params):
            assert uploads is not None
            return _unary(
                kind,
                uploads.CreateAttachment,
                "CreateAttachment",
                _proto(params, upload_pb2.CreateAttachmentRequest()),
                _render_attachment,
            )
        case AttachmentsDeleteReq(params=params):
            assert uploads is not None
            return _unary(
                kind,
                uploads.DeleteAttachment,
                "DeleteAttachment",
                _proto(params, upload_pb2.DeleteAttachmentRequest()),
                _render_empty,
            )
        # Dictation: the agent service transcribes (the app, the provider, or offline).
        case InputTranscribeReq(params=params):
            return _unary(
                kind,
                stub.Transcribe,
                "Transcribe",
                _transcribe_request(params.audio_base64, params.mime_type, max_audio_bytes),
                _render_transcription,
            )
        case _:
            assert_never(request)


__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "BadRequest",
    "InvalidReply",
    "Metadata",
    "Operation",
    "StreamingOperation",
    "UnaryOperation",
    "UnsupportedOperation",
    "check_free_form",
    "parse_request",
    "route",
]
