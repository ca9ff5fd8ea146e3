"""`ChatService.Stream` against the per-event RPCs, over a real gRPC channel, with a scripted
conversation: the same events in the same order, in batches of what was ready together (bounded),
the same statuses, the same metrics; and a call cancelled while a batch is written cancels the
conversation where it waits (the handler driven directly, with a context whose write blocks)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    ProgressUpdateEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)
from grpc import aio
from prometheus_client import REGISTRY

from services.agent_service.server import (
    _OPERATIONS,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    STREAMING_METHODS,
    ChatService,
    event_to_proto,
)
from services.agent_service.store import LeaseLost, ThreadBusy
from services.common import codec
from services.common.auth import TokenVerifier, mint_token
from services.common.grpc_auth import AuthInterceptor, current_principal
from services.common.principal import Principal
from switchboard.app import NotFound
from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2

SECRET = "batches-test-secret-" + "s" * 32
WAIT = object()
"""In a script: the conversation waits (a real wait, on the loop) before its next events."""


def progress(index: int, size: int = 0) -> ThreadStreamEvent:
    return ProgressUpdateEvent(text=f"step {index}" + "x" * size)


def delta(text: str) -> ThreadStreamEvent:
    return ThreadItemUpdatedEvent(
        item_id="msg_a", update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
    )


@dataclass
class ScriptedConversation:
    """Every streaming operation plays `script`: events, WAIT marks, and an error at the end."""

    script: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    refuse: BaseException | None = None
    """Raised when the operation is called, before any event."""
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def _play(self, name: str, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        self.calls.append((name, args[2:]))  # without the owner and the locale
        if self.refuse is not None:
            raise self.refuse
        script, error = list(self.script), self.error

        async def events() -> AsyncIterator[ThreadStreamEvent]:
            for step in script:
                if step is WAIT:
                    await asyncio.sleep(0.002)
                else:
                    yield step
            if error is not None:
                raise error

        return events()

    def create_thread(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("create_thread", *args)

    def add_user_message(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("add_user_message", *args)

    def add_client_tool_output(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("add_client_tool_output", *args)

    def add_structured_input(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("add_structured_input", *args)

    def retry_after_item(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("retry_after_item", *args)

    def custom_action(self, *args: Any) -> AsyncIterator[ThreadStreamEvent]:
        return self._play("custom_action", *args)


Chat = tuple["chat_pb2_grpc.ChatServiceAsyncStub", ScriptedConversation]


@pytest.fixture
async def chat() -> AsyncIterator[Chat]:
    conversation = ScriptedConversation()
    server = aio.server(interceptors=[AuthInterceptor(TokenVerifier(SECRET))])
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(conversation), server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield chat_pb2_grpc.ChatServiceStub(channel), conversation
    finally:
        await server.stop(None)


def _metadata() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, tenant='acme', user='alice')}"),)


def _input() -> chat_pb2.UserMessageInput:
    message = chat_pb2.UserMessageInput()
    message.content.add().input_text.text = "hi"
    return message


def _action() -> chat_pb2.Action:
    return chat_pb2.Action(type="approve")


# The six operations: the StreamRequest field, the per-event RPC, a valid request.
OPERATIONS: list[tuple[str, str, Callable[[], Any]]] = [
    ("create_thread", "CreateThread", lambda: chat_pb2.CreateThreadRequest(input=_input())),
    (
        "add_user_message",
        "AddUserMessage",
        lambda: chat_pb2.AddUserMessageRequest(thread_id="thr_1", input=_input()),
    ),
    (
        "add_client_tool_output",
        "AddClientToolOutput",
        lambda: chat_pb2.AddClientToolOutputRequest(thread_id="thr_1"),
    ),
    (
        "add_structured_input",
        "AddStructuredInput",
        lambda: chat_pb2.AddStructuredInputRequest(
            thread_id="thr_1", item_id="si_1", input=chat_pb2.StructuredInputSubmission(status="skipped")
        ),
    ),
    (
        "retry_after_item",
        "RetryAfterItem",
        lambda: chat_pb2.RetryAfterItemRequest(thread_id="thr_1", item_id="msg_1"),
    ),
    (
        "custom_action",
        "CustomAction",
        lambda: chat_pb2.CustomActionRequest(thread_id="thr_1", action=_action()),
    ),
]


async def _batches(
    stub: chat_pb2_grpc.ChatServiceAsyncStub, field_name: str, request: Any
) -> list[list[events_pb2.ThreadStreamEvent]]:
    call = stub.Stream(chat_pb2.StreamRequest(**{field_name: request}), metadata=_metadata(), timeout=10)
    return [list(message.events) async for message in call]


async def _events(stub: chat_pb2_grpc.ChatServiceAsyncStub, rpc: str, request: Any) -> list[Any]:
    return [event async for event in getattr(stub, rpc)(request, metadata=_metadata(), timeout=10)]


async def _failure(call: Any) -> tuple[list[Any], aio.AioRpcError]:
    received: list[Any] = []
    try:
        async for message in call:
            received.append(message)
    except aio.AioRpcError as error:
        return received, error
    raise AssertionError(f"the call succeeded with {received}")


def _protos(script: list[Any]) -> list[events_pb2.ThreadStreamEvent]:
    return [codec.event_to_proto(step) for step in script if step is not WAIT]


async def test_stream_sends_what_is_ready_together_in_one_message(chat: Chat) -> None:
    stub, conversation = chat
    conversation.script = [
        *(progress(i) for i in range(3)),
        WAIT,
        progress(3),
        WAIT,
        delta("Hel"),
        delta("lo"),
        progress(4),
        WAIT,
        WAIT,
        progress(5),
    ]
    batches = await _batches(stub, "create_thread", chat_pb2.CreateThreadRequest(input=_input()))
    assert [len(batch) for batch in batches] == [3, 1, 3, 1]
    per_event = await _events(stub, "CreateThread", chat_pb2.CreateThreadRequest(input=_input()))
    assert [event for batch in batches for event in batch] == per_event == _protos(conversation.script)


@pytest.mark.parametrize(("field_name", "rpc", "request_of"), OPERATIONS)
async def test_every_operation_streams_the_same_events_and_counts_them_under_its_name(
    chat: Chat, field_name: str, rpc: str, request_of: Callable[[], Any]
) -> None:
    stub, conversation = chat
    conversation.script = [progress(1), delta("a"), WAIT, delta("b"), progress(2)]

    def counts() -> tuple[float, ...]:
        return tuple(
            REGISTRY.get_sample_value(f"switchboard_agent_stream_{name}", {"operation": rpc}) or 0.0
            for name in ("events_total", "text_deltas_total", "first_text_seconds_count")
        )

    before = counts()
    batches = await _batches(stub, field_name, request_of())
    middle = counts()
    per_event = await _events(stub, rpc, request_of())
    after = counts()
    assert [len(batch) for batch in batches] == [2, 2]
    assert [event for batch in batches for event in batch] == per_event == _protos(conversation.script)
    assert [b - a for a, b in zip(before, middle, strict=True)] == [4, 2, 1]
    assert [b - a for a, b in zip(middle, after, strict=True)] == [4, 2, 1]
    name = rpc[0].lower() + "".join(f"_{c.lower()}" if c.isupper() else c for c in rpc[1:])
    first, second = conversation.calls[-2:]
    assert first == second and first[0] == name


async def test_a_batch_is_bounded_in_events_and_in_bytes(chat: Chat) -> None:
    stub, conversation = chat
    request = chat_pb2.CreateThreadRequest(input=_input())
    conversation.script = [progress(i) for i in range(2 * MAX_BATCH_EVENTS + 10)]
    batches = await _batches(stub, "create_thread", request)
    assert [len(batch) for batch in batches] == [MAX_BATCH_EVENTS, MAX_BATCH_EVENTS, 10]
    assert [event for batch in batches for event in batch] == _protos(conversation.script)

    # 20 KB events: three fit in 64 KiB, a fourth does not; one larger than the bound goes alone
    big = 20_000
    conversation.script = [
        *(progress(i, big) for i in range(7)),
        progress(7, MAX_BATCH_BYTES + 1000),
        progress(8),
    ]
    batches = await _batches(stub, "create_thread", request)
    assert [len(batch) for batch in batches] == [3, 3, 1, 1, 1]
    assert [event for batch in batches for event in batch] == _protos(conversation.script)
    sizes = [sum(event.ByteSize() for event in batch) for batch in batches]
    assert all(size <= MAX_BATCH_BYTES for size in sizes[:3]) and sizes[3] > MAX_BATCH_BYTES


def test_stream_serves_every_operation_of_the_oneof_and_every_per_event_rpc() -> None:
    oneof = chat_pb2.StreamRequest.DESCRIPTOR.oneofs_by_name["operation"]
    assert set(_OPERATIONS) == {field.name for field in oneof.fields} == {case[0] for case in OPERATIONS}
    assert sorted(name for name, _ in _OPERATIONS.values()) == sorted(STREAMING_METHODS)


async def test_a_request_without_an_operation_is_invalid(chat: Chat) -> None:
    stub, conversation = chat
    _, error = await _failure(stub.Stream(chat_pb2.StreamRequest(), metadata=_metadata(), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "StreamRequest.operation is not set" in (error.details() or "")
    assert "create_thread" in (error.details() or "")
    assert conversation.calls == []


async def test_errors_are_the_same_status_on_both_forms(chat: Chat) -> None:
    stub, conversation = chat
    _, rpc, request_of = OPERATIONS[1]

    async def both() -> list[tuple[list[Any], aio.AioRpcError]]:
        batched = await _failure(
            stub.Stream(
                chat_pb2.StreamRequest(add_user_message=request_of()), metadata=_metadata(), timeout=10
            )
        )
        per_event = await _failure(getattr(stub, rpc)(request_of(), metadata=_metadata(), timeout=10))
        return [batched, per_event]

    # refused before any event: the status, no message
    for refusal, code in [
        (NotFound("thread 'thr_1' not found"), grpc.StatusCode.NOT_FOUND),
        (ThreadBusy("thr_1", retry_after_s=3), grpc.StatusCode.ABORTED),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
    ]:
        conversation.refuse = refusal
        results = await both()
        for received, error in results:
            assert received == []
            assert error.code() == code
        assert results[0][1].details() == results[1][1].details()
        assert results[0][1].trailing_metadata() == results[1][1].trailing_metadata()
    conversation.refuse = None

    # invalid input (the opener's own checks): no thread id
    for received, error in [
        await _failure(
            stub.Stream(
                chat_pb2.StreamRequest(add_user_message=chat_pb2.AddUserMessageRequest(input=_input())),
                metadata=_metadata(),
            )
        ),
        await _failure(
            stub.AddUserMessage(chat_pb2.AddUserMessageRequest(input=_input()), metadata=_metadata())
        ),
    ]:
        assert received == []
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "thread_id is required"

    # failing mid-stream: the events before the failure, then the same status
    conversation.script = [progress(1), progress(2), WAIT, progress(3)]
    for failure, code in [
        (LeaseLost("thr_1"), grpc.StatusCode.ABORTED),
        (ValueError("boom"), grpc.StatusCode.INTERNAL),
    ]:
        conversation.error = failure
        (batches, batched_error), (events, error) = await both()
        assert [len(batch.events) for batch in batches] == [2, 1]
        assert [e for batch in batches for e in batch.events] == events == _protos(conversation.script)
        assert batched_error.code() == error.code() == code
        assert batched_error.details() == error.details()

    # unauthenticated: the interceptor refuses both alike
    for call in (
        stub.Stream(chat_pb2.StreamRequest(create_thread=chat_pb2.CreateThreadRequest(input=_input()))),
        stub.CreateThread(chat_pb2.CreateThreadRequest(input=_input())),
    ):
        _, error = await _failure(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- cancellation


class Aborted(Exception):
    pass


def _handle(conversation: ScriptedConversation, context: BlockingContext) -> asyncio.Task[None]:
    """`ChatService.Stream` for a threads.create, as a task of its own (as grpc.aio runs it)."""
    current_principal.set(Principal(tenant="acme", user="alice", role="user"))
    request = chat_pb2.StreamRequest(create_thread=chat_pb2.CreateThreadRequest(input=_input()))
    return asyncio.create_task(ChatService(conversation).Stream(request, context))  # type: ignore[arg-type]


class BlockingContext:
    """A servicer context whose `write` blocks until released; `abort` records and raises."""

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.writing = asyncio.Event()
        self.release = asyncio.Event()
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def write(self, message: Any) -> None:
        self.written.append(message)
        self.writing.set()
        await self.release.wait()

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details)
        raise Aborted(code)


async def test_a_call_cancelled_during_a_write_cancels_the_conversation_where_it_waits() -> None:
    seen: list[str] = []
    waiting = asyncio.Event()

    async def events() -> AsyncIterator[ThreadStreamEvent]:
        yield progress(1)
        try:
            waiting.set()
            await asyncio.sleep(30)  # the model, say: the batch ended here, the step is pending
        except asyncio.CancelledError:
            seen.append("cancelled where it waits")
            await asyncio.sleep(0.001)  # saving the partial answer
            seen.append("saved")
            raise
        yield progress(2)  # pragma: no cover

    conversation = ScriptedConversation()
    conversation.create_thread = lambda *args: events()  # type: ignore[method-assign]
    context = BlockingContext()
    handler = _handle(conversation, context)
    await context.writing.wait()
    await waiting.wait()
    handler.cancel()  # the client went away while the first batch was being written
    with pytest.raises(asyncio.CancelledError):
        await handler
    assert seen == ["cancelled where it waits", "saved"]
    assert [list(m.events) for m in context.written] == [[event_to_proto(progress(1))]]
    assert context.aborted is None


async def test_a_lost_lease_during_a_write_ends_the_call_aborted() -> None:
    """The lease heartbeat cancels the run's task while the conversation awaits the agents; with a
    step pending, that lands in the write: the step gets the cancellation, and the conversation's
    `absorb_cancel` + LeaseLost become ABORTED, as on the per-event RPCs."""
    waiting = asyncio.Event()

    async def events() -> AsyncIterator[ThreadStreamEvent]:
        yield progress(1)
        try:
            waiting.set()
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # what RunLease.absorb_cancel does
            raise LeaseLost("thr_1") from None
        yield progress(2)  # pragma: no cover

    conversation = ScriptedConversation()
    conversation.create_thread = lambda *args: events()  # type: ignore[method-assign]
    context = BlockingContext()
    handler = _handle(conversation, context)
    await context.writing.wait()
    await waiting.wait()
    handler.cancel()
    with pytest.raises(Aborted):
        await handler
    assert context.aborted is not None and context.aborted[0] == grpc.StatusCode.ABORTED
