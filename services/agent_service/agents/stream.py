"""Agents SDK stream events → ChatKit thread stream events.

We translate ourselves instead of using `chatkit.agents.stream_agent_response`, because that helper
uses the model's output item ids as ChatKit item ids (with Chat Completions models every message is
`__fake_id__`, so messages collide in the UI) and ignores handoffs. Here:

- the first raw `response.output_text.delta` (or refusal delta) of a message →
  `thread.item.added` (assistant message, fresh `msg_…` id, no content) and
  `assistant_message.content_part.added`; each delta → `assistant_message.content_part.text_delta`;
- the end of that message (raw `output_text.done`, `content_part.done`, `output_item.done`,
  `response.completed` or the run item `message_output_created`, whichever comes first) →
  `assistant_message.content_part.done` with the full text, then `thread.item.done`;
- the run item `handoff_occured` → a finished one-task `workflow` item ("Routed to the Billing
  specialist") and the target agent's name in the thread metadata (`ACTIVE_AGENT_KEY`), so the
  next turn starts with it (`find_agent`);
- events emitted by tools (progress, widgets) → forwarded unchanged; an item event first closes an
  open message, so items keep their order.

A message is closed exactly once and never without having been added. Empty deltas are dropped, so
no empty assistant message is ever created.

Coalescing: the responder merges text deltas that are ready together before they get here (see
`responder.py`) and hands them over with `on_text`; one call is one `text_delta` event, whatever
number of model deltas it carries. ChatKit concatenates deltas, so the deltas still add up to the
final `content_part.done` text.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any, Final

from agents import (
    Agent,
    AgentUpdatedStreamEvent,
    Handoff,
    HandoffOutputItem,
    RawResponsesStreamEvent,
    RunItemStreamEvent,
    StreamEvent,
)
from agents.items import TResponseStreamEvent
from chatkit.types import (
    Annotation,
    CustomSummary,
    CustomTask,
    FileSource,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    URLSource,
    Workflow,
    WorkflowItem,
)
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseRefusalDeltaEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from openai.types.responses.response_output_text import Annotation as ResponsesAnnotation
from openai.types.responses.response_output_text import (
    AnnotationContainerFileCitation,
    AnnotationFileCitation,
    AnnotationURLCitation,
)
from pydantic import TypeAdapter, ValidationError

from services.agent_service.turn import ACTIVE_AGENT_KEY
from services.common.ids import new_id
from switchboard.app._messages import AssistantMessageStream

_CITATION: Final = TypeAdapter[ResponsesAnnotation](ResponsesAnnotation)


def to_chatkit_annotation(raw: object) -> Annotation | None:
    """A model's citation as ChatKit shows it (chatkit's own conversion: URL citations become URL
    sources, file citations file sources; one without a file name is dropped)."""
    try:
        dump = getattr(raw, "model_dump", None)
        citation = _CITATION.validate_python(dump() if callable(dump) else raw)
    except ValidationError:
        return None
    match citation:
        case AnnotationURLCitation():
            return Annotation(
                source=URLSource(url=citation.url, title=citation.title), index=citation.end_index
            )
        case AnnotationFileCitation(filename=filename) if filename:
            return Annotation(source=FileSource(filename=filename, title=filename), index=citation.index)
        case AnnotationContainerFileCitation(filename=filename) if filename:
            return Annotation(source=FileSource(filename=filename, title=filename), index=citation.end_index)
        case _:
            return None


def _handoff_targets(agent: Agent[Any]) -> list[Agent[Any]]:
    """The agents `agent` can hand off to. A `Handoff` object keeps its agent only as a weak
    reference (an SDK internal, read defensively): without it that agent cannot be resumed."""
    targets: list[Agent[Any]] = []
    for entry in agent.handoffs:
        if isinstance(entry, Agent):
            targets.append(entry)
        elif isinstance(entry, Handoff):
            reference = getattr(entry, "_agent_ref", None)
            target = reference() if callable(reference) else None
            if isinstance(target, Agent):
                targets.append(target)
    return targets


def find_agent(root: Agent[Any], name: object) -> Agent[Any] | None:
    """The agent called `name` in `root`'s handoff graph (breadth first), if any."""
    if not isinstance(name, str):
        return None
    seen: set[int] = set()
    queue: deque[Agent[Any]] = deque([root])
    while queue:
        agent = queue.popleft()
        if id(agent) in seen:
            continue
        seen.add(id(agent))
        if agent.name == name:
            return agent
        queue.extend(_handoff_targets(agent))
    return None


def routed_workflow(thread_id: str, agent_name: str) -> WorkflowItem:
    """The visible trace of a handoff: a finished one-task workflow."""
    return WorkflowItem(
        id=new_id("wf"),
        thread_id=thread_id,
        created_at=datetime.now(UTC),
        workflow=Workflow(
            type="custom",
            tasks=[
                CustomTask(title=f"Routed to the {agent_name}", icon="agent", status_indicator="complete")
            ],
            summary=CustomSummary(title=agent_name, icon="agent"),
            expanded=False,
        ),
    )


class StreamTranslator:
    """Stateful translation of one run; mutates `thread.metadata` when a handoff happens."""

    def __init__(self, thread: ThreadMetadata) -> None:
        self._thread = thread
        self._message: AssistantMessageStream | None = None

    def on_text(self, text: str) -> list[ThreadStreamEvent]:
        """Text the model streamed (one or more of its deltas, already joined): one `text_delta`."""
        return self._delta(text) if text else []

    def on_sdk_event(self, event: StreamEvent) -> list[ThreadStreamEvent]:
        match event:
            case RawResponsesStreamEvent(data=data):
                return self._on_raw(data)
            case RunItemStreamEvent(name="message_output_created"):
                return self._close()
            case RunItemStreamEvent(name="handoff_occured", item=HandoffOutputItem(target_agent=target)):
                return self._close() + self._routed(target.name)
            case RunItemStreamEvent() | AgentUpdatedStreamEvent():
                return []

    def _on_raw(self, data: TResponseStreamEvent) -> list[ThreadStreamEvent]:
        match data:
            case ResponseTextDeltaEvent(delta=delta) | ResponseRefusalDeltaEvent(delta=delta):
                return self._delta(delta) if delta else []
            case ResponseOutputTextAnnotationAddedEvent(annotation=raw) if self._message is not None:
                annotation = to_chatkit_annotation(raw)
                return [self._message.annotate(annotation)] if annotation is not None else []
            case ResponseOutputItemDoneEvent(item=ResponseOutputMessage()):
                return self._close()
            case ResponseTextDoneEvent() | ResponseContentPartDoneEvent() | ResponseCompletedEvent():
                return self._close()
            case _:
                return []

    def on_tool_event(self, event: ThreadStreamEvent) -> list[ThreadStreamEvent]:
        match event:
            case ThreadItemAddedEvent() | ThreadItemDoneEvent():
                return [*self._close(), event]
            case _:
                return [event]

    def finish(self) -> list[ThreadStreamEvent]:
        """Close a message the stream left open (a model that never sent its end events)."""
        return self._close()

    def _delta(self, text: str) -> list[ThreadStreamEvent]:
        if self._message is None:
            self._message = AssistantMessageStream(self._thread.id)
            return [*self._message.start(), self._message.delta(text)]
        return [self._message.delta(text)]

    def _close(self) -> list[ThreadStreamEvent]:
        if self._message is None:
            return []
        message, self._message = self._message, None
        return message.finish()

    def _routed(self, agent_name: str) -> list[ThreadStreamEvent]:
        # A new dict, not an in-place edit: the conversation detects changes by comparing copies.
        self._thread.metadata = {**self._thread.metadata, ACTIVE_AGENT_KEY: agent_name}
        return [ThreadItemDoneEvent(item=routed_workflow(self._thread.id, agent_name))]
