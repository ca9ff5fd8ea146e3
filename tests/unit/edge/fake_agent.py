"""A scripted ChatService on a real grpc.aio server, standing in for the agent service.

Each test sets `servicer.script` (events to stream, a status to abort with after N events, an endless
slow stream, a unary reply) and reads back what the servicer received: the request message, the
invocation metadata, the deadline, and whether the call was cancelled by the client.

The edge streams through `ChatService.Stream`: the fake sends the scripted events in batches of
`Script.batch_size` (the last one shorter; one event per message while `endless`), optionally with
empty messages between them, and records the call under the operation's name with the operation's
own request (`Received.method` says which RPC carried it). The per-event RPCs stream the same script
one event per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from chatkit.types import (
    ActiveStatus,
    AssistantMessageContent,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ClientEffectEvent,
    InferenceOptions,
    NoticeEvent,
    Page,
    ProgressUpdateEvent,
    StreamOptions,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
    UserMessageItem,
    UserMessageTextContent,
)
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import codec
from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
THREAD = Thread(id="thr_1", title="Hello", created_at=NOW, status=ActiveStatus(), items=Page())
USER_MESSAGE = UserMessageItem(
    id="msg_u",
    thread_id="thr_1",
    created_at=NOW,
    content=[UserMessageTextContent(text="hi")],
    attachments=[],
    inference_options=InferenceOptions(),
)
ASSISTANT_MESSAGE = AssistantMessageItem(
    id="msg_a",
    thread_id="thr_1",
    created_at=NOW,
    content=[AssistantMessageContent(text="Hello", annotations=[])],
)
STREAM_OPTIONS = StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True))

# A whole turn, as ChatKitServer orders it; every one of these survives the protobuf trip.
TURN_EVENTS: list[ThreadStreamEvent] = [
    ThreadCreatedEvent(thread=THREAD),
    ThreadItemDoneEvent(item=USER_MESSAGE),
    STREAM_OPTIONS,
    ProgressUpdateEvent(icon="search", text="Searching"),
    ThreadItemAddedEvent(item=ASSISTANT_MESSAGE.model_copy(update={"content": []})),
    ThreadItemUpdatedEvent(
        item_id="msg_a", update=AssistantMessageContentPartTextDelta(content_index=0, delta="Hel")
    ),
    ThreadItemUpdatedEvent(
        item_id="msg_a",
        update=AssistantMessageContentPartDone(
            content_index=0, content=AssistantMessageContent(text="Hello", annotations=[])
        ),
    ),
    ThreadItemDoneEvent(item=ASSISTANT_MESSAGE),
    NoticeEvent(level="info", message="note"),
    ThreadUpdatedEvent(thread=THREAD.model_copy(update={"title": "Renamed"})),
    ClientEffectEvent(name="fx", data={"a": 1}),
]

THREAD_WITH_ITEMS = THREAD.model_copy(
    update={"items": Page[ThreadItem](data=[USER_MESSAGE, ASSISTANT_MESSAGE], has_more=True, after="msg_a")}
)
THREAD_PAGE = Page[Thread](
    data=[THREAD, THREAD.model_copy(update={"id": "thr_2"})], has_more=True, after="thr_2"
)
ITEM_PAGE = Page[ThreadItem](data=[ASSISTANT_MESSAGE, USER_MESSAGE], has_more=False)


def to_events(models: list[ThreadStreamEvent]) -> list[events_pb2.ThreadStreamEvent]:
    return [codec.event_to_proto(model) for model in models]


def _text_delta() -> events_pb2.ThreadStreamEvent:
    return codec.event_to_proto(
        ThreadItemUpdatedEvent(
            item_id="msg_a", update=AssistantMessageContentPartTextDelta(content_index=0, delta="x")
        )
    )


def _thread_page_proto(page: Page[Thread]) -> chat_pb2.ListThreadsResponse:
    return chat_pb2.ListThreadsResponse(
        data=[codec.thread_to_proto(thread) for thread in page.data], has_more=page.has_more, after=page.after
    )


def default_replies() -> dict[str, Message]:
    """What each unary RPC answers unless a test scripts otherwise."""
    return {
        "GetThread": codec.thread_to_proto(THREAD_WITH_ITEMS),
        "ListThreads": _thread_page_proto(THREAD_PAGE),
        "UpdateThread": codec.thread_to_proto(THREAD.model_copy(update={"title": "New title"})),
        "DeleteThread": chat_pb2.DeleteThreadResponse(),
        "ListItems": codec.to_proto(ITEM_PAGE, chat_pb2.ListItemsResponse()),
        "AddFeedback": chat_pb2.AddFeedbackResponse(),
        "SyncCustomAction": chat_pb2.SyncCustomActionResponse(
            updated_item=codec.item_to_proto(ASSISTANT_MESSAGE)
        ),
        "Transcribe": chat_pb2.TranscribeResponse(text="hello from the microphone"),
    }


@dataclass
class Script:
    """How the next call behaves."""

    events: list[events_pb2.ThreadStreamEvent] = field(default_factory=lambda: to_events([STREAM_OPTIONS]))
    fail: tuple[grpc.StatusCode, str] | None = None
    fail_after: int = 0
    """Number of events sent before aborting with `fail`."""
    endless: bool = False
    """After `events`, send a text delta every 20 ms until cancelled."""
    hang: bool = False
    """After `events`, send nothing and never finish (until cancelled)."""
    batch_size: int = 3
    """`Stream`: events per message (a failure after `fail_after` events cuts a batch short)."""
    empty_batches: bool = False
    """`Stream`: an empty message before every batch (a client must skip them)."""
    replies: dict[str, Message] = field(default_factory=default_replies)


@dataclass
class Received:
    rpc: str
    """The operation: the RPC's name, or for `Stream` the per-event RPC of the operation it carried."""
    request: Message
    """The operation's request (for `Stream`, the one in its `StreamRequest`)."""
    metadata: dict[str, str]
    time_remaining: float | None
    method: str = ""
    """The RPC that was called (`Stream` for every streaming call of the edge)."""


STREAM_OPERATIONS = {
    "create_thread": "CreateThread",
    "add_user_message": "AddUserMessage",
    "add_client_tool_output": "AddClientToolOutput",
    "add_structured_input": "AddStructuredInput",
    "retry_after_item": "RetryAfterItem",
    "custom_action": "CustomAction",
}


class ScriptedChatService(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.script = Script()
        self.received: list[Received] = []
        self.cancelled = asyncio.Event()
        self.sent = 0

    def _record(
        self, rpc: str, request: Message, context: aio.ServicerContext[Any, Any], method: str = ""
    ) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata() or ()}
        self.received.append(Received(rpc, request, metadata, context.time_remaining(), method or rpc))

    async def _stream(
        self, rpc: str, request: Message, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        self._record(rpc, request, context)
        script = self.script
        try:
            for index, event in enumerate(script.events):
                if script.fail is not None and index == script.fail_after:
                    await context.abort(*script.fail)
                self.sent += 1
                yield event
            if script.fail is not None:
                await context.abort(*script.fail)
            delta = _text_delta()
            while script.endless:
                await asyncio.sleep(0.02)
                self.sent += 1
                yield delta
            if script.hang:
                await asyncio.Event().wait()
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def Stream(
        self, request: chat_pb2.StreamRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[chat_pb2.StreamResponse]:
        kind = request.WhichOneof("operation")
        if kind is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "StreamRequest.operation is not set")
        assert kind is not None
        self._record(STREAM_OPERATIONS[kind], getattr(request, kind), context, method="Stream")
        script = self.script
        try:
            events = script.events if script.fail is None else script.events[: script.fail_after]
            for start in range(0, len(events), script.batch_size):
                batch = events[start : start + script.batch_size]
                if script.empty_batches:
                    yield chat_pb2.StreamResponse()
                self.sent += len(batch)
                yield chat_pb2.StreamResponse(events=batch)
            if script.fail is not None:
                await context.abort(*script.fail)
            while script.endless:
                await asyncio.sleep(0.02)
                self.sent += 1
                yield chat_pb2.StreamResponse(events=[_text_delta()])
            if script.hang:
                await asyncio.Event().wait()
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def _unary(self, rpc: str, request: Message, context: aio.ServicerContext[Any, Any]) -> Any:
        self._record(rpc, request, context)
        if self.script.fail is not None:
            await context.abort(*self.script.fail)
        return self.script.replies[rpc]

    # Streaming RPCs
    async def CreateThread(self, request: Any, context: Any) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("CreateThread", request, context):
            yield event

    async def AddUserMessage(self, request: Any, context: Any) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("AddUserMessage", request, context):
            yield event

    async def AddClientToolOutput(
        self, request: Any, context: Any
    ) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("AddClientToolOutput", request, context):
            yield event

    async def AddStructuredInput(
        self, request: Any, context: Any
    ) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("AddStructuredInput", request, context):
            yield event

    async def RetryAfterItem(self, request: Any, context: Any) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("RetryAfterItem", request, context):
            yield event

    async def CustomAction(self, request: Any, context: Any) -> AsyncIterator[events_pb2.ThreadStreamEvent]:
        async for event in self._stream("CustomAction", request, context):
            yield event

    # Unary RPCs
    async def SyncCustomAction(self, request: Any, context: Any) -> Any:
        return await self._unary("SyncCustomAction", request, context)

    async def GetThread(self, request: Any, context: Any) -> Any:
        return await self._unary("GetThread", request, context)

    async def ListThreads(self, request: Any, context: Any) -> Any:
        return await self._unary("ListThreads", request, context)

    async def UpdateThread(self, request: Any, context: Any) -> Any:
        return await self._unary("UpdateThread", request, context)

    async def DeleteThread(self, request: Any, context: Any) -> Any:
        return await self._unary("DeleteThread", request, context)

    async def ListItems(self, request: Any, context: Any) -> Any:
        return await self._unary("ListItems", request, context)

    async def AddFeedback(self, request: Any, context: Any) -> Any:
        return await self._unary("AddFeedback", request, context)

    async def Transcribe(self, request: Any, context: Any) -> Any:
        return await self._unary("Transcribe", request, context)


@dataclass
class FakeAgent:
    server: aio.Server
    address: str
    servicer: ScriptedChatService
    health: health.aio.HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("switchboard.v1.ChatService", status)


async def start_fake_agent() -> FakeAgent:
    server = aio.server()
    servicer = ScriptedChatService()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    agent = FakeAgent(server, f"127.0.0.1:{port}", servicer, health_servicer)
    await agent.set_serving(True)
    return agent


__all__ = ["FakeAgent", "Received", "Script", "ScriptedChatService", "start_fake_agent"]
