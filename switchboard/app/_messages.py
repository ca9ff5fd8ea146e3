"""ChatKit events for an assistant message that the app writes itself (not a model's answer)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from chatkit.types import (
    Annotation,
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartAnnotationAdded,
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
        self._annotations: list[Annotation] = []

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

    def annotate(self, annotation: Annotation) -> ThreadStreamEvent:
        """A source the message cites (numbered in the order they come)."""
        self._annotations.append(annotation)
        update = AssistantMessageContentPartAnnotationAdded(
            content_index=0, annotation_index=len(self._annotations) - 1, annotation=annotation
        )
        return ThreadItemUpdatedEvent(item_id=self.item.id, update=update)

    def finish(self) -> list[ThreadStreamEvent]:
        content = AssistantMessageContent(text="".join(self._parts), annotations=list(self._annotations))
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
