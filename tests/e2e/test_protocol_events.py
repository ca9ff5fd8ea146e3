"""The rest of the ChatKit protocol end to end, through the demo app: notices, client effects, a
streamed widget, item removal and a generated image, over HTTP (the edge) and gRPC (the agent).

Frames are held to what openai-chatkit's own `ChatKitServer` and `stream_widget` produce for the same
events (tests/support/chatkit_reference.py), byte for byte where the events are fixed in advance. A
small app of its own (tests/fakes/effects_app.py) sends a client effect with many keys; the removal
test runs on the fake OpenAI-compatible server, to see what the model is sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from chatkit.types import (
    AssistantMessageItem,
    ClientEffectEvent,
    ErrorEvent,
    GeneratedImageItem,
    NoticeEvent,
    ProgressUpdateEvent,
    ThreadCreatedEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemRemovedEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    WidgetItem,
    WidgetRootUpdated,
    WidgetStreamingTextValueDelta,
    WorkflowItem,
)
from chatkit.widgets import WidgetRoot
from google.protobuf import json_format, struct_pb2
from grpc import aio

from switchboard.demo.actions import ORDERS_SHOWN_EFFECT, order_line
from switchboard.demo.chart import bar_chart_png
from switchboard.demo.erp import Employee, ErpDirectory, Order
from switchboard.demo.widgets import DISMISS, ORDER_LINES_ID, SHOW_OPEN_ORDERS, order_list
from switchboard.v1 import chat_pb2, chat_pb2_grpc, thread_pb2, upload_pb2, upload_pb2_grpc
from tests.fakes.effects_app import EFFECT_ACTION, EFFECT_DATA, EFFECT_NAME
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.support.chatkit_reference import chatkit_frames, chatkit_stream_widget, frame_type, raw_frames
from tests.support.chatkit_wire import (
    ITEM_PAGE,
    assistant_text,
    call,
    error_of,
    parse_sse,
    request,
    stream,
    user_input,
)
from tests.support.processes import Stack, running_stack

MISSING = "E9999"
NOTICE_TEXT = f"No employee {MISSING} in your organisation."
EMPLOYEE = "E1001"
CHART_REQUEST = "Show me a chart of our orders"
PLACEHOLDER_HOST = "attachments.invalid"


# ------------------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Erp:
    """The demo ERP's seed rows for acme's E1001, read the way the demo reads them."""

    employee: Employee
    orders: list[Order]
    order_counts: list[int]

    def versions(self) -> list[WidgetRoot]:
        """Every version of the order list the action streams: empty, then one more line each."""
        lines = [order_line(order) for order in self.orders]
        growing = [order_list(self.employee, lines[:count]) for count in range(len(lines) + 1)]
        return [*growing, order_list(self.employee, lines, done=True)]

    @property
    def copy_text(self) -> str:
        return "\n".join(order_line(order) for order in self.orders)


@pytest.fixture(scope="module")
async def erp() -> Erp:
    directory = await ErpDirectory.open(":memory:")
    try:
        employee = await directory.get_employee("acme", EMPLOYEE)
        assert employee is not None
        orders = await directory.open_orders_for("acme", EMPLOYEE)
        counts = await directory.order_counts("acme")
    finally:
        await directory.aclose()
    assert len(orders) >= 2, "the seed gives Ada Lovelace several open orders (a list to stream)"
    return Erp(employee, orders, list(counts.values()))


async def _new_thread(
    http: aiohttp.ClientSession, stack: Stack, text: str, **who: str
) -> tuple[str, list[ThreadStreamEvent]]:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input(text)), stack.headers(**who)
    )
    assert isinstance(events[0], ThreadCreatedEvent)
    return events[0].thread.id, events


def _done_items(events: list[ThreadStreamEvent], kind: type) -> list[Any]:
    return [e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, kind)]


def _card(events: list[ThreadStreamEvent]) -> WidgetItem:
    cards = _done_items(events, WidgetItem)
    assert len(cards) == 1, [e.type for e in events]
    return cards[0]


def _component(node: Any, component_id: str) -> dict[str, Any] | None:
    """The widget component with this id, in a dumped widget tree."""
    if isinstance(node, dict):
        if node.get("id") == component_id:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            if (found := _component(child, component_id)) is not None:
                return found
    return None


def _orders_value(widget: WidgetRoot) -> str:
    component = _component(widget.model_dump(by_alias=True, exclude_none=True), ORDER_LINES_ID)
    assert component is not None and component["type"] == "Markdown", widget
    return str(component["value"])


def _show_orders(thread_id: str, card_id: str | None, employee_id: str = EMPLOYEE) -> dict[str, Any]:
    return request(
        "threads.custom_action",
        thread_id=thread_id,
        item_id=card_id,
        action={"type": SHOW_OPEN_ORDERS, "payload": {"employee_id": employee_id}},
    )


def _dismiss(thread_id: str, item_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"thread_id": thread_id, "action": {"type": DISMISS, "payload": {}}}
    if item_id is not None:
        params["item_id"] = item_id
    return {"type": "threads.custom_action", "params": params}


async def _items(http: aiohttp.ClientSession, stack: Stack, thread_id: str, **who: str) -> list[Any]:
    page = ITEM_PAGE.validate_python(
        await call(
            http,
            stack.edge_url,
            request("items.list", thread_id=thread_id, order="asc", limit=100),
            stack.headers(**who),
        )
    )
    assert not page.has_more
    return list(page.data)


def _order_list_events(events: list[ThreadStreamEvent]) -> tuple[str, list[ThreadStreamEvent]]:
    """The order list widget's id and every event about it, in stream order."""
    added = [e for e in events if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, WidgetItem)]
    assert len(added) == 1, [e.type for e in events]
    item_id = added[0].item.id
    about = [
        e
        for e in events
        if (isinstance(e, ThreadItemAddedEvent | ThreadItemDoneEvent) and e.item.id == item_id)
        or (isinstance(e, ThreadItemUpdatedEvent) and e.item_id == item_id)
    ]
    return item_id, about


def _shape(event: ThreadStreamEvent) -> tuple[Any, ...]:
    """What two streams of the same widget must agree on (ids and timestamps aside)."""
    if isinstance(event, ThreadItemUpdatedEvent):
        update = event.update
        if isinstance(update, WidgetRootUpdated):
            return (event.type, update.type, update.widget.model_dump(exclude_none=True))
        assert isinstance(update, WidgetStreamingTextValueDelta), update
        return (event.type, update.type, update.component_id, update.delta, update.done)
    return (event.type,)


def _model_input(fake: FakeOpenAI, since: int) -> str:
    """Every message the model was sent since request number `since`, as one text."""
    bodies = fake.requests[since:]
    assert bodies, "the turn made no model request"
    return json.dumps([body.get("messages", []) for body in bodies], ensure_ascii=False)


def _input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


def _grpc_auth(stack: Stack, **who: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {stack.token(**who)}"), ("x-request-id", "protocol-events"))


# ------------------------------------------------------------------------------------ over the edge


async def test_notice_through_the_edge_is_chatkit_servers_frame(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    frames, events = await raw_frames(
        http,
        stack.edge_url,
        request("threads.create", input=user_input(f"Who is employee {MISSING}?")),
        stack.headers(),
    )
    notices = [e for e in events if isinstance(e, NoticeEvent)]
    assert len(notices) == 1, [e.type for e in events]
    assert notices[0].level == "warning"
    assert notices[0].message == NOTICE_TEXT
    assert notices[0].title is None
    assert _done_items(events, WidgetItem) == [], "nobody found: no employee card"
    assert any(isinstance(e, ProgressUpdateEvent) for e in events[: events.index(notices[0])])

    expected = NoticeEvent(level="warning", message=NOTICE_TEXT)
    reference = [f for f in await chatkit_frames([expected]) if frame_type(f) == "notice"]
    assert [f for f in frames if frame_type(f) == "notice"] == reference


@dataclass(frozen=True)
class OrdersShown:
    """One "Show open orders" press on acme's E1001 card, through the edge."""

    thread_id: str
    card: WidgetItem
    frames: list[bytes]
    events: list[ThreadStreamEvent]


@pytest.fixture(scope="module")
async def orders_shown(stack: Stack) -> OrdersShown:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        thread_id, events = await _new_thread(http, stack, f"Who is employee {EMPLOYEE}?")
        card = _card(events)
        frames, events = await raw_frames(
            http, stack.edge_url, _show_orders(thread_id, card.id), stack.headers()
        )
    return OrdersShown(thread_id, card, frames, events)


async def test_show_open_orders_streams_the_list_then_answers_then_the_effect(
    http: aiohttp.ClientSession, stack: Stack, erp: Erp, orders_shown: OrdersShown
) -> None:
    thread_id, events = orders_shown.thread_id, orders_shown.events
    types = [e.type for e in events]
    assert types[0] == "stream_options", types
    assert isinstance(events[1], ProgressUpdateEvent), types

    # The streamed widget: chatkit's stream_widget over the same versions gives the same events.
    list_id, about = _order_list_events(events)
    reference = await chatkit_stream_widget(erp.versions(), copy_text=erp.copy_text)
    assert [e.type for e in about] == [e.type for e in reference]
    assert [_shape(e) for e in about] == [_shape(e) for e in reference]
    updates = [e for e in about if isinstance(e, ThreadItemUpdatedEvent)]
    assert len(updates) == len(erp.orders) + 1, "one streamed line per open order, then the end"
    assert isinstance(updates.pop().update, WidgetRootUpdated)  # streaming stops: a new root
    assert all(isinstance(u.update, WidgetStreamingTextValueDelta) for u in updates)
    assert {u.update.component_id for u in updates} == {ORDER_LINES_ID}  # type: ignore[union-attr]
    assert isinstance(about[0], ThreadItemAddedEvent) and isinstance(about[-1], ThreadItemDoneEvent)
    first, done = about[0].item, about[-1].item
    assert isinstance(first, WidgetItem) and isinstance(done, WidgetItem)
    assert first.id == done.id == list_id and first.thread_id == thread_id
    assert _orders_value(first.widget) == ""
    streamed = "".join(u.update.delta for u in updates)  # type: ignore[union-attr]
    assert streamed == _orders_value(done.widget) == erp.copy_text
    assert done.widget.model_dump(by_alias=True, exclude_none=True) == erp.versions()[-1].model_dump(
        by_alias=True, exclude_none=True
    )
    assert done.copy_text == erp.copy_text

    # Then the answer, then the effect for the host page.
    answers = _done_items(events, AssistantMessageItem)
    assert len(answers) == 1
    text = assistant_text(events)
    assert text.startswith(f"{erp.employee.name} ({EMPLOYEE}) has {len(erp.orders)} open orders:"), text
    assert all(order_line(order) in text for order in erp.orders)
    effects = [e for e in events if isinstance(e, ClientEffectEvent)]
    assert len(effects) == 1, types
    effect = effects[0]
    assert effect.name == ORDERS_SHOWN_EFFECT
    assert effect.data == {"employee_id": EMPLOYEE, "open_orders": len(erp.orders)}
    answer_done = next(
        i for i, e in enumerate(events) if isinstance(e, ThreadItemDoneEvent) and e.item is answers[0]
    )
    answer_added = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, AssistantMessageItem)
    )
    assert 1 < events.index(about[0]) < events.index(about[-1]) < answer_added < answer_done
    assert events.index(effect) > answer_done, types

    # A fresh read has the finished list, stored.
    stored = [item for item in await _items(http, stack, thread_id) if item.id == list_id]
    assert len(stored) == 1 and isinstance(stored[0], WidgetItem)
    assert _orders_value(stored[0].widget) == erp.copy_text
    assert stored[0].copy_text == erp.copy_text


async def test_client_effect_frame_is_chatkit_servers_bytes(orders_shown: OrdersShown, erp: Erp) -> None:
    """The frame the action's `client_effect` becomes is what ChatKitServer writes for the same event.

    Its `data` crosses the gRPC hop as a protobuf Struct (a map): the values arrive, the key order
    does not (a documented limitation, README "Behaviour worth knowing"), so frames are compared as
    JSON values."""
    expected = ClientEffectEvent(
        name=ORDERS_SHOWN_EFFECT, data={"employee_id": EMPLOYEE, "open_orders": len(erp.orders)}
    )
    reference = [f for f in await chatkit_frames([expected]) if frame_type(f) == "client_effect"]
    assert len(reference) == 1
    ours = [f for f in orders_shown.frames if frame_type(f) == "client_effect"]
    assert [json.loads(f.removeprefix(b"data: ")) for f in ours] == [
        json.loads(f.removeprefix(b"data: ")) for f in reference
    ]


@pytest.fixture(scope="module")
def effects_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("effects"), uploads=False, SWITCHBOARD_APP="tests.fakes.effects_app:app"
    ) as running:
        yield running


async def test_client_effect_keeps_the_handlers_data(
    http: aiohttp.ClientSession, effects_stack: Stack
) -> None:
    """An effect whose data has many keys (nested too): every value arrives as the handler sent it
    (key order is not kept across the gRPC hop, see above)."""
    stack = effects_stack
    thread_id, _ = await _new_thread(http, stack, "hello")
    body = request(
        "threads.custom_action", thread_id=thread_id, action={"type": EFFECT_ACTION, "payload": {}}
    )
    frames, events = await raw_frames(http, stack.edge_url, body, stack.headers())
    effects = [e for e in events if isinstance(e, ClientEffectEvent)]
    assert len(effects) == 1, [e.type for e in events]
    assert effects[0].name == EFFECT_NAME and effects[0].data == EFFECT_DATA
    reference = [
        f
        for f in await chatkit_frames([ClientEffectEvent(name=EFFECT_NAME, data=EFFECT_DATA)])
        if frame_type(f) == "client_effect"
    ]
    ours = [f for f in frames if frame_type(f) == "client_effect"]
    assert [json.loads(f.removeprefix(b"data: ")) for f in ours] == [
        json.loads(f.removeprefix(b"data: ")) for f in reference
    ]


async def test_dismiss_without_the_widget_is_an_error_event_and_changes_nothing(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    thread_id, events = await _new_thread(http, stack, f"Who is employee {EMPLOYEE}?")
    await stream(http, stack.edge_url, _show_orders(thread_id, _card(events).id), stack.headers())
    before = await _items(http, stack, thread_id)
    assert any(isinstance(item, WidgetItem) and item.id != _card(events).id for item in before)
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=_dismiss(thread_id, None), headers=stack.headers()
    ) as response:
        status, raw = response.status, await response.read()
    after = await _items(http, stack, thread_id)
    assert [item.model_dump(mode="json") for item in after] == [
        item.model_dump(mode="json") for item in before
    ]
    # The type and payload are valid, so the stream starts (as ChatKitServer's would); the handler's
    # refusal is the stream's `error` event.
    assert status == 200, raw.decode(errors="replace")
    errors = [event for event in parse_sse(raw) if isinstance(event, ErrorEvent)]
    assert len(errors) == 1 and not errors[0].allow_retry
    assert "item_id" in (errors[0].message or "")


# -------------------------------------------------------------------------------------- over gRPC


async def test_notice_streamed_widget_and_effect_over_grpc(stack: Stack, erp: Erp) -> None:
    meta = _grpc_auth(stack, user="grpc-protocol")
    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        missing = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input(f"Who is employee {MISSING}?")),
                metadata=meta,
                timeout=60,
            )
        ]
        notices = [e.notice for e in missing if e.WhichOneof("kind") == "notice"]
        assert len(notices) == 1, [e.WhichOneof("kind") for e in missing]
        assert notices[0].level == "warning"
        assert notices[0].message == NOTICE_TEXT
        assert not notices[0].HasField("title")

        found = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input(f"Who is employee {EMPLOYEE}?")),
                metadata=meta,
                timeout=60,
            )
        ]
        thread_id = found[0].thread_created.thread.id
        cards = [
            e.thread_item_done.item
            for e in found
            if e.WhichOneof("kind") == "thread_item_done"
            and e.thread_item_done.item.WhichOneof("kind") == "widget"
        ]
        assert len(cards) == 1
        payload = json_format.ParseDict({"employee_id": EMPLOYEE}, struct_pb2.Value())
        action = [
            e
            async for e in stub.CustomAction(
                chat_pb2.CustomActionRequest(
                    thread_id=thread_id,
                    item_id=cards[0].id,
                    action=chat_pb2.Action(type=SHOW_OPEN_ORDERS, payload=payload),
                ),
                metadata=meta,
                timeout=60,
            )
        ]
    kinds = [e.WhichOneof("kind") for e in action]
    assert kinds[:2] == ["stream_options", "progress_update"], kinds
    added = [e.thread_item_added.item for e in action if e.WhichOneof("kind") == "thread_item_added"]
    widget_added = [item for item in added if item.WhichOneof("kind") == "widget"]
    assert len(widget_added) == 1
    list_id = widget_added[0].id
    updates = [e.thread_item_updated for e in action if e.WhichOneof("kind") == "thread_item_updated"]
    widget_updates = [u for u in updates if u.item_id == list_id]
    assert len(widget_updates) == len(erp.orders) + 1
    assert widget_updates.pop().update.WhichOneof("kind") == "widget_root_updated"
    assert all(u.update.WhichOneof("kind") == "widget_streaming_text_value_delta" for u in widget_updates)
    deltas = [u.update.widget_streaming_text_value_delta for u in widget_updates]
    assert {d.component_id for d in deltas} == {ORDER_LINES_ID}
    done = [
        e.thread_item_done.item
        for e in action
        if e.WhichOneof("kind") == "thread_item_done" and e.thread_item_done.item.id == list_id
    ]
    assert len(done) == 1
    final = json_format.MessageToDict(done[0].widget.widget)
    assert "".join(d.delta for d in deltas) == _component(final, ORDER_LINES_ID)["value"] == erp.copy_text  # type: ignore[index]
    effects = [e.client_effect for e in action if e.WhichOneof("kind") == "client_effect"]
    assert len(effects) == 1, kinds
    assert effects[0].name == ORDERS_SHOWN_EFFECT
    assert isinstance(effects[0].data, struct_pb2.Struct)
    assert json_format.MessageToDict(effects[0].data) == {
        "employee_id": EMPLOYEE,
        "open_orders": len(erp.orders),
    }
    assert kinds.index("client_effect") > max(i for i, k in enumerate(kinds) if k == "thread_item_done")


# ----------------------------------------------------------------------------------------- removal


@pytest.fixture
async def fake_model_stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, FakeOpenAI]]:
    async with fake_openai_server() as fake:
        with running_stack(
            tmp_path / "fake-model",
            LLM_PROVIDER="openai",
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-test",
        ) as running:
            yield running, fake


async def test_dismiss_removes_the_list_from_view_store_and_model_history(
    http: aiohttp.ClientSession, fake_model_stack: tuple[Stack, FakeOpenAI], erp: Erp
) -> None:
    stack, fake = fake_model_stack
    thread_id, events = await _new_thread(http, stack, f"Who is employee {EMPLOYEE}?")
    card = _card(events)
    shown = await stream(http, stack.edge_url, _show_orders(thread_id, card.id), stack.headers())
    list_id, _ = _order_list_events(shown)
    title = f"Open orders · {erp.employee.name}"

    mark = len(fake.requests)
    await stream(
        http,
        stack.edge_url,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("Thanks, noted.")),
        stack.headers(),
    )
    seen = _model_input(fake, mark)
    assert list_id in seen and title in seen, "the shown list is in the model's history"

    removed = await stream(http, stack.edge_url, _dismiss(thread_id, list_id), stack.headers())
    removals = [e for e in removed if isinstance(e, ThreadItemRemovedEvent)]
    assert [e.item_id for e in removals] == [list_id], [e.type for e in removed]
    stored = await _items(http, stack, thread_id)
    assert list_id not in [item.id for item in stored]
    assert card.id in [item.id for item in stored], "only the dismissed widget goes"

    mark = len(fake.requests)
    await stream(
        http,
        stack.edge_url,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("One more thing.")),
        stack.headers(),
    )
    seen = _model_input(fake, mark)
    assert card.id in seen, "the rest of the history is still sent"
    assert list_id not in seen and title not in seen, "the dismissed list left the model's history"


# ----------------------------------------------------------------------------------- generated image


async def test_generated_chart_is_stored_minted_per_read_scoped_and_deleted(
    http: aiohttp.ClientSession, stack: Stack, erp: Erp
) -> None:
    thread_id, events = await _new_thread(http, stack, CHART_REQUEST)
    added = [
        e.item
        for e in events
        if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, GeneratedImageItem)
    ]
    done = _done_items(events, GeneratedImageItem)
    assert len(added) == 1 and len(done) == 1, [e.type for e in events]
    assert added[0].image is None, "announced first, without the image"
    image = done[0].image
    assert done[0].id == added[0].id and image is not None
    assert PLACEHOLDER_HOST not in image.url and image.url.startswith("http://")
    assert stack.s3_endpoint in image.url, "a presigned URL of the S3 server"
    expected_png = bar_chart_png(erp.order_counts)
    async with http.get(image.url) as reply:
        assert reply.status == 200
        served = await reply.read()
    assert served.startswith(b"\x89PNG") and served == expected_png
    key = f"objects/acme/{image.id}"
    bucket = stack.s3.client()
    assert key in {str(o.object_name) for o in bucket.list_objects(stack.bucket, recursive=True)}

    # A fresh read mints a working URL (the store keeps a placeholder).
    stored = [item for item in await _items(http, stack, thread_id) if isinstance(item, GeneratedImageItem)]
    assert len(stored) == 1 and stored[0].id == done[0].id and stored[0].image is not None
    assert stored[0].image.id == image.id
    assert PLACEHOLDER_HOST not in stored[0].image.url
    async with http.get(stored[0].image.url) as reply:
        assert reply.status == 200
        assert await reply.read() == expected_png

    # Another tenant can neither read the thread nor mint the image.
    body = await call(
        http,
        stack.edge_url,
        request("items.list", thread_id=thread_id, order="asc", limit=20),
        stack.headers(tenant="globex"),
        status=404,
    )
    assert error_of(body)[0] == "NOT_FOUND"
    async with aio.insecure_channel(stack.upload_address) as channel:
        uploads = upload_pb2_grpc.UploadServiceStub(channel)
        get = upload_pb2.GetAttachmentsRequest(attachment_ids=[image.id])
        with pytest.raises(aio.AioRpcError) as foreign:
            await uploads.GetAttachments(get, metadata=_grpc_auth(stack, tenant="globex"), timeout=10)
        assert foreign.value.code() == grpc.StatusCode.NOT_FOUND
        mine = await uploads.GetAttachments(get, metadata=_grpc_auth(stack), timeout=10)
        assert [a.id for a in mine.attachments] == [image.id]

        # Deleting the thread deletes the image: the old URL and a new one both stop working.
        assert (
            await call(http, stack.edge_url, request("threads.delete", thread_id=thread_id), stack.headers())
            == {}
        )
        with pytest.raises(aio.AioRpcError) as gone:
            await uploads.GetAttachments(get, metadata=_grpc_auth(stack), timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert key not in {str(o.object_name) for o in bucket.list_objects(stack.bucket, recursive=True)}
    async with http.get(image.url) as reply:
        assert reply.status == 404, await reply.read()
    async with http.get(stored[0].image.url) as reply:
        assert reply.status == 404


# ------------------------------------------------------------------------------------ workflows


def _workflow_shape(events: list[Any]) -> list[tuple[str, ...]]:
    """The events of the first workflow a stream starts (ids and times left out; the item events
    by type alone: chatkit's AgentContext queues the item object itself and then mutates it, so
    what its `thread.item.added` shows depends on when the queue is read)."""
    started = next(
        (
            e.item.id
            for e in events
            if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, WorkflowItem)
        ),
        None,
    )
    shape: list[tuple[str, ...]] = []
    for event in events:
        if isinstance(event, ThreadItemAddedEvent | ThreadItemDoneEvent) and isinstance(
            event.item, WorkflowItem
        ):
            if event.item.id == started:
                shape.append((event.type,))
        elif isinstance(event, ThreadItemUpdatedEvent) and event.update.type.startswith("workflow."):
            task = event.update.task  # type: ignore[union-attr]
            index = str(event.update.task_index)  # type: ignore[union-attr]
            shape.append((event.update.type, index, f"{task.title}:{task.status_indicator}"))
    return shape


async def _chatkit_workflow_shape() -> list[tuple[str, ...]]:
    """What chatkit's own AgentContext streams for the calls the demo's chart tool makes."""
    from chatkit.agents import AgentContext
    from chatkit.types import CustomSummary, CustomTask, ThreadMetadata

    from benchmarks.reference_server import MemoryStore

    context = AgentContext[dict[str, Any]](
        thread=ThreadMetadata(id="thr_reference", created_at=datetime.now(UTC)),
        store=MemoryStore(),
        request_context={},
    )
    context._events = asyncio.Queue()
    counting = CustomTask(title="Counting orders by status", icon="analytics", status_indicator="loading")
    await context.add_workflow_task(counting)
    await context.update_workflow_task(counting.model_copy(update={"status_indicator": "complete"}), 0)
    drawing = CustomTask(title="Drawing the chart", icon="chart", status_indicator="loading")
    await context.add_workflow_task(drawing)
    await context.update_workflow_task(drawing.model_copy(update={"status_indicator": "complete"}), 1)
    await context.end_workflow(CustomSummary(title="Order chart", icon="chart"))
    events = []
    while not context._events.empty():
        event = context._events.get_nowait()
        assert isinstance(event, ThreadItemAddedEvent | ThreadItemUpdatedEvent | ThreadItemDoneEvent)
        events.append(event)
    return _workflow_shape(events)


async def test_workflow_tasks_stream_as_chatkits_agent_context_streams_them(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    thread_id, events = await _new_thread(http, stack, "Show me a chart of our orders")
    ours = _workflow_shape(events)
    assert ours == await _chatkit_workflow_shape()
    added = [
        e.item for e in events if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, WorkflowItem)
    ]
    assert [(t.title, t.status_indicator) for t in added[0].workflow.tasks] == [  # as it was when sent
        ("Counting orders by status", "loading")
    ]
    assert [step[0] for step in ours] == [
        "thread.item.added",
        "workflow.task.updated",
        "workflow.task.added",
        "workflow.task.updated",
        "thread.item.done",
    ]
    # The finished workflow is stored with the thread, both tasks complete.
    stored = [item for item in await _items(http, stack, thread_id) if isinstance(item, WorkflowItem)]
    charts = [
        w for w in stored if w.workflow.summary and getattr(w.workflow.summary, "title", "") == "Order chart"
    ]
    assert len(charts) == 1
    assert [task.status_indicator for task in charts[0].workflow.tasks] == ["complete", "complete"]

    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        grpc_events = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input("Draw a chart of the orders")),
                metadata=_grpc_auth(stack, user="grpc-workflow"),
                timeout=60,
            )
        ]
    updates = [
        e.thread_item_updated.update.WhichOneof("kind")
        for e in grpc_events
        if e.WhichOneof("kind") == "thread_item_updated"
        and e.thread_item_updated.update.WhichOneof("kind").startswith("workflow")
    ]
    assert updates == ["workflow_task_updated", "workflow_task_added", "workflow_task_updated"]


# ------------------------------------------------------------------- citations and image drafts


async def test_answers_cite_their_sources_as_chatkit_converts_them(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    """The demo's offline model cites the ERP record of an order it reports (a URL citation, as a
    model with web search reports one); the edge streams it as chatkit's converter does."""
    from chatkit.agents import ResponseStreamConverter
    from chatkit.types import AssistantMessageContentPartAnnotationAdded
    from openai.types.responses.response_output_text import AnnotationURLCitation

    _, events = await _new_thread(http, stack, "What is the status of order SO-1001?")
    added = [
        e.update
        for e in events
        if isinstance(e, ThreadItemUpdatedEvent)
        and isinstance(e.update, AssistantMessageContentPartAnnotationAdded)
    ]
    assert len(added) == 1, [e.type for e in events]
    done = [
        e.item
        for e in events
        if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, AssistantMessageItem)
    ]
    text = done[-1].content[0].text
    start = text.index("SO-1001")
    expected = await ResponseStreamConverter().url_citation_to_annotation(
        AnnotationURLCitation(
            type="url_citation",
            url="https://erp.acme.example/orders/SO-1001",
            title="Order SO-1001",
            start_index=start,
            end_index=start + len("SO-1001"),
        )
    )
    assert added[0].annotation == expected and added[0].annotation_index == 0
    assert done[-1].content[0].annotations == [expected]

    async with aio.insecure_channel(stack.agent_address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        grpc_events = [
            e
            async for e in stub.CreateThread(
                chat_pb2.CreateThreadRequest(input=_input("Status of order SO-1002 please")),
                metadata=_grpc_auth(stack, user="grpc-citations"),
                timeout=60,
            )
        ]
    citations = [
        e.thread_item_updated.update.assistant_message_content_part_annotation_added
        for e in grpc_events
        if e.WhichOneof("kind") == "thread_item_updated"
        and e.thread_item_updated.update.WhichOneof("kind")
        == "assistant_message_content_part_annotation_added"
    ]
    assert len(citations) == 1
    assert "https://erp.acme.example/orders/SO-1002" in str(citations[0])


async def test_a_generated_image_shows_its_draft_before_it_is_stored(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    from chatkit.types import GeneratedImageUpdated

    _, events = await _new_thread(http, stack, "Plot a chart of our orders")
    kinds = []
    drafts = []
    for event in events:
        if isinstance(event, ThreadItemUpdatedEvent) and isinstance(event.update, GeneratedImageUpdated):
            kinds.append("draft")
            drafts.append(event.update)
        elif isinstance(event, ThreadItemAddedEvent | ThreadItemDoneEvent) and isinstance(
            event.item, GeneratedImageItem
        ):
            kinds.append(event.type)
    assert kinds == ["thread.item.added", "draft", "thread.item.done"]
    assert drafts[0].progress == 0.0
    prefix = "data:image/png;base64,"
    assert drafts[0].image.url.startswith(prefix)
    assert base64.b64decode(drafts[0].image.url.removeprefix(prefix)).startswith(b"\x89PNG")
