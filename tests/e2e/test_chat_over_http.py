"""Every ChatKit operation through the edge over HTTP, validated against openai-chatkit's models."""

from __future__ import annotations

import aiohttp
from chatkit.types import (
    AssistantMessageItem,
    Page,
    ProgressUpdateEvent,
    StreamOptionsEvent,
    Thread,
    ThreadCreatedEvent,
    ThreadItemAddedEvent,
    ThreadItemDoneEvent,
    ThreadItemUpdatedEvent,
    ThreadUpdatedEvent,
    UserMessageItem,
    WidgetItem,
    WorkflowItem,
)

from tests.support.chatkit_wire import (
    ITEM_PAGE,
    THREAD_PAGE,
    assistant_text,
    call,
    request,
    stream,
    user_input,
    wire,
)
from tests.support.processes import Stack


async def _new_thread(http: aiohttp.ClientSession, stack: Stack, text: str, **who: str) -> tuple[str, list]:
    events = await stream(
        http, stack.edge_url, request("threads.create", input=user_input(text)), stack.headers(**who)
    )
    created = events[0]
    assert isinstance(created, ThreadCreatedEvent)
    return created.thread.id, events


async def test_threads_create_streams_in_chatkit_order(http: aiohttp.ClientSession, stack: Stack) -> None:
    thread_id, events = await _new_thread(http, stack, "Hello there, how does this work?")
    kinds = [event.type for event in events]
    assert kinds[:3] == ["thread.created", "thread.item.done", "stream_options"]
    user = events[1]
    assert isinstance(user, ThreadItemDoneEvent) and isinstance(user.item, UserMessageItem)
    assert user.item.thread_id == thread_id
    assert isinstance(events[2], StreamOptionsEvent) and events[2].stream_options.allow_cancel
    added = [
        e for e in events if isinstance(e, ThreadItemAddedEvent) and isinstance(e.item, AssistantMessageItem)
    ]
    deltas = [
        e for e in events if isinstance(e, ThreadItemUpdatedEvent) and e.update.type.endswith("text_delta")
    ]
    assert added and len(deltas) > 3, kinds
    done_text = assistant_text(events)
    assert done_text and "".join(d.update.delta for d in deltas) == done_text  # type: ignore[union-attr]
    titles = [e for e in events if isinstance(e, ThreadUpdatedEvent)]
    assert titles and titles[-1].thread.title, "the thread gets a title after the first turn"
    assert len(user.item.id) > 30 and len(thread_id) > 30, "ids are long and random"


async def test_multi_turn_keeps_context(http: aiohttp.ClientSession, stack: Stack) -> None:
    thread_id, _ = await _new_thread(http, stack, "Hi, my name is Ada.")
    events = await stream(
        http,
        stack.edge_url,
        request("threads.add_user_message", thread_id=thread_id, input=user_input("What is my name?")),
        stack.headers(),
    )
    assert events[0].type == "thread.item.done"
    assert "Ada" in assistant_text(events)


async def test_handoffs_reach_each_specialist_and_stick(http: aiohttp.ClientSession, stack: Stack) -> None:
    for text, specialist in (
        ("I was charged twice on my invoice, can I get a refund?", "billing"),
        ("The app shows an error and crashes when I log in", "tech"),
        ("What can you help me with today?", "general"),
    ):
        thread_id, events = await _new_thread(http, stack, text)
        workflows = [
            e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WorkflowItem)
        ]
        assert len(workflows) == 1, [e.type for e in events]
        assert specialist in wire(workflows[0]).lower()
        assert assistant_text(events)
        follow_up = await stream(
            http,
            stack.edge_url,
            request(
                "threads.add_user_message", thread_id=thread_id, input=user_input("Thanks, one more thing.")
            ),
            stack.headers(),
        )
        again = [
            e for e in follow_up if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WorkflowItem)
        ]
        assert again == [], "the specialist keeps the conversation on the next turn"
        assert assistant_text(follow_up)


async def test_erp_lookup_is_tenant_scoped_with_role_rule(http: aiohttp.ClientSession, stack: Stack) -> None:
    answers = {}
    for tenant, role in (("acme", "user"), ("acme", "hr"), ("globex", "user")):
        _, events = await _new_thread(http, stack, "Who is employee E1001?", tenant=tenant, role=role)
        assert any(isinstance(e, ProgressUpdateEvent) for e in events), "tool progress appears in the stream"
        answers[(tenant, role)] = assistant_text(events)
        widgets = [
            e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
        ]
        assert len(widgets) == 1
    assert answers[("acme", "user")] != answers[("globex", "user")]
    assert "salary" not in answers[("acme", "user")].lower() or "hidden" in answers[("acme", "user")].lower()
    assert any(ch.isdigit() for ch in answers[("acme", "hr")].split("alary")[-1]), answers[("acme", "hr")]


async def test_widget_action_goes_through_custom_action(http: aiohttp.ClientSession, stack: Stack) -> None:
    thread_id, events = await _new_thread(http, stack, "Look up employee E1001 please")
    widget = next(
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
    )
    button_action = _first_action(widget.widget.model_dump(by_alias=True))
    assert button_action is not None, "the employee card has a server-handled button"
    action_events = await stream(
        http,
        stack.edge_url,
        request(
            "threads.custom_action",
            thread_id=thread_id,
            item_id=widget.id,
            action={"type": button_action["type"], "payload": button_action.get("payload")},
        ),
        stack.headers(),
    )
    assert action_events[0].type == "stream_options"
    assert "SO-" in assistant_text(action_events) or "no open orders" in assistant_text(action_events).lower()


def _first_action(node: object) -> dict | None:
    if isinstance(node, dict):
        for key in ("onClickAction", "onSubmitAction"):
            if isinstance(node.get(key), dict):
                return node[key]
        for value in node.values():
            found = _first_action(value)
            if found:
                return found
    if isinstance(node, list):
        for value in node:
            found = _first_action(value)
            if found:
                return found
    return None


async def test_history_operations(http: aiohttp.ClientSession, stack: Stack) -> None:
    who = {"user": "historian"}
    thread_id, _ = await _new_thread(http, stack, "First question about my bill", **who)
    second_id, _ = await _new_thread(http, stack, "Second question about an error", **who)
    headers = stack.headers(**who)

    thread = Thread.model_validate(
        await call(http, stack.edge_url, request("threads.get_by_id", thread_id=thread_id), headers)
    )
    assert thread.id == thread_id and thread.title
    assert thread.items.data[0].type == "user_message"
    assert all(item.type not in ("sdk_hidden_context", "hidden_context_item") for item in thread.items.data)
    assert thread.metadata == {}, "server-side metadata never reaches the client"

    listed = THREAD_PAGE.validate_python(
        await call(http, stack.edge_url, request("threads.list", limit=1), headers)
    )
    assert [t.id for t in listed.data] == [second_id] and listed.has_more
    rest = THREAD_PAGE.validate_python(
        await call(http, stack.edge_url, request("threads.list", limit=10, after=listed.after), headers)
    )
    assert [t.id for t in rest.data] == [thread_id] and not rest.has_more
    assert all(t.items.data == [] for t in rest.data)

    renamed = Thread.model_validate(
        await call(
            http,
            stack.edge_url,
            request("threads.update", thread_id=thread_id, title="Billing chat"),
            headers,
        )
    )
    assert renamed.title == "Billing chat"

    items = ITEM_PAGE.validate_python(
        await call(
            http, stack.edge_url, request("items.list", thread_id=thread_id, order="asc", limit=50), headers
        )
    )
    assert items.data[0].type == "user_message"
    assistant = [i for i in items.data if isinstance(i, AssistantMessageItem)]
    assert assistant
    assert (
        await call(
            http,
            stack.edge_url,
            request("items.feedback", thread_id=thread_id, item_ids=[assistant[-1].id], kind="positive"),
            headers,
        )
        == {}
    )

    user_item = items.data[0]
    retried = await stream(
        http,
        stack.edge_url,
        request("threads.retry_after_item", thread_id=thread_id, item_id=user_item.id),
        headers,
    )
    assert retried[0].type == "stream_options" and assistant_text(retried)
    after = ITEM_PAGE.validate_python(
        await call(
            http, stack.edge_url, request("items.list", thread_id=thread_id, order="asc", limit=50), headers
        )
    )
    assert after.data[0].id == user_item.id
    assert assistant[-1].id not in {i.id for i in after.data}, "retry deleted the old answer"

    assert await call(http, stack.edge_url, request("threads.delete", thread_id=thread_id), headers) == {}
    await call(http, stack.edge_url, request("threads.get_by_id", thread_id=thread_id), headers, status=404)
    remaining = THREAD_PAGE.validate_python(
        await call(http, stack.edge_url, request("threads.list"), headers)
    )
    assert [t.id for t in remaining.data] == [second_id]
    assert isinstance(remaining, Page)
