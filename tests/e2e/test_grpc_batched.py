"""`ChatService.Stream` on the real agent service: the batches add up to what the per-event RPCs
send for the same conversation, a burst answer takes fewer messages than events, and failures are
the same statuses on both forms."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from services import chat_client
from switchboard.demo.benchmark import benchmark_text
from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2, thread_pb2
from tests.support.processes import Stack, running_stack

BURST_TOKENS = 64


def _input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


def _auth(stack: Stack, **who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.token(**who)}"),)


def _is_text(event: events_pb2.ThreadStreamEvent) -> bool:
    return (
        event.WhichOneof("kind") == "thread_item_updated"
        and event.thread_item_updated.update.WhichOneof("kind") == "assistant_message_content_part_text_delta"
    )


def _text(events: list[events_pb2.ThreadStreamEvent]) -> str:
    return "".join(
        e.thread_item_updated.update.assistant_message_content_part_text_delta.delta
        for e in events
        if _is_text(e)
    )


def _shape(events: list[events_pb2.ThreadStreamEvent]) -> list[str]:
    """Event kinds in order (updates and items by their own kind), a run of text deltas as one
    entry: how finely the text is cut depends on timing (the responder merges deltas that queued
    up), on either form."""
    shape: list[str] = []
    for event in events:
        kind = event.WhichOneof("kind") or "?"
        if kind in ("thread_item_added", "thread_item_done"):
            item = getattr(event, kind).item
            kind = f"{kind}:{item.WhichOneof('kind')}"
        elif kind == "thread_item_updated":
            kind = f"{kind}:{event.thread_item_updated.update.WhichOneof('kind')}"
        if not (_is_text(event) and shape and shape[-1] == kind):
            shape.append(kind)
    return shape


async def _batched(
    stub: Any, request: chat_pb2.StreamRequest, meta: Any
) -> list[list[events_pb2.ThreadStreamEvent]]:
    return [list(message.events) async for message in stub.Stream(request, metadata=meta, timeout=30)]


async def _per_event(stub: Any, rpc: str, request: Any, meta: Any) -> list[events_pb2.ThreadStreamEvent]:
    return [event async for event in getattr(stub, rpc)(request, metadata=meta, timeout=30)]


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        async for _ in call:
            pass
    except aio.AioRpcError as error:
        return error.code(), error.details() or ""
    raise AssertionError("the call succeeded")


@pytest.fixture
async def stub(stack: Stack) -> AsyncIterator[Any]:
    async with aio.insecure_channel(stack.agent_address) as channel:
        yield chat_pb2_grpc.ChatServiceStub(channel)


async def test_the_batches_add_up_to_the_per_event_stream_of_the_same_conversation(
    stack: Stack, stub: Any
) -> None:
    meta = _auth(stack, user="batched")
    first, follow_up = "Who is employee E1001?", "Show the open orders of E1001"

    batches = await _batched(
        stub, chat_pb2.StreamRequest(create_thread=chat_pb2.CreateThreadRequest(input=_input(first))), meta
    )
    created = [event for batch in batches for event in batch]
    assert all(batches), "no empty message"
    per_event = await _per_event(
        stub, "CreateThread", chat_pb2.CreateThreadRequest(input=_input(first)), meta
    )
    assert _shape(created) == _shape(per_event)
    assert _text(created) == _text(per_event) and _text(created)
    assert len(batches) < len(created), [len(batch) for batch in batches]

    threads = [events[0].thread_created.thread.id for events in (created, per_event)]
    batches = await _batched(
        stub,
        chat_pb2.StreamRequest(
            add_user_message=chat_pb2.AddUserMessageRequest(thread_id=threads[0], input=_input(follow_up))
        ),
        meta,
    )
    added = [event for batch in batches for event in batch]
    per_event = await _per_event(
        stub,
        "AddUserMessage",
        chat_pb2.AddUserMessageRequest(thread_id=threads[1], input=_input(follow_up)),
        meta,
    )
    assert _shape(added) == _shape(per_event)
    assert _text(added) == _text(per_event) and _text(added)

    # both threads hold the same conversation
    items = [
        await stub.ListItems(
            chat_pb2.ListItemsRequest(thread_id=thread, order="asc", limit=50), metadata=meta
        )
        for thread in threads
    ]
    assert [i.WhichOneof("kind") for i in items[0].data] == [i.WhichOneof("kind") for i in items[1].data]


async def test_failures_are_the_same_status_on_both_forms(stack: Stack, stub: Any) -> None:
    meta = _auth(stack, user="batched-errors")
    cases: list[tuple[str, str, Any, grpc.StatusCode]] = [
        (
            "add_user_message",
            "AddUserMessage",
            chat_pb2.AddUserMessageRequest(thread_id="thr_unknown", input=_input("hi")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "retry_after_item",
            "RetryAfterItem",
            chat_pb2.RetryAfterItemRequest(thread_id="thr_unknown", item_id="msg_1"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "add_user_message",
            "AddUserMessage",
            chat_pb2.AddUserMessageRequest(input=_input("hi")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "create_thread",
            "CreateThread",
            chat_pb2.CreateThreadRequest(input=chat_pb2.UserMessageInput()),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "custom_action",
            "CustomAction",
            chat_pb2.CustomActionRequest(thread_id="thr_unknown", action=chat_pb2.Action()),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for field, rpc, request, code in cases:
        batched = await _status(
            stub.Stream(chat_pb2.StreamRequest(**{field: request}), metadata=meta, timeout=30)
        )
        per_event = await _status(getattr(stub, rpc)(request, metadata=meta, timeout=30))
        assert batched == per_event, (rpc, batched, per_event)
        assert batched[0] == code, (rpc, batched)

    unauthenticated = (("authorization", "Bearer junk"),)
    create = chat_pb2.CreateThreadRequest(input=_input("hi"))
    assert (
        (await _status(stub.Stream(chat_pb2.StreamRequest(create_thread=create), metadata=unauthenticated)))[
            0
        ]
        == (await _status(stub.CreateThread(create, metadata=unauthenticated)))[0]
        == grpc.StatusCode.UNAUTHENTICATED
    )


async def test_a_stream_request_without_an_operation_is_invalid(stack: Stack, stub: Any) -> None:
    code, details = await _status(stub.Stream(chat_pb2.StreamRequest(), metadata=_auth(stack), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("StreamRequest.operation is not set"), details
    assert "create_thread" in details and "custom_action" in details


async def test_switchboard_chat_streams_an_answer(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    token = stack.token(user="terminal")
    assert (
        await chat_client.chat(stack.agent_address, token, thread_id=None, message="hello", locale="en") == 0
    )
    out, err = capsys.readouterr()
    assert out.strip() and "(thread thr_" in err


# --------------------------------------------------------------------------- benchmark mode


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose model answers with 64 deltas at once (the benchmarks' offline model)."""
    data: Path = tmp_path_factory.mktemp("burst")
    with running_stack(data, uploads=False, SWITCHBOARD_LOCAL_REPLY_TOKENS=str(BURST_TOKENS)) as running:
        yield running


async def test_a_burst_answer_arrives_in_fewer_messages_than_events(burst: Stack) -> None:
    meta = _auth(burst, user="burst")
    async with aio.insecure_channel(burst.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for _ in range(3):
            request = chat_pb2.CreateThreadRequest(input=_input("hello"))
            batches = await _batched(stub, chat_pb2.StreamRequest(create_thread=request), meta)
            events = [event for batch in batches for event in batch]
            per_event = await _per_event(stub, "CreateThread", request, meta)
            assert _text(events) == _text(per_event) == benchmark_text(BURST_TOKENS)
            assert _shape(events) == _shape(per_event)
            assert all(batches)
            assert len(batches) < len(events), [len(batch) for batch in batches]
