"""The contract between the conversation (persistence, ChatKit semantics) and the agents.

The conversation loads what a turn needs, hands it to a `Responder`, persists the ChatKit events the
responder yields (items when they are done, never per token) and forwards them to the caller. The
responder knows nothing of storage or gRPC: it turns a thread's history into agent runs and agent
runs into `chatkit.types` events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from chatkit.actions import Action
from chatkit.types import ThreadItem, ThreadMetadata, ThreadStreamEvent, UserMessageItem, WidgetItem

from services.common.auth import Principal
from services.limits import UsageMeter
from switchboard.app._context import ImageStore

ACTIVE_AGENT_KEY = "active_agent"
"""Key in `ThreadMetadata.metadata` that holds the name of the agent who answers the next turn."""


class AttachmentReader(Protocol):
    async def read(self, attachment_id: str, max_bytes: int) -> bytes:
        """At most `max_bytes` of an attachment the caller owns."""
        ...


@dataclass(slots=True)
class Turn:
    """One request for the assistant to respond.

    `thread` is mutable on purpose: a responder may set `thread.title` or
    `thread.metadata[ACTIVE_AGENT_KEY]`; the conversation saves the change and, when the title
    changed, sends `thread.updated`, as ChatKitServer does.
    """

    thread: ThreadMetadata
    history: list[ThreadItem]
    """Oldest first, bounded, ending with the newest item (the user message being answered, or the
    completed client tool call / answered structured input). Hidden context items are included."""
    principal: Principal
    locale: str
    input_user_message: UserMessageItem | None
    """The user message this turn answers; None after a client tool output or structured input."""
    attachments: AttachmentReader | None = None
    """Reads attachment bytes for the model input, on the caller's behalf (None: no upload service)."""
    images: ImageStore | None = None
    """Stores generated images with this thread, on the caller's behalf (None: no upload service)."""
    usage: UsageMeter | None = None
    """Where the responder counts the turn's model tokens (by model, as reported) and tool calls;
    the conversation writes them with the turn's items."""


@dataclass(slots=True)
class ActionRequest:
    """A server-handled widget action (`threads.custom_action` / `threads.sync_custom_action`)."""

    thread: ThreadMetadata
    action: Action[str, Any]
    sender: WidgetItem | None
    principal: Principal
    locale: str
    images: ImageStore | None = None
    """Stores generated images with this thread (None: no upload service)."""


class Responder(Protocol):
    def respond(self, turn: Turn) -> AsyncIterator[ThreadStreamEvent]:
        """Stream the assistant's answer. Must stop the agent run when the iterator is closed or
        cancelled (`RunResultStreaming.cancel()` in a `finally`)."""
        ...

    def check_action(self, action: Action[str, Any], *, streaming: bool = True) -> object:
        """Refuse an action nobody handles, or with an invalid payload, before anything runs
        (raises `InvalidRequest`); returns the validated payload."""
        ...

    def action(self, request: ActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        """Stream what a server-handled widget action produces."""
        ...

    async def sync_action(self, request: ActionRequest) -> ThreadItem | None:
        """Handle a non-streaming widget action; return the updated sender item, if any."""
        ...
