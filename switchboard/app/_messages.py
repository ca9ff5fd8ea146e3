"""ChatKit events for an assistant message that the app writes itself (not a model's answer)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)

from switchboard.app._ids import new_id


class AssistantMessageStream:
    """One assistant message as ChatKit events: `start`, `delta`…, `finish`."""

    def __init__(self, thread_id: str) -> None:
        self.item = AssistantMessageItem(
            id=new_id("msg"), thread_id=thread_id, created_at=datetime.now(UTC), content=[]
        )
        self._parts: list[str] = []

    def start(self) -> list[ThreadStreamEvent]:
        return [
            ThreadItemAddedEvent(item=self.item),
            ThreadItemUpdatedEvent(
                item_id=self.item.id,
                update=AssistantMessageContentPartAdded(
                    content_index=0, content=AssistantMessageContent(text="")
                ),
            ),
        ]

    def delta(self, text: str) -> ThreadStreamEvent:
        self._parts.append(text)
        return ThreadItemUpdatedEvent(
            item_id=self.item.id, update=AssistantMessageContentPartTextDelta(content_index=0, delta=text)
        )

    def finish(self) -> list[ThreadStreamEvent]:
        content = AssistantMessageContent(text="".join(self._parts))
        return [
            ThreadItemUpdatedEvent(
                item_id=self.item.id, update=AssistantMessageContentPartDone(content_index=0, content=content)
            ),
            ThreadItemDoneEvent(item=self.item.model_copy(update={"content": [content]})),
        ]


def assistant_message_events(thread_id: str, chunks: Iterable[str]) -> list[ThreadStreamEvent]:
    """A complete assistant message streamed as `chunks` (empty chunks are skipped)."""
    message = AssistantMessageStream(thread_id)
    events = message.start()
    events.extend(message.delta(chunk) for chunk in chunks if chunk)
    events.extend(message.finish())
    return events
