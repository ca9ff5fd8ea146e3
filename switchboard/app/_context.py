"""What an app's code knows about the request it serves, and how it talks back to the user.

`ChatContext` is the Agents SDK run context of every turn: tools receive it as
`RunContextWrapper[ChatContext[State]]` (or `ToolContext[...]`), instruction functions too. The
SDK never serialises it, so the verified caller cannot leak into a model request or a tool's JSON
schema, and the model cannot forge it: a tool that reads tenant data takes the tenant from
`ctx.context.caller.tenant`, never from its arguments.

Its helpers put ChatKit events into the turn's stream while the tool runs, interleaved in order
with the model's own output (a progress update arrives while its tool runs, not after):

- `progress(text)`: a progress line under the composer;
- `show_widget(widget)`: a widget item in the thread (stored with it);
- `request_client_tool(call_id, name, arguments)`: ask the user's browser to run a client tool;
  its answer arrives as this call's output on the next turn;
- `show_form(inputs)`: show a structured input form; the answers arrive on the next turn;
- `emit(event)`: any other `chatkit.types.ThreadStreamEvent`.

The last two wait for the user: give the agents that offer such tools
`tool_use_behavior=stop_when_waiting_for_user`, so the run ends right after the tool instead of
calling the model again (the answer can only come in a later request). Each turn asks at most one
client tool and shows at most one form, as ChatKit does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from agents import FunctionToolResult, RunContextWrapper, ToolsToFinalOutputResult
from chatkit.icons import IconName
from chatkit.types import (
    ProgressUpdateEvent,
    StructuredInput,
    StructuredInputItem,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
    WidgetItem,
)
from chatkit.widgets import WidgetRoot

from switchboard.app._ids import new_id

StateT = TypeVar("StateT")
EventSink = Callable[[ThreadStreamEvent], None]
"""Where the helpers put the events they produce (the core connects it to the turn's stream)."""


def _discard(event: ThreadStreamEvent) -> None:
    """The sink of a context used outside a streamed turn (a test calling a tool directly)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as verified from their token: every tenant-scoped read uses `tenant`."""

    tenant: str
    user: str
    role: str
    locale: str
    """The caller's BCP 47 language tag (from `Accept-Language`), e.g. `en-US`."""


@dataclass(frozen=True, slots=True)
class ClientToolRequest:
    """A tool the user's browser must run, and the SDK call id that ties its answer to the call."""

    name: str
    arguments: dict[str, Any]
    call_id: str


def widget_item(thread_id: str, widget: WidgetRoot, copy_text: str | None = None) -> WidgetItem:
    """A widget thread item with a fresh id."""
    return WidgetItem(
        id=new_id("msg"),
        thread_id=thread_id,
        created_at=datetime.now(UTC),
        widget=widget,
        copy_text=copy_text,
    )


@dataclass(slots=True, eq=False)
class _Emitter:
    """The helpers that put ChatKit events into the stream (shared by tools and action handlers)."""

    thread_id: str
    sink: EventSink = field(default=_discard, repr=False, kw_only=True)

    def emit(self, event: ThreadStreamEvent) -> None:
        """Send any ChatKit event to the user (non-blocking)."""
        self.sink(event)

    def progress(self, text: str, *, icon: IconName | None = None) -> None:
        """Show a progress line (`progress_update`); the next item replaces it."""
        self.emit(ProgressUpdateEvent(text=text, icon=icon))

    def show_widget(self, widget: WidgetRoot, *, copy_text: str | None = None) -> WidgetItem:
        """Add a widget to the thread (stored like every item) and return the item."""
        item = widget_item(self.thread_id, widget, copy_text)
        self.emit(ThreadItemDoneEvent(item=item))
        return item


@dataclass(slots=True, eq=False)
class ChatContext(_Emitter, Generic[StateT]):
    """The run context of one turn (module docstring). A new one is built for every turn."""

    caller: Caller = field(kw_only=True)
    state: StateT = field(kw_only=True)
    """What the app's `startup` returned (its pools and clients), shared by every turn."""
    client_tool_call: ClientToolRequest | None = field(default=None, kw_only=True)
    """The client tool this turn asks the browser to run, if any."""
    structured_input_id: str | None = field(default=None, kw_only=True)
    """The id of the form this turn showed, if any."""

    @property
    def waiting_for_user(self) -> bool:
        """Whether this turn asked the browser for a client tool or showed a form."""
        return self.client_tool_call is not None or self.structured_input_id is not None

    def request_client_tool(self, call_id: str, name: str, arguments: dict[str, Any]) -> bool:
        """Ask the browser to run the client tool `name` (the `onClientTool` handler of the ChatKit
        UI); `call_id` is the calling tool's `ToolContext.tool_call_id`.

        Returns False, and asks nothing, when this turn already asked for one.
        """
        if self.client_tool_call is not None:
            return False
        self.client_tool_call = ClientToolRequest(name=name, arguments=arguments, call_id=call_id)
        return True

    def show_form(self, inputs: Sequence[StructuredInput]) -> StructuredInputItem | None:
        """Show a pending structured input form with these questions and return it; None, and
        nothing shown, when this turn already showed one."""
        if self.structured_input_id is not None:
            return None
        form = StructuredInputItem(
            id=new_id("msg"),
            thread_id=self.thread_id,
            created_at=datetime.now(UTC),
            status="pending",
            inputs=list(inputs),
        )
        self.structured_input_id = form.id
        self.emit(ThreadItemDoneEvent(item=form))
        return form


def stop_when_waiting_for_user(
    context: RunContextWrapper[Any], results: list[FunctionToolResult]
) -> ToolsToFinalOutputResult:
    """A `tool_use_behavior`: end the run after tools that wait for the user (a client tool request
    or a form); otherwise let the model run again with the tools' output, as by default."""
    chat = context.context
    if isinstance(chat, ChatContext) and chat.waiting_for_user:
        return ToolsToFinalOutputResult(
            is_final_output=True, final_output=results[-1].output if results else None
        )
    return ToolsToFinalOutputResult(is_final_output=False)
