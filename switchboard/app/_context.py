"""What an app's code knows about the request it serves, and how it talks back to the user.

`ChatContext` is the Agents SDK run context of every turn: tools receive it as
`RunContextWrapper[ChatContext[State]]` (or `ToolContext[...]`), instruction functions too. The
SDK never serialises it, so the verified caller cannot leak into a model request or a tool's JSON
schema, and the model cannot forge it: a tool that reads tenant data takes the tenant from
`ctx.context.caller.tenant`, never from its arguments.

Its helpers put ChatKit events into the turn's stream while the tool runs, interleaved in order
with the model's own output (a progress update arrives while its tool runs, not after):

- `progress(text)`: a progress line under the composer;
- `notice(message, level=...)`: a notice (info, warning or danger) above the composer;
- `client_effect(name, data)`: an effect for the host page (the ChatKit UI's `onEffect`), e.g.
  "refresh the cart"; gRPC callers receive it as a stream event too;
- `show_widget(widget)`: a widget item in the thread (stored with it);
- `stream_widget(widgets)`: a widget that fills in while the tool works: the first root is shown at
  once, every later one is sent as the difference from the one before (chatkit's `diff_widget`:
  streamed text values, component or root updates), the last one is stored;
- `show_image(data)`: a generated image, stored with the thread's attachments (the thread's
  deletion deletes it); its URL is minted for each reader, like an attachment preview;
- `remove_item(item_id)`: remove an item of this thread from the user's view and from the store
  (so from the model's history too);
- `start_workflow(workflow)`, `add_workflow_task(task)`, `update_workflow_task(task, index)`,
  `end_workflow(summary)`: a workflow item whose tasks appear and change while the tool works, with
  the same events and order rules as chatkit's `AgentContext` (a custom workflow is announced with
  its first task; ending it without a summary records its duration);
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

import base64
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from agents import FunctionToolResult, RunContextWrapper, ToolsToFinalOutputResult
from chatkit.icons import IconName
from chatkit.server import stream_widget
from chatkit.types import (
    ClientEffectEvent,
    DurationSummary,
    GeneratedImage,
    GeneratedImageItem,
    GeneratedImageUpdated,
    NoticeEvent,
    ProgressUpdateEvent,
    StructuredInput,
    StructuredInputItem,
    Task,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    WidgetItem,
    Workflow,
    WorkflowItem,
    WorkflowSummary,
    WorkflowTaskAdded,
    WorkflowTaskUpdated,
)
from chatkit.widgets import WidgetRoot

from switchboard.app._errors import InvalidRequest, Unavailable
from switchboard.app._ids import new_id

StateT = TypeVar("StateT")
EventSink = Callable[[ThreadStreamEvent], None]
"""Where the helpers put the events they produce (the core connects it to the turn's stream)."""
ImageStore = Callable[[bytes, str, str], Awaitable[GeneratedImage]]
"""Stores a generated image (bytes, MIME type, file name) with the thread; the core provides it."""
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_PARTIAL_IMAGES = 8
MAX_PARTIAL_BYTES = 1024 * 1024


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
    image_store: ImageStore | None = field(default=None, repr=False, kw_only=True)
    """Set by the core when generated images can be stored (an upload service is configured)."""
    workflow_item: WorkflowItem | None = field(default=None, repr=False, kw_only=True)
    """The workflow being streamed, between `start_workflow` (or a first task) and `end_workflow`."""

    def emit(self, event: ThreadStreamEvent) -> None:
        """Send any ChatKit event to the user (non-blocking)."""
        self.sink(event)

    def progress(self, text: str, *, icon: IconName | None = None) -> None:
        """Show a progress line (`progress_update`); the next item replaces it."""
        self.emit(ProgressUpdateEvent(text=text, icon=icon))

    def notice(
        self, message: str, *, level: Literal["info", "warning", "danger"] = "info", title: str | None = None
    ) -> None:
        """Show a notice (markdown allowed) above the composer; it is not stored with the thread."""
        self.emit(NoticeEvent(level=level, message=message, title=title))

    def client_effect(self, name: str, data: dict[str, Any] | None = None) -> None:
        """Ask the host page to do something (`onEffect({name, data})` in the ChatKit UI)."""
        if not name:
            raise ValueError("a client effect needs a name")
        self.emit(ClientEffectEvent(name=name, data=data or {}))

    def remove_item(self, item_id: str) -> None:
        """Remove an item of this thread: from the user's view now, and from the store (and so
        from the model's history) when the core receives the event. Unknown ids change nothing."""
        self.emit(ThreadItemRemovedEvent(item_id=item_id))

    def start_workflow(self, workflow: Workflow) -> None:
        """Begin a workflow item; a custom one without tasks is announced with its first task."""
        self.workflow_item = WorkflowItem(
            id=new_id("wf"), thread_id=self.thread_id, created_at=datetime.now(UTC), workflow=workflow
        )
        if workflow.type == "reasoning" or workflow.tasks:
            self.emit(ThreadItemAddedEvent(item=self.workflow_item.model_copy(deep=True)))

    def add_workflow_task(self, task: Task) -> int:
        """Append a task to the workflow (starting a custom one if none is active); its index."""
        if self.workflow_item is None:
            self.workflow_item = WorkflowItem(
                id=new_id("wf"),
                thread_id=self.thread_id,
                created_at=datetime.now(UTC),
                workflow=Workflow(type="custom", tasks=[]),
            )
        workflow = self.workflow_item.workflow
        workflow.tasks.append(task)
        index = len(workflow.tasks) - 1
        if workflow.type != "reasoning" and index == 0:
            self.emit(ThreadItemAddedEvent(item=self.workflow_item.model_copy(deep=True)))
        else:
            update = WorkflowTaskAdded(task=task.model_copy(deep=True), task_index=index)
            self.emit(ThreadItemUpdatedEvent(item_id=self.workflow_item.id, update=update))
        return index

    def update_workflow_task(self, task: Task, task_index: int) -> None:
        """Replace the task at `task_index` (its status, title…)."""
        if self.workflow_item is None or not 0 <= task_index < len(self.workflow_item.workflow.tasks):
            raise ValueError("no such workflow task")
        self.workflow_item.workflow.tasks[task_index] = task
        update = WorkflowTaskUpdated(task=task.model_copy(deep=True), task_index=task_index)
        self.emit(ThreadItemUpdatedEvent(item_id=self.workflow_item.id, update=update))

    def end_workflow(self, summary: WorkflowSummary | None = None, *, expanded: bool = False) -> None:
        """Finish the workflow (stored with the thread); without a summary, its duration."""
        item = self.workflow_item
        if item is None:
            return
        if summary is not None:
            item.workflow.summary = summary
        elif item.workflow.summary is None:
            item.workflow.summary = DurationSummary(
                duration=int((datetime.now(UTC) - item.created_at).total_seconds())
            )
        item.workflow.expanded = expanded
        self.workflow_item = None
        self.emit(ThreadItemDoneEvent(item=item))

    async def stream_widget(
        self, widgets: AsyncGenerator[WidgetRoot, None], *, copy_text: str | None = None
    ) -> WidgetItem:
        """Show a widget that changes while the tool works (module docstring); returns the stored item.

        Uses chatkit's own `stream_widget`, so the events and their order are what `ChatKitServer`
        sends for the same widgets.
        """
        thread = ThreadMetadata(id=self.thread_id, created_at=datetime.now(UTC))
        final: WidgetItem | None = None
        async for event in stream_widget(thread, widgets, copy_text, generate_id=lambda _: new_id("msg")):
            if isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, WidgetItem):
                final = event.item
            self.emit(event)
        if final is None:
            raise ValueError("the widget generator yielded no widget")
        return final

    async def show_image(
        self,
        data: bytes,
        *,
        mime_type: str = "image/png",
        name: str = "image.png",
        partials: Sequence[bytes] = (),
    ) -> GeneratedImageItem:
        """Store a generated image with the thread and show it (module docstring).

        The item is announced first (`thread.item.added`, no image yet: the UI shows a placeholder),
        then each of `partials` (drafts, e.g. the partial images of an image model) is shown as a
        `generated_image.updated` with a `data:` URL and its progress (index / count, as chatkit
        reports partial images), and the item is completed once the image is stored; if storing
        fails, the placeholder is removed and the error raised (`Unavailable` when this server
        cannot store images at all). Partials are not stored.
        """
        if mime_type not in IMAGE_TYPES:
            raise InvalidRequest(f"a generated image must be one of {', '.join(sorted(IMAGE_TYPES))}")
        if not data or len(data) > MAX_IMAGE_BYTES:
            raise InvalidRequest(f"a generated image has 1 to {MAX_IMAGE_BYTES} bytes")
        if len(partials) > MAX_PARTIAL_IMAGES or any(len(p) > MAX_PARTIAL_BYTES for p in partials):
            raise InvalidRequest(
                f"at most {MAX_PARTIAL_IMAGES} partial images of {MAX_PARTIAL_BYTES} bytes each"
            )
        if self.image_store is None:
            raise Unavailable("images cannot be stored on this server (no upload service)")
        item = GeneratedImageItem(id=new_id("msg"), thread_id=self.thread_id, created_at=datetime.now(UTC))
        self.emit(ThreadItemAddedEvent(item=item))
        for index, partial in enumerate(partials):
            draft = GeneratedImage(
                id=item.id, url=f"data:{mime_type};base64,{base64.b64encode(partial).decode()}"
            )
            update = GeneratedImageUpdated(image=draft, progress=index / len(partials))
            self.emit(ThreadItemUpdatedEvent(item_id=item.id, update=update))
        try:
            image = await self.image_store(data, mime_type, name)
        except BaseException:
            self.emit(ThreadItemRemovedEvent(item_id=item.id))
            raise
        done = item.model_copy(update={"image": image})
        self.emit(ThreadItemDoneEvent(item=done))
        return done

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
