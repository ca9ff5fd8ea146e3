"""Widget actions: what runs when a user presses a button of a widget the app showed.

A widget's `ActionConfig(type=..., payload=..., handler="server")` reaches the app as a call to the
handler registered for that type, with the payload validated against the handler's pydantic model:

    @app.action("faq.more", payload=ArticleRef)
    async def more(ctx: StreamingActionContext[State], ref: ArticleRef) -> None:
        ctx.progress("Looking it up…")
        ctx.reply(await ctx.state.articles.body(ctx.caller.tenant, ref.article_id))

- A **streaming** handler (`App.action`, ChatKit's `threads.custom_action`) returns nothing and
  talks through its context: `progress`, `reply` (an assistant message), `show_widget`, `emit`.
  Its events stream to the user while it runs and are stored with the thread.
- A **synchronous** handler (`App.sync_action`, `threads.sync_custom_action`) returns the updated
  sender widget item (stored in place of the old one) or None.

A type registered only for streaming also accepts a synchronous call: its payload is validated
and nothing else happens. An unknown type, a payload that does not validate, or a streamed call of
a type with only a synchronous handler is refused with `InvalidRequest` (HTTP 400) before anything
runs. A handler raises `SwitchboardError`s to show the user a message: a synchronous handler's
becomes the request's status (400, 404, 403, 503…); a streaming handler runs once the stream has
started (as in ChatKitServer), so its error ends the stream as an `error` event with the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from chatkit.types import WidgetItem
from pydantic import BaseModel

from switchboard.app._context import Caller, StateT, _Emitter
from switchboard.app._messages import assistant_message_events

PayloadT = TypeVar("PayloadT", bound=BaseModel)


@dataclass(slots=True, eq=False)
class ActionContext(Generic[StateT]):
    """A synchronous widget action: who pressed what, in which thread."""

    caller: Caller
    thread_id: str
    sender: WidgetItem | None
    """The widget item whose action this is (None when the client named no item)."""
    state: StateT


@dataclass(slots=True, eq=False)
class StreamingActionContext(_Emitter, Generic[StateT]):
    """A streaming widget action: `ActionContext`'s fields and the helpers that talk to the user."""

    caller: Caller = field(kw_only=True)
    sender: WidgetItem | None = field(kw_only=True)
    state: StateT = field(kw_only=True)

    def reply(self, *chunks: str) -> None:
        """A complete assistant message, streamed as these chunks (one text delta each)."""
        self.reply_stream(chunks)

    def reply_stream(self, chunks: Iterable[str]) -> None:
        for event in assistant_message_events(self.thread_id, chunks):
            self.emit(event)


StreamingHandler = Callable[[StreamingActionContext[StateT], PayloadT], Awaitable[None]]
SyncHandler = Callable[[ActionContext[StateT], PayloadT], Awaitable[WidgetItem | None]]


@dataclass(slots=True)
class ActionRoute(Generic[StateT]):
    """The handlers of one action type and the model its payload must validate against."""

    payload: type[BaseModel]
    streaming: StreamingHandler[StateT, Any] | None = None
    sync: SyncHandler[StateT, Any] | None = None
