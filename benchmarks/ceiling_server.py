"""The framework ceiling: aiohttp streaming pre-encoded ChatKit events, with no model and no store.

For every `POST /chatkit/api` it reads the body, picks the frames of a `threads.create` or of a
`threads.add_user_message` and writes them one by one (`await response.write(frame)` per event,
as a ChatKit server does). The frames are valid ChatKit events of the same count and sizes as the
reference server's answer (`reference_server.py`): thread created, user message done, stream
options, assistant message added, content part added, N text deltas (`benchmark_deltas(N)`), content
part done, assistant message done. Ids and timestamps are fixed, so every answer is the same bytes.

What it measures: aiohttp's request handling plus the per-event write, and the load generator's own
cost, on this machine; no ChatKit server can stream the same events faster through aiohttp.

Run it: `python -m benchmarks.ceiling_server --port 8092 --reply-tokens 64`.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from typing import Final

from aiohttp import web
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    InferenceOptions,
    Page,
    StreamOptions,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
)

from benchmarks.workload import CHATKIT_PATH, SECOND_TEXT, USER_TEXT
from switchboard.demo.benchmark import benchmark_deltas

THREAD_ID: Final = "thr_c0ffee00"
USER_MESSAGE_IDS: Final = ("msg_0000aaaa", "msg_0000bbbb")
ASSISTANT_MESSAGE_IDS: Final = ("msg_" + "a" * 24, "msg_" + "b" * 24)
CREATED_AT: Final = datetime(2026, 1, 1, 12, 0, 0, 123456)
"""Naive, with microseconds, as `datetime.now()` in ChatKitServer gives it."""
_CREATE_TAG: Final = b'"threads.create"'


def encode(event: ThreadStreamEvent) -> bytes:
    """One SSE frame, serialised exactly as ChatKitServer does."""
    payload = event.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})
    return b"data: " + payload.encode() + b"\n\n"


def answer_events(reply_tokens: int, *, create: bool) -> list[ThreadStreamEvent]:
    """The events of one turn: a new thread (create) or a second message on it."""
    turn = 0 if create else 1
    events: list[ThreadStreamEvent] = []
    if create:
        events.append(ThreadCreatedEvent(thread=Thread(id=THREAD_ID, created_at=CREATED_AT, items=Page())))
    user = UserMessageItem(
        id=USER_MESSAGE_IDS[turn],
        thread_id=THREAD_ID,
        created_at=CREATED_AT,
        content=[UserMessageTextContent(text=USER_TEXT if create else SECOND_TEXT)],
        attachments=[],
        inference_options=InferenceOptions(),
    )
    item_id = ASSISTANT_MESSAGE_IDS[turn]
    deltas = benchmark_deltas(reply_tokens)
    text = "".join(deltas)
    assistant = AssistantMessageItem(id=item_id, thread_id=THREAD_ID, created_at=CREATED_AT, content=[])
    events += [
        ThreadItemDoneEvent(item=user),
        StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True)),
        ThreadItemAddedEvent(item=assistant),
        ThreadItemUpdatedEvent(
            item_id=item_id,
            update=AssistantMessageContentPartAdded(
                content_index=0, content=AssistantMessageContent(text="")
            ),
        ),
    ]
    events += [
        ThreadItemUpdatedEvent(
            item_id=item_id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=delta)
        )
        for delta in deltas
    ]
    final = AssistantMessageContent(text=text)
    events += [
        ThreadItemUpdatedEvent(
            item_id=item_id, update=AssistantMessageContentPartDone(content_index=0, content=final)
        ),
        ThreadItemDoneEvent(item=assistant.model_copy(update={"content": [final]})),
    ]
    return events


def create_app(reply_tokens: int) -> web.Application:
    create_frames = [encode(event) for event in answer_events(reply_tokens, create=True)]
    add_frames = [encode(event) for event in answer_events(reply_tokens, create=False)]

    async def chatkit(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        frames = create_frames if _CREATE_TAG in body else add_frames
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post(CHATKIT_PATH, chatkit)
    app.router.add_get("/healthz", healthz)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--reply-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(create_app(args.reply_tokens), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
