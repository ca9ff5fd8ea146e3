"""What openai-chatkit itself produces, to hold Switchboard's output to it byte for byte.

- `chatkit_frames(events)`: the SSE frames a minimal `ChatKitServer` (in-process, an in-memory
  store) writes for a `threads.create` whose `respond` yields `events`;
- `chatkit_stream_widget(versions)`: the events `chatkit.server.stream_widget` emits for a widget
  that goes through `versions`;
- `raw_frames(...)`: the SSE frames of a streaming request to the edge, exactly as received (each
  also validated by `chatkit_wire.parse_sse`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from chatkit.server import ChatKitServer, StreamingResult, stream_widget
from chatkit.types import ThreadMetadata, ThreadStreamEvent, UserMessageItem
from chatkit.widgets import WidgetRoot

from benchmarks.reference_server import MemoryStore, RequestContext
from tests.support.chatkit_wire import parse_sse, request, user_input


class _ScriptedServer(ChatKitServer[RequestContext]):
    """A ChatKitServer whose every answer is the given events, unchanged."""

    def __init__(self, events: Sequence[ThreadStreamEvent]) -> None:
        super().__init__(MemoryStore())
        self._events = list(events)

    async def respond(
        self, thread: ThreadMetadata, input_user_message: UserMessageItem | None, context: RequestContext
    ) -> AsyncIterator[ThreadStreamEvent]:
        for event in self._events:
            yield event


def split_frames(body: bytes) -> list[bytes]:
    """An SSE body as its frames, each `data: ...\\n\\n` exactly as sent."""
    assert body.endswith(b"\n\n"), body[-80:]
    return [frame + b"\n\n" for frame in body[:-2].split(b"\n\n")]


def frame_type(frame: bytes) -> str:
    return str(json.loads(frame.removeprefix(b"data: "))["type"])


async def chatkit_frames(events: Sequence[ThreadStreamEvent], text: str = "hello") -> list[bytes]:
    """Every frame `ChatKitServer.process` streams for a threads.create answered with `events`."""
    server = _ScriptedServer(events)
    body = json.dumps(request("threads.create", input=user_input(text))).encode()
    result = await server.process(body, {})
    assert isinstance(result, StreamingResult)
    return split_frames(b"".join([chunk async for chunk in result]))


async def chatkit_stream_widget(
    versions: Sequence[WidgetRoot], copy_text: str | None = None, thread_id: str = "thr_reference"
) -> list[ThreadStreamEvent]:
    """The events chatkit's own `stream_widget` emits for a widget going through `versions`."""

    async def roots() -> AsyncGenerator[WidgetRoot, None]:
        for version in versions:
            yield version

    thread = ThreadMetadata(id=thread_id, created_at=datetime.now(UTC))
    return [event async for event in stream_widget(thread, roots(), copy_text)]


async def raw_frames(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[list[bytes], list[ThreadStreamEvent]]:
    """A streaming request to the edge: its frames as received, and the events they hold."""
    async with session.post(f"{url}/chatkit/api", json=body, headers=headers) as response:
        raw = await response.read()
        assert response.status == 200, raw.decode(errors="replace")
        assert response.headers["Content-Type"].startswith("text/event-stream")
    return split_frames(raw), parse_sse(raw)
