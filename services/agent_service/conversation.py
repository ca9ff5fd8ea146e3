"""One ChatKit operation from request to events: validate, persist, run the responder, stream.

This mirrors `chatkit.server.ChatKitServer` (openai-chatkit 1.6.5) so that a thread behaves the same
whether it is served by the official SDK or by Switchboard:

- the user message is stored and emitted (`thread.item.done`) before `stream_options` and before the
  agents run;
- items are stored when they are done (`thread.item.done` / `.replaced` / `.removed`); token deltas
  only update an in-memory copy of the pending item, so the hot path never writes;
- when the caller goes away (cancellation, deadline), the agent run is stopped first, then the
  partial assistant text and a hidden "the user cancelled" note are stored;
- an exception from the agents becomes a ChatKit `error` event and the stream ends normally.

Scale-out: nothing about a thread lives in this process between requests (the active specialist is
in the thread metadata, pending client tool calls and forms are items), so any replica can serve
any request. Every streaming operation holds the thread's run lease (`store/lease.py`) from before
its first write until after its last: a second run on a busy thread, on any replica, is refused with
ABORTED (HTTP 409) before it changes anything. Changes that belong together are one transaction
(`Store.write`): an item and the thread state that came with it (a handoff's active specialist with
its "routed" item), a completed client tool call with the removal of dangling ones, a cancelled
turn's partial answer with its note.

A turn costs few transactions (each is a trip to the database): a new thread is created with its
run lease taken and the user message stored in one (`Store.start_thread`; its history is that
message, nothing to read back); an existing thread is leased and read, ownership first, in one
(`Store.lease_thread`); the user message is stored and the model's history read back in one
(`Store.write_recent`). Then one write per finished item, and the lease's release.

Where ChatKitServer is silent or lenient, Switchboard is strict, and it checks everything before it
writes anything: a retry of an unknown item is NOT_FOUND (the SDK streams nothing), a client tool
output without a pending call or an input to a locked thread is FAILED_PRECONDITION, and unknown
attachment ids are INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

from chatkit.actions import Action
from chatkit.errors import CustomStreamError, ErrorCode, StreamError
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageContentPartAdded,
    AssistantMessageContentPartDone,
    AssistantMessageContentPartTextDelta,
    AssistantMessageItem,
    Attachment,
    ClientToolCallItem,
    ErrorEvent,
    GeneratedImage,
    GeneratedImageItem,
    HiddenContextItem,
    ImageAttachment,
    Page,
    SDKHiddenContextItem,
    StreamOptions,
    StreamOptionsEvent,
    StructuredInputAnswer,
    StructuredInputItem,
    StructuredInputMultipleChoice,
    StructuredInputSubmission,
    Thread,
    ThreadCreatedEvent,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemReplacedEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    ThreadUpdatedEvent,
    UserMessageInput,
    UserMessageItem,
    WidgetItem,
)
from pydantic import AnyUrl, TypeAdapter

from services.agent_service.attachments import STORED_PREVIEW_URL, AttachmentClient
from services.agent_service.store import KnownTitle, LeaseLost, Order, RunLease, Store, shielded
from services.agent_service.turn import ActionRequest, Responder, Turn
from services.common.auth import Principal
from services.common.errors import invalid
from services.common.ids import new_id
from services.limits import Admission, Limits, UsageDelta, UsageMeter
from switchboard.app import PreconditionFailed, SwitchboardError
from switchboard.app._context import ImageStore

log = logging.getLogger(__name__)

CANCELLED_NOTE: Final = "The user cancelled the stream. Stop responding to the prior request."
MAX_MESSAGE_CHARS: Final = 32_000
MAX_CONTENT_PARTS: Final = 64
MAX_ATTACHMENTS: Final = 20
MAX_TITLE_CHARS: Final = 200
MAX_PAGE: Final = 100
DEFAULT_PAGE: Final = 20
_HIDDEN: Final = (HiddenContextItem, SDKHiddenContextItem)
_ThreadState = tuple[str | None, Any, dict[str, Any]]
_ITEM: Final = TypeAdapter[ThreadItem](ThreadItem)


def _state(thread: ThreadMetadata) -> _ThreadState:
    """What the store keeps of a thread besides its id: title, status and metadata (a copy)."""
    return (thread.title, thread.status, dict(thread.metadata))


def _now() -> datetime:
    return datetime.now(UTC)


def thread_response(thread: ThreadMetadata, items: Page[ThreadItem] | None = None) -> Thread:
    """The client's view of a thread: hidden items and server-side metadata left out."""
    visible = Page[ThreadItem]()
    if items is not None:
        visible = Page(
            data=[item for item in items.data if not isinstance(item, _HIDDEN)],
            has_more=items.has_more,
            after=items.after,
        )
    return Thread(
        id=thread.id,
        title=thread.title,
        created_at=thread.created_at,
        status=thread.status,
        allowed_image_domains=thread.allowed_image_domains,
        items=visible,
    )


def page_params(limit: int, order: str) -> tuple[int, Order]:
    if limit < 0 or limit > MAX_PAGE:
        raise invalid(f"limit must be between 1 and {MAX_PAGE}")
    if order not in ("", "asc", "desc"):
        raise invalid("order must be 'asc' or 'desc'")
    return (limit or DEFAULT_PAGE), ("asc" if order == "asc" else "desc")


def _validate_input(message: UserMessageInput) -> None:
    if not message.content and not message.attachments:
        raise invalid("the message is empty")
    if len(message.content) > MAX_CONTENT_PARTS:
        raise invalid(f"a message has at most {MAX_CONTENT_PARTS} content parts")
    size = sum(len(part.text) for part in message.content) + len(message.quoted_text or "")
    if size > MAX_MESSAGE_CHARS:
        raise invalid(f"a message has at most {MAX_MESSAGE_CHARS} characters")
    if len(message.attachments) > MAX_ATTACHMENTS:
        raise invalid(f"a message has at most {MAX_ATTACHMENTS} attachments")
    if len(set(message.attachments)) != len(message.attachments):
        raise invalid("an attachment is listed twice")


def _ensure_open(thread: ThreadMetadata) -> None:
    if thread.status.type != "active":
        raise PreconditionFailed(f"thread {thread.id!r} is {thread.status.type}")


class _PendingItems:
    """Items announced with `thread.item.added` but not done yet, kept current from their updates.

    Text deltas are collected as lists of chunks and joined only when the item is needed (on
    cancellation), so following a long answer stays linear.
    """

    def __init__(self) -> None:
        self._items: dict[str, ThreadItem] = {}
        self._chunks: dict[tuple[str, int], list[str]] = {}

    def added(self, item: ThreadItem) -> None:
        self._items[item.id] = item.model_copy(deep=True)

    def finished(self, item_id: str) -> None:
        self._items.pop(item_id, None)
        for key in [key for key in self._chunks if key[0] == item_id]:
            del self._chunks[key]

    def updated(self, event: ThreadItemUpdatedEvent) -> None:
        item = self._items.get(event.item_id)
        if not isinstance(item, AssistantMessageItem):
            return
        match event.update:
            case AssistantMessageContentPartTextDelta(content_index=index, delta=delta):
                self._chunks.setdefault((item.id, index), []).append(delta)
            case AssistantMessageContentPartAdded(content_index=index, content=content) | (
                AssistantMessageContentPartDone(content_index=index, content=content)
            ):
                while len(item.content) <= index:
                    item.content.append(AssistantMessageContent(text=""))
                item.content[index] = content.model_copy(deep=True)
                self._chunks.pop((item.id, index), None)
            case _:
                pass

    def partial_assistant_messages(self) -> list[AssistantMessageItem]:
        """Pending assistant messages with the text they had so far (empty ones left out)."""
        messages = []
        for item in self._items.values():
            if not isinstance(item, AssistantMessageItem):
                continue
            for (item_id, index), chunks in self._chunks.items():
                if item_id == item.id:
                    while len(item.content) <= index:
                        item.content.append(AssistantMessageContent(text=""))
                    item.content[index].text += "".join(chunks)
            if any(part.text.strip() for part in item.content):
                messages.append(item)
        return messages


def _user_message(
    thread: ThreadMetadata, message: UserMessageInput, attachments: list[Attachment]
) -> UserMessageItem:
    return UserMessageItem(
        id=new_id("msg"),
        thread_id=thread.id,
        created_at=_now(),
        content=message.content,
        attachments=attachments,
        quoted_text=message.quoted_text,
        inference_options=message.inference_options,
    )


def _for_storage(item: ThreadItem) -> ThreadItem:
    """The item as stored: image preview URLs and generated image URLs replaced by placeholders
    (fresh ones are minted whenever the item is read)."""
    if isinstance(item, GeneratedImageItem) and item.image is not None:
        image = item.image.model_copy(update={"url": STORED_PREVIEW_URL.format(id=item.image.id)})
        return item.model_copy(update={"image": image})
    if not isinstance(item, UserMessageItem) or not any(
        isinstance(a, ImageAttachment) for a in item.attachments
    ):
        return item
    stored = item.model_copy(deep=True)
    for attachment in stored.attachments:
        if isinstance(attachment, ImageAttachment):
            attachment.preview_url = AnyUrl(STORED_PREVIEW_URL.format(id=attachment.id))
    return stored


class Conversation:
    def __init__(
        self,
        store: Store,
        responder: Responder,
        *,
        history_items: int,
        attachments: AttachmentClient | None = None,
        lease_ttl_s: float = 15.0,
        lease_wait_s: float = 0.0,
        limits: Limits | None = None,
    ) -> None:
        """`limits`: the default limits every request is checked against (None: limits off)."""
        self._store = store
        self._responder = responder
        self._history_items = history_items
        self._attachments = attachments
        self._lease_ttl_s = lease_ttl_s
        self._lease_wait_s = lease_wait_s
        self._limits = limits

    async def admit(self, owner: Principal, *, budget: bool = False) -> None:
        """A request that starts no response: one request of the owner's rate (`LimitReached`).
        `budget`: the request spends model tokens (dictation through the provider), so it is also
        refused once the tenant's `tokens_per_day` is used up, in the same transaction."""
        if self._limits is not None:
            await self._store.admit(owner, Admission(self._limits, budget=budget))

    async def record_usage(self, owner: Principal, usage: UsageDelta | None) -> None:
        """Usage of a request that stores nothing else (dictation's model tokens), added in a
        transaction of its own (to the tenant's tokens of the day too, which the budget reads).
        Shielded: the provider has spent the tokens, a caller that hangs up meanwhile does not undo
        that. Nothing is written for no usage; a failure is raised (the caller decides)."""
        if usage:
            await shielded(self._store.record_usage(owner, usage))

    def _lease(self, thread_id: str) -> RunLease:
        return RunLease(self._store, thread_id, ttl_s=self._lease_ttl_s, wait_s=self._lease_wait_s)

    @contextlib.asynccontextmanager
    async def _leased(
        self, owner: Principal, thread_id: str
    ) -> AsyncIterator[tuple[ThreadMetadata, RunLease]]:
        """Hold the run lease on the owner's thread and read it under the lease, in one transaction
        (`Store.lease_thread`): another user's thread is NOT_FOUND, never "busy"; the thread is read
        after the previous run on it ended, whatever it changed just before."""
        lease = self._lease(thread_id)
        admission = Admission(self._limits, run=True)

        async def claim() -> ThreadMetadata:
            return await self._store.lease_thread(
                owner, thread_id, holder=lease.holder, ttl_s=lease.ttl_s, admission=admission
            )

        async with lease.holding(claim) as thread:
            yield thread, lease

    async def _attach(self, thread_id: str, message: UserMessageInput) -> list[Attachment]:
        """Bind the message's attachments to the thread: all validated before anything is written."""
        if not message.attachments:
            return []
        if self._attachments is None:
            raise invalid("attachments are not enabled on this server")
        return await self._attachments.attach(thread_id, message.attachments)

    def _image_store(self, thread_id: str) -> ImageStore | None:
        attachments = self._attachments
        if attachments is None:
            return None

        async def store(data: bytes, mime_type: str, name: str) -> GeneratedImage:
            return await attachments.store_image(thread_id, data, mime_type, name)

        return store

    async def _fresh(self, items: list[ThreadItem]) -> None:
        if self._attachments is not None:
            await self._attachments.with_fresh_urls(items)

    # ------------------------------------------------------------------ streaming operations

    async def create_thread(
        self, owner: Principal, locale: str, message: UserMessageInput
    ) -> AsyncIterator[ThreadStreamEvent]:
        _validate_input(message)
        thread = ThreadMetadata(id=new_id("thr"), created_at=_now())
        # The client may post to the thread as soon as it sees `thread.created`: the lease covers
        # this first turn like any other. Without attachments, one transaction creates the thread,
        # takes the lease and stores the user message (`Store.start_thread`). With attachments, the
        # thread is created (and leased) first and the attachments are bound to it only then, so a
        # failed create never leaves them bound to a thread that does not exist: if binding fails,
        # the new thread is deleted again and the attachments stay free to use.
        lease = self._lease(thread.id)
        item = _user_message(thread, message, [])
        stored = _for_storage(item)
        meter = UsageMeter(turns=1, conversations=1)
        # Without attachments, the turn and the conversation count in the transaction that
        # stores the message; with them, in the write that stores the message once they are bound.
        counted = None if message.attachments else meter.take()

        async def start() -> None:
            await self._store.start_thread(
                owner,
                thread,
                holder=lease.holder,
                ttl_s=lease.ttl_s,
                items=[] if message.attachments else [stored],
                admission=Admission(self._limits, run=True, record=counted),
            )

        async with lease.holding(start):
            if message.attachments:
                try:
                    attachments = await self._attach(thread.id, message)
                except BaseException:
                    await shielded(self._discard(owner, thread.id))
                    raise
                item = _user_message(thread, message, attachments)
                stored = _for_storage(item)
                await self._store.write(
                    owner, thread.id, items=[stored], fence=lease.fence, usage=meter.take()
                )
            yield ThreadCreatedEvent(thread=thread_response(thread))
            yield ThreadItemDoneEvent(item=item)
            # A new thread's history is the message just stored, exactly as `recent_items` would read
            # it back (a parsed copy of the stored JSON, not the object the client was sent).
            history: list[ThreadItem] = []
            if self._history_items > 0:
                history.append(_ITEM.validate_json(stored.model_dump_json(exclude_none=True)))
            async with _closing(self._run(owner, locale, thread, item, lease, meter, history)) as events:
                async for event in events:
                    yield event

    async def _discard(self, owner: Principal, thread_id: str) -> None:
        """Delete a thread whose creation failed half-way (best effort: logged when it fails)."""
        try:
            await self._store.delete_thread(owner, thread_id)
        except Exception:
            log.exception("could not delete the half-created thread %s", thread_id)

    async def add_user_message(
        self, owner: Principal, locale: str, thread_id: str, message: UserMessageInput
    ) -> AsyncIterator[ThreadStreamEvent]:
        _validate_input(message)
        async with self._leased(owner, thread_id) as (thread, lease):
            _ensure_open(thread)
            attachments = await self._attach(thread.id, message)
            item = _user_message(thread, message, attachments)
            meter = UsageMeter(turns=1)
            # Store the message and read the model's history (ending with it) in one transaction.
            history = await self._store.write_recent(
                owner,
                thread.id,
                items=[_for_storage(item)],
                fence=lease.fence,
                limit=self._history_items,
                usage=meter.take(),
            )
            yield ThreadItemDoneEvent(item=item)
            async with _closing(self._run(owner, locale, thread, item, lease, meter, history)) as events:
                async for event in events:
                    yield event

    async def add_client_tool_output(
        self, owner: Principal, locale: str, thread_id: str, result: Any
    ) -> AsyncIterator[ThreadStreamEvent]:
        async with self._leased(owner, thread_id) as (thread, lease):
            _ensure_open(thread)
            recent = await self._store.list_items(
                owner, thread_id, limit=DEFAULT_PAGE, after=None, order="desc"
            )
            call = next(iter(recent.data), None)
            if not isinstance(call, ClientToolCallItem) or call.status != "pending":
                raise PreconditionFailed(
                    f"thread {thread_id!r} has no pending client tool call",
                )
            call.output = result
            call.status = "completed"
            # As ChatKitServer does: drop other dangling pending calls so they never reach the model.
            dangling = [
                item
                for item in recent.data[1:]
                if isinstance(item, ClientToolCallItem) and item.status == "pending"
            ]
            for item in dangling:
                log.warning("dropping dangling client tool call %s", item.call_id)
            meter = UsageMeter(turns=1)
            await self._store.write(
                owner,
                thread_id,
                items=[call],
                deleted=[item.id for item in dangling],
                fence=lease.fence,
                usage=meter.take(),
            )
            async with _closing(self._run(owner, locale, thread, None, lease, meter)) as events:
                async for event in events:
                    yield event

    async def add_structured_input(
        self,
        owner: Principal,
        locale: str,
        thread_id: str,
        item_id: str,
        submission: StructuredInputSubmission,
    ) -> AsyncIterator[ThreadStreamEvent]:
        async with self._leased(owner, thread_id) as (thread, lease):
            _ensure_open(thread)
            item = await self._store.load_item(owner, thread_id, item_id)
            if not isinstance(item, StructuredInputItem):
                raise invalid(f"item {item_id!r} is not a structured input")
            if item.status != "pending":
                raise PreconditionFailed(f"item {item_id!r} was already answered")
            answered = _apply_submission(item, submission)
            meter = UsageMeter(turns=1)

            async def replaced_then_respond() -> AsyncIterator[ThreadStreamEvent]:
                yield ThreadItemReplacedEvent(item=answered)
                turn = await self._turn(owner, locale, thread, None, meter)
                async with _closing(self._responder.respond(turn)) as events:
                    async for event in events:
                        yield event

            async with _closing(
                self._process(owner, thread, replaced_then_respond(), lease, meter)
            ) as events:
                async for event in events:
                    yield event

    async def retry_after_item(
        self, owner: Principal, locale: str, thread_id: str, item_id: str
    ) -> AsyncIterator[ThreadStreamEvent]:
        async with self._leased(owner, thread_id) as (thread, lease):
            _ensure_open(thread)
            item = await self._store.load_item(owner, thread_id, item_id)
            if not isinstance(item, UserMessageItem):
                raise invalid(f"item {item_id!r} is not a user message")
            await self._store.delete_items_after(owner, thread_id, item_id)
            meter = UsageMeter(turns=1)
            async with _closing(self._run(owner, locale, thread, item, lease, meter)) as events:
                async for event in events:
                    yield event

    async def custom_action(
        self, owner: Principal, locale: str, thread_id: str, item_id: str | None, action: Action[str, Any]
    ) -> AsyncIterator[ThreadStreamEvent]:
        # Loading the sender checks ownership; without one, `_leased` does.
        sender = await self._store.load_item(owner, thread_id, item_id) if item_id else None
        if sender is not None and not isinstance(sender, WidgetItem):
            # ChatKitServer answers a non-widget sender with a lone error event.
            yield ErrorEvent(code=ErrorCode.STREAM_ERROR, allow_retry=False)
            return
        async with self._leased(owner, thread_id) as (thread, lease):
            # Refused before the stream starts (HTTP 400), after the ownership check (404 first).
            self._responder.check_action(action)
            request = ActionRequest(
                thread=thread,
                action=action,
                sender=sender,
                principal=owner,
                locale=locale,
                images=self._image_store(thread.id),
            )
            async with _closing(
                self._process(owner, thread, self._responder.action(request), lease, UsageMeter())
            ) as events:
                async for event in events:
                    yield event

    # ------------------------------------------------------------------ unary operations

    async def sync_custom_action(
        self, owner: Principal, locale: str, thread_id: str, item_id: str | None, action: Action[str, Any]
    ) -> ThreadItem | None:
        await self.admit(owner)
        thread = await self._store.load_thread(owner, thread_id)
        sender = await self._store.load_item(owner, thread_id, item_id) if item_id else None
        if sender is not None and not isinstance(sender, WidgetItem):
            raise invalid(f"item {item_id!r} is not a widget")
        request = ActionRequest(thread=thread, action=action, sender=sender, principal=owner, locale=locale)
        updated = await self._responder.sync_action(request)
        if updated is not None:
            # ChatKitServer leaves persisting to the integration; the widget must survive a reload.
            await self._store.add_item(owner, thread_id, updated)
        return updated

    async def get_thread(self, owner: Principal, thread_id: str) -> Thread:
        await self.admit(owner)
        thread = await self._store.load_thread(owner, thread_id)
        items = await self._store.list_items(owner, thread_id, limit=DEFAULT_PAGE, after=None, order="asc")
        await self._fresh(items.data)
        return thread_response(thread, items)

    async def list_threads(
        self, owner: Principal, *, limit: int, order: str, after: str | None
    ) -> Page[Thread]:
        size, direction = page_params(limit, order)
        await self.admit(owner)
        page = await self._store.list_threads(owner, limit=size, after=after, order=direction)
        return Page(data=[thread_response(t) for t in page.data], has_more=page.has_more, after=page.after)

    async def update_thread(self, owner: Principal, thread_id: str, title: str) -> Thread:
        title = title.strip()
        if not title or len(title) > MAX_TITLE_CHARS:
            raise invalid(f"a title has 1 to {MAX_TITLE_CHARS} characters")
        await self.admit(owner)
        # Title only: a turn running meanwhile keeps its status and metadata (store.rename_thread).
        thread = await self._store.rename_thread(owner, thread_id, title)
        return thread_response(thread)

    async def delete_thread(self, owner: Principal, thread_id: str) -> None:
        """Delete the thread's attachments first: if the upload service cannot, nothing is deleted."""
        await self.admit(owner)
        await self._store.load_thread(owner, thread_id)
        if self._attachments is not None:
            await self._attachments.delete_thread(thread_id)
        await self._store.delete_thread(owner, thread_id)

    async def list_items(
        self, owner: Principal, thread_id: str, *, limit: int, order: str, after: str | None
    ) -> Page[ThreadItem]:
        size, direction = page_params(limit, order)
        await self.admit(owner)
        page = await self._store.list_items(owner, thread_id, limit=size, after=after, order=direction)
        # Filtered after paging, as ChatKitServer does: a page may be shorter than the limit.
        page.data = [item for item in page.data if not isinstance(item, _HIDDEN)]
        await self._fresh(page.data)
        return page

    async def add_feedback(self, owner: Principal, thread_id: str, item_ids: list[str], kind: str) -> None:
        if kind not in ("positive", "negative"):
            raise invalid("kind must be 'positive' or 'negative'")
        if not item_ids or len(item_ids) > MAX_PAGE:
            raise invalid(f"item_ids needs 1 to {MAX_PAGE} ids")
        await self.admit(owner)
        await self._store.add_feedback(
            owner, thread_id, item_ids, "positive" if kind == "positive" else "negative"
        )

    # ------------------------------------------------------------------ the turn

    async def _turn(
        self,
        owner: Principal,
        locale: str,
        thread: ThreadMetadata,
        message: UserMessageItem | None,
        meter: UsageMeter,
        history: list[ThreadItem] | None = None,
    ) -> Turn:
        """The turn for the responder; `history` when the caller already has it (read in the
        transaction that stored the message), else read now."""
        if history is None:
            history = await self._store.recent_items(owner, thread.id, self._history_items)
        return Turn(
            thread=thread,
            history=history,
            principal=owner,
            locale=locale,
            input_user_message=message,
            attachments=self._attachments,
            images=self._image_store(thread.id),
            usage=meter,
        )

    async def _run(
        self,
        owner: Principal,
        locale: str,
        thread: ThreadMetadata,
        message: UserMessageItem | None,
        lease: RunLease,
        meter: UsageMeter,
        history: list[ThreadItem] | None = None,
    ) -> AsyncIterator[ThreadStreamEvent]:
        turn = await self._turn(owner, locale, thread, message, meter, history)
        async with _closing(
            self._process(owner, thread, self._responder.respond(turn), lease, meter)
        ) as events:
            async for event in events:
                yield event

    async def _process(
        self,
        owner: Principal,
        thread: ThreadMetadata,
        source: AsyncIterator[ThreadStreamEvent],
        lease: RunLease,
        meter: UsageMeter,
    ) -> AsyncIterator[ThreadStreamEvent]:
        """Persist and forward what the responder streams, as ChatKitServer._process_events does.

        `saved` is the thread state the store has, `announced` the title and status the client was
        told. A done item that arrives with new thread state (a handoff sets the active specialist,
        then emits its "routed" item) is written together with that state in one transaction.
        The loop awaits the responder with `lease.interruptible` set, so a lost lease cancels the
        wait at once; between steps `lease.check()` stops a run whose lease is gone.
        Every write takes the usage `meter` collected since the previous one (the turn's own usage
        commits with its items); what is left at the end is written last.
        """
        await asyncio.sleep(0)
        yield StreamOptionsEvent(stream_options=StreamOptions(allow_cancel=True))
        lease.check()
        pending = _PendingItems()
        saved = _state(thread)
        announced = saved[:2]
        events = aiter(source)
        try:
            try:
                while True:
                    lease.interruptible = True
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                    finally:
                        lease.interruptible = False
                    lease.check()
                    match event:
                        case ThreadItemAddedEvent(item=item):
                            pending.added(item)
                        case ThreadItemUpdatedEvent():
                            pending.updated(event)
                        case ThreadItemDoneEvent(item=item) | ThreadItemReplacedEvent(item=item):
                            state = _state(thread)
                            changed = state != saved
                            await self._store.write(
                                owner,
                                thread.id,
                                items=[_for_storage(item)],
                                thread=thread if changed else None,
                                fence=lease.fence,
                                known_title=KnownTitle(saved[0]),
                                usage=meter.take(),
                            )
                            saved = state
                            pending.finished(item.id)
                        case ThreadItemRemovedEvent(item_id=item_id):
                            await self._store.write(
                                owner, thread.id, deleted=[item_id], fence=lease.fence, usage=meter.take()
                            )
                            pending.finished(item_id)
                        case _:
                            pass
                    if not (isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, _HIDDEN)):
                        yield event
                    if (thread.title, thread.status) != announced:
                        saved = await self._save_if_changed(owner, thread, saved, lease)
                        announced = (thread.title, thread.status)
                        yield ThreadUpdatedEvent(thread=thread_response(thread))
            except (asyncio.CancelledError, GeneratorExit) as stop:
                await _close(source)
                if isinstance(stop, asyncio.CancelledError) and lease.absorb_cancel():
                    # The heartbeat stopped the run: another replica may own the thread now.
                    raise LeaseLost(thread.id) from None
                if not lease.lost:
                    await shielded(
                        self._save_cancelled(
                            owner, thread, pending, _state(thread) != saved, lease, saved[0], meter
                        )
                    )
                raise
            except CustomStreamError as error:
                yield ErrorEvent(code="custom", message=error.message, allow_retry=error.allow_retry)
            except StreamError as error:
                yield ErrorEvent(code=error.code, allow_retry=error.allow_retry)
            except LeaseLost:
                lease.lost = True  # a fenced write found the lease taken over
                raise
            except SwitchboardError as error:
                yield ErrorEvent(code="custom", message=error.message, allow_retry=error.retryable)
                if error.retryable:
                    return  # a dependency failed: saving the thread state now may fail as well
            except Exception:
                log.exception("the agents failed in thread %s", thread.id)
                yield ErrorEvent(code=ErrorCode.STREAM_ERROR, allow_retry=True)
            lease.check()
            if (thread.title, thread.status) != announced:
                saved = await self._save_if_changed(owner, thread, saved, lease, meter)
                yield ThreadUpdatedEvent(thread=thread_response(thread))
            else:
                # Server-side state (the active specialist) changed: save it, the client sees nothing.
                saved = await self._save_if_changed(owner, thread, saved, lease, meter)
            rest = meter.take()
            if rest is not None:
                await self._store.write(owner, thread.id, fence=lease.fence, usage=rest)
        finally:
            await _close(source)

    async def _save_if_changed(
        self,
        owner: Principal,
        thread: ThreadMetadata,
        saved: _ThreadState,
        lease: RunLease,
        meter: UsageMeter | None = None,
    ) -> _ThreadState:
        state = _state(thread)
        if state != saved:
            # A rename that landed during the run wins over the run's title (compare and set).
            await self._store.write(
                owner,
                thread.id,
                thread=thread,
                fence=lease.fence,
                known_title=KnownTitle(saved[0]),
                usage=meter.take() if meter is not None else None,
            )
        return state

    async def _save_cancelled(
        self,
        owner: Principal,
        thread: ThreadMetadata,
        pending: _PendingItems,
        thread_changed: bool,
        lease: RunLease,
        known_title: str | None,
        meter: UsageMeter,
    ) -> None:
        """What ChatKitServer.handle_stream_cancelled stores, in one transaction: the partial
        answers, a hidden note, the thread's state if the run changed it, and the turn's usage."""
        try:
            note = SDKHiddenContextItem(
                id=new_id("shcx"), thread_id=thread.id, created_at=_now(), content=CANCELLED_NOTE
            )
            await self._store.write(
                owner,
                thread.id,
                items=[*pending.partial_assistant_messages(), note],
                thread=thread if thread_changed else None,
                fence=lease.fence,
                known_title=KnownTitle(known_title),
                usage=meter.take(),
            )
        except Exception:
            log.exception("could not save the cancelled turn of thread %s", thread.id)


@contextlib.asynccontextmanager
async def _closing(
    events: AsyncIterator[ThreadStreamEvent],
) -> AsyncIterator[AsyncIterator[ThreadStreamEvent]]:
    """`async with _closing(inner) as events: async for event in events: yield event`.

    `async for` alone does not close the inner generator when the outer one is closed (the caller
    went away): the inner one would be finalised later by the garbage collector, in another task,
    after the outer one released the run lease. Closing it on the way out runs its cleanup (stop the
    agents, save the partial answer) in order, while the lease is still held.
    """
    try:
        yield events
    finally:
        await _close(events)


async def _close(source: AsyncIterator[ThreadStreamEvent]) -> None:
    """Close the responder's generator, which stops its agent run (idempotent)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _apply_submission(
    item: StructuredInputItem, submission: StructuredInputSubmission
) -> StructuredInputItem:
    """ChatKitServer's rules: missing, empty or skipped answers are recorded as skipped; a
    single-choice question keeps one value; unknown question ids are ignored."""
    answered = item.model_copy(deep=True)
    for question in answered.inputs:
        answer = submission.answers.get(question.id)
        if submission.status == "skipped" or answer is None or answer.skipped or not answer.values:
            question.answer = StructuredInputAnswer(skipped=True)
            continue
        values = answer.values
        if isinstance(question, StructuredInputMultipleChoice) and not question.multiple:
            values = values[:1]
        question.answer = StructuredInputAnswer(values=values)
    answered.status = submission.status
    return answered
