"""Helpers for the agent tests: build turns by hand, run the responder on the demo app, check every
event's wire form."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from agents import Model
from chatkit.types import (
    AssistantMessageContent,
    AssistantMessageItem,
    InferenceOptions,
    ThreadItem,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadMetadata,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTextContent,
    WidgetItem,
    WorkflowItem,
)
from pydantic import TypeAdapter

from services.agent_service.agents.responder import AppResponder
from services.agent_service.models.factory import ConfiguredModels
from services.agent_service.turn import AttachmentReader, Turn
from services.common.auth import Principal
from services.common.config import Settings
from switchboard.app import App
from switchboard.demo import create_app
from switchboard.demo.erp import ErpDirectory
from switchboard.demo.model import DemoModel
from switchboard.demo.state import DemoState

EVENT: TypeAdapter[ThreadStreamEvent] = TypeAdapter(ThreadStreamEvent)
THREAD_ID = "thr_test"


def settings(**overrides: Any) -> Settings:
    """Settings that ignore the machine's environment for everything the agents read."""
    values: dict[str, Any] = {
        "llm_provider": "local",
        "openai_api_key": None,
        "openai_base_url": None,
        "gemini_api_key": None,
        "local_token_delay_ms": 0,
        "max_turns": 8,
        "app": "switchboard.demo:create_app",
    }
    values.update(overrides)
    return Settings(**values)


async def demo_responder(
    model: Model | None = None,
    *,
    models: ConfiguredModels | None = None,
    app: App[DemoState] | None = None,
    max_turns: int = 8,
) -> AppResponder:
    """The responder running the demo app on a fresh in-memory ERP directory.

    Offline on `model` (the demo model by default), or on `models` (a configured provider). Its
    `aclose()` closes the directory (the app's shutdown) and the models.
    """
    erp = await ErpDirectory.open(":memory:")
    configured = models or ConfiguredModels("local", offline=model or DemoModel())
    return AppResponder(app or create_app(), DemoState(erp), configured, max_turns=max_turns)


def user(text: str) -> UserMessageItem:
    return UserMessageItem(
        id=f"msg_u_{abs(hash(text))}",
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        content=[UserMessageTextContent(text=text)],
        inference_options=InferenceOptions(),
    )


def assistant(text: str) -> AssistantMessageItem:
    return AssistantMessageItem(
        id=f"msg_a_{abs(hash(text))}",
        thread_id=THREAD_ID,
        created_at=datetime.now(UTC),
        content=[AssistantMessageContent(text=text)],
    )


def turn(
    *history: ThreadItem | str,
    tenant: str = "acme",
    user_id: str = "ada",
    role: str = "user",
    locale: str = "en-US",
    active: str | None = None,
    title: str | None = None,
    attachments: AttachmentReader | None = None,
) -> Turn:
    """A turn answering the last item; plain strings alternate user / assistant, starting with user."""
    items: list[ThreadItem] = []
    for index, entry in enumerate(history):
        if isinstance(entry, str):
            items.append(user(entry) if index % 2 == 0 else assistant(entry))
        else:
            items.append(entry)
    last = items[-1] if items else None
    thread = ThreadMetadata(
        id=THREAD_ID,
        created_at=datetime.now(UTC),
        title=title,
        metadata={"active_agent": active} if active else {},
    )
    return Turn(
        thread=thread,
        history=items,
        principal=Principal(tenant=tenant, user=user_id, role=role),
        locale=locale,
        input_user_message=last if isinstance(last, UserMessageItem) else None,
        attachments=attachments,
    )


def check_wire(event: ThreadStreamEvent) -> None:
    """The event serialises as ChatKitServer would and validates back to the same JSON."""
    data = event.model_dump_json(by_alias=True, exclude_none=True)
    with warnings.catch_warnings():  # validating into chatkit's strict widget classes warns
        warnings.simplefilter("ignore", DeprecationWarning)
        again = EVENT.validate_json(data)
    assert json.loads(again.model_dump_json(by_alias=True, exclude_none=True)) == json.loads(data)


async def collect(stream: AsyncIterator[ThreadStreamEvent]) -> list[ThreadStreamEvent]:
    events = []
    async for event in stream:
        check_wire(event)
        events.append(event)
    return events


def done_items(events: Sequence[ThreadStreamEvent], kind: type[Any]) -> list[Any]:
    return [e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, kind)]


def answers(events: Sequence[ThreadStreamEvent]) -> list[str]:
    """Texts of the finished assistant messages."""
    return ["".join(part.text for part in item.content) for item in done_items(events, AssistantMessageItem)]


def workflows(events: Sequence[ThreadStreamEvent]) -> list[WorkflowItem]:
    return done_items(events, WorkflowItem)


def widgets(events: Sequence[ThreadStreamEvent]) -> list[WidgetItem]:
    return done_items(events, WidgetItem)


def text_deltas(events: Sequence[ThreadStreamEvent]) -> list[str]:
    return [
        e.update.delta
        for e in events
        if isinstance(e, ThreadItemUpdatedEvent)
        and e.update.type == "assistant_message.content_part.text_delta"
    ]


def assert_message_lifecycle(events: Sequence[ThreadStreamEvent]) -> None:
    """Every assistant message: added, part added, deltas, part done, done — in order, exactly once."""
    state: dict[str, str] = {}
    expected_before = {
        "assistant_message.content_part.added": ("added", "streaming"),
        "assistant_message.content_part.text_delta": ("streaming", "streaming"),
        "assistant_message.content_part.done": ("streaming", "part_done"),
    }
    for event in events:
        if isinstance(event, ThreadItemAddedEvent) and isinstance(event.item, AssistantMessageItem):
            assert event.item.id not in state, "added twice"
            assert not event.item.content
            state[event.item.id] = "added"
        elif isinstance(event, ThreadItemUpdatedEvent) and event.update.type in expected_before:
            before, after = expected_before[event.update.type]
            assert state.get(event.item_id) == before, (event.update.type, state.get(event.item_id))
            state[event.item_id] = after
        elif isinstance(event, ThreadItemDoneEvent) and isinstance(event.item, AssistantMessageItem):
            assert state.get(event.item.id) == "part_done", "done without added / part done"
            state[event.item.id] = "done"
    assert all(value == "done" for value in state.values()), state
