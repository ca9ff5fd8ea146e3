"""A terminal chat over gRPC: what an internal service does to talk to the agents, typed end to end."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from grpc import aio

from services.common.config import Settings
from services.common.grpc_tls import client_channel
from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2, thread_pb2


def _user_input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


def render(event: events_pb2.ThreadStreamEvent) -> str | None:
    """What a terminal shows for one event (None: nothing to show)."""
    match event.WhichOneof("kind"):
        case "thread_item_updated":
            update = event.thread_item_updated.update
            if update.WhichOneof("kind") == "assistant_message_content_part_text_delta":
                return update.assistant_message_content_part_text_delta.delta
            return None
        case "thread_item_done":
            item = event.thread_item_done.item
            match item.WhichOneof("kind"):
                case "assistant_message":
                    return "\n"
                case "widget":
                    return f"[widget] {item.widget.copy_text}\n"
                case "workflow":
                    titles = [task.custom.title for task in item.workflow.workflow.tasks if task.custom.title]
                    return f"[{'; '.join(titles)}]\n" if titles else None
                case _:
                    return None
        case "progress_update":
            return f"[{event.progress_update.text}]\n"
        case "thread_updated":
            return f"[title: {event.thread_updated.thread.title}]\n"
        case "error":
            return f"[error: {event.error.message or event.error.code}]\n"
        case "notice":
            return f"[{event.notice.level}] {event.notice.message}\n"
        case _:
            return None


async def send(
    stub: chat_pb2_grpc.ChatServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    text: str,
    thread_id: str | None,
) -> str | None:
    """Send one message and print the streamed answer; return the thread id.

    `Stream` sends the events in batches (several per message when they were ready together); each
    batch is shown with one write."""
    if thread_id is None:
        request = chat_pb2.StreamRequest(create_thread=chat_pb2.CreateThreadRequest(input=_user_input(text)))
    else:
        request = chat_pb2.StreamRequest(
            add_user_message=chat_pb2.AddUserMessageRequest(thread_id=thread_id, input=_user_input(text))
        )
    call: aio.UnaryStreamCall[Any, chat_pb2.StreamResponse] = stub.Stream(request, metadata=metadata)
    async for batch in call:
        shown: list[str] = []
        for event in batch.events:
            if event.WhichOneof("kind") == "thread_created":
                thread_id = event.thread_created.thread.id
            text_of = render(event)
            if text_of:
                shown.append(text_of)
        if shown:
            sys.stdout.write("".join(shown))
            sys.stdout.flush()
    return thread_id


async def chat(
    address: str,
    token: str,
    *,
    thread_id: str | None,
    message: str | None,
    locale: str,
    settings: Settings | None = None,
) -> int:
    """Chat with the agent service at `address`, over TLS when `settings` configure it."""
    metadata = (("authorization", f"Bearer {token}"), ("accept-language", locale))
    async with client_channel(address, settings) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        try:
            if message is not None:
                thread_id = await send(stub, metadata, message, thread_id)
                print(f"(thread {thread_id})", file=sys.stderr)
                return 0
            print("Type a message, or an empty line to quit.", file=sys.stderr)
            while True:
                try:
                    line = (await asyncio.to_thread(input, "you> ")).strip()
                except EOFError:
                    return 0
                if not line:
                    return 0
                thread_id = await send(stub, metadata, line, thread_id)
        except aio.AioRpcError as error:
            code = error.code()
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            print(f"switchboard chat: {name}: {error.details()}", file=sys.stderr)
            return 1
