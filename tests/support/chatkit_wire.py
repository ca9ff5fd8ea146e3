"""Read ChatKit responses the way the ChatKit UI does, and hold them to openai-chatkit's models."""

from __future__ import annotations

import json
from typing import Any, Final

import aiohttp
from chatkit.types import Page, Thread, ThreadItem, ThreadStreamEvent
from pydantic import BaseModel, TypeAdapter

EVENT: Final = TypeAdapter[ThreadStreamEvent](ThreadStreamEvent)
THREAD_PAGE: Final = TypeAdapter[Page[Thread]](Page[Thread])
ITEM_PAGE: Final = TypeAdapter[Page[ThreadItem]](Page[ThreadItem])


def wire(model: BaseModel) -> str:
    """What ChatKitServer writes for a model."""
    return model.model_dump_json(by_alias=True, exclude_none=True, context={"exclude_metadata": True})


def parse_sse(body: bytes) -> list[ThreadStreamEvent]:
    """Split an SSE body into ChatKit events, asserting ChatKitServer's exact framing and bytes."""
    assert body.endswith(b"\n\n"), f"stream does not end with a complete frame: {body[-80:]!r}"
    events = []
    for frame in body[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: "), f"not a data frame: {frame[:80]!r}"
        payload = frame[len(b"data: ") :].decode()
        assert "\n" not in payload, "a frame holds more than one line"
        event = EVENT.validate_json(payload)
        assert wire(event) == payload, (
            f"bytes differ from ChatKitServer's serialization:\n{payload}\n{wire(event)}"
        )
        events.append(event)
    return events


def request(operation: str, /, **params: Any) -> dict[str, Any]:
    return {"type": operation, "params": params}


def user_input(text: str) -> dict[str, Any]:
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


async def stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> list[ThreadStreamEvent]:
    async with session.post(f"{url}/chatkit/api", json=body, headers=headers) as response:
        raw = await response.read()
        assert response.status == 200, raw.decode(errors="replace")
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        return parse_sse(raw)


async def call(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str], status: int = 200
) -> Any:
    async with session.post(f"{url}/chatkit/api", json=body, headers=headers) as response:
        raw = await response.read()
        assert response.status == status, raw.decode(errors="replace")
        if status == 200:
            assert response.headers["Content-Type"].startswith("application/json")
        return json.loads(raw)


def error_of(body: Any) -> tuple[str, str]:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"], body["error"]["message"]


def assistant_text(events: list[ThreadStreamEvent]) -> str:
    """The text of every assistant message completed in the stream, joined."""
    from chatkit.types import AssistantMessageItem, ThreadItemDoneEvent

    texts = []
    for event in events:
        if isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, AssistantMessageItem):
            texts.append("".join(part.text for part in event.item.content))
    return "\n".join(texts)
