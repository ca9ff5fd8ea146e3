"""An app of the adopter's own, loaded with SWITCHBOARD_APP: the help desk of examples/helpdesk.

The whole stack runs with `SWITCHBOARD_APP=helpdesk_app:app` (installed next to Switchboard, as an
adopter installs theirs). Over HTTP: the app's triage agent hands off to its FAQ specialist, whose
tool reads the caller's tenant's articles only (both tenants have a KB-101 with different
answers), its article card's action streams an answer, and an unknown action type is a 400.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from chatkit.types import ProgressUpdateEvent, ThreadItemDoneEvent, WidgetItem, WorkflowItem

from tests.support.chatkit_wire import assistant_text, call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack

ACME_ANSWER = "id.acme.example"
GLOBEX_ANSWER = "extension 4242"


@pytest.fixture(scope="module")
def helpdesk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("helpdesk"), SWITCHBOARD_APP="helpdesk_app:app") as running:
        yield running


def _rate_action(widget: WidgetItem, label: str) -> dict[str, Any]:
    """The action of the card's button called `label`."""

    def find(node: object) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if node.get("type") == "Button" and node.get("label") == label:
                return dict(node["onClickAction"])
            for value in node.values():
                if (found := find(value)) is not None:
                    return found
        if isinstance(node, list):
            for value in node:
                if (found := find(value)) is not None:
                    return found
        return None

    action = find(widget.widget.model_dump(by_alias=True, exclude_none=True))
    assert action is not None, f"no {label!r} button on the card"
    return action


async def _ask(http: aiohttp.ClientSession, stack: Stack, tenant: str, text: str) -> list[Any]:
    body = request("threads.create", input=user_input(text))
    return await stream(http, stack.edge_url, body, stack.headers(tenant=tenant))


async def test_the_app_answers_from_the_callers_tenant_only(
    http: aiohttp.ClientSession, helpdesk: Stack
) -> None:
    answers = {}
    for tenant in ("acme", "globex"):
        events = await _ask(http, helpdesk, tenant, "How do I reset my password?")
        workflows = [
            e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WorkflowItem)
        ]
        assert [w.workflow.summary.title for w in workflows] == ["FAQ specialist"]  # type: ignore[union-attr]
        assert any(isinstance(e, ProgressUpdateEvent) for e in events)
        cards = [
            e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
        ]
        assert len(cards) == 1
        answers[tenant] = assistant_text(events)
        assert "KB-101" in answers[tenant]
    assert ACME_ANSWER in answers["acme"] and GLOBEX_ANSWER not in answers["acme"]
    assert GLOBEX_ANSWER in answers["globex"] and ACME_ANSWER not in answers["globex"]
    # A question only the other tenant's articles answer finds nothing for this one.
    events = await _ask(http, helpdesk, "acme", "How do I book a meeting room?")
    assert "Rooms tab" not in assistant_text(events)
    assert "No article matches" in assistant_text(events)


async def test_the_card_action_streams_and_unknown_actions_are_400(
    http: aiohttp.ClientSession, helpdesk: Stack
) -> None:
    events = await _ask(http, helpdesk, "acme", "Which software do I install for the VPN?")
    thread_id = events[0].thread.id
    card = next(
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, WidgetItem)
    )
    action = _rate_action(card, "Helpful")
    assert action["payload"] == {"article_id": "KB-102", "helpful": True}

    body = request("threads.custom_action", thread_id=thread_id, item_id=card.id, action=action)
    reply = await stream(http, helpdesk.edge_url, body, helpdesk.headers())
    assert reply[0].type == "stream_options"
    assert any(isinstance(e, ProgressUpdateEvent) for e in reply)
    assert assistant_text(reply) == 'Thanks! Noted that "Set up the VPN" (KB-102) was helpful.'

    # The article must be the caller's: globex has no KB-102, whatever the payload says.
    globex_events = await _ask(http, helpdesk, "globex", "How do I reset my password?")
    globex_thread = globex_events[0].thread.id
    forged = {"type": action["type"], "payload": {"article_id": "KB-102", "helpful": False}}
    body = request("threads.custom_action", thread_id=globex_thread, item_id=None, action=forged)
    refused = await stream(http, helpdesk.edge_url, body, helpdesk.headers(tenant="globex"))
    errors = [e for e in refused if e.type == "error"]
    assert len(errors) == 1 and "no article KB-102" in (errors[0].message or "")  # type: ignore[union-attr]

    for bad in (
        {"type": "helpdesk.unknown", "payload": {}},
        {"type": action["type"], "payload": {"article_id": "KB-102"}},  # `helpful` missing
        {"type": action["type"], "payload": {"article_id": "KB-102", "helpful": True, "extra": 1}},
    ):
        for operation in ("threads.custom_action", "threads.sync_custom_action"):
            payload = await call(
                http,
                helpdesk.edge_url,
                request(operation, thread_id=thread_id, item_id=card.id, action=bad),
                helpdesk.headers(),
                status=400,
            )
            code, message = error_of(payload)
            assert code == "INVALID_ARGUMENT", (operation, bad, payload)
            assert bad["type"] in message
    # Nothing broke: the thread still converses.
    body = request("threads.add_user_message", thread_id=thread_id, input=user_input("password reset?"))
    again = await stream(http, helpdesk.edge_url, body, helpdesk.headers())
    assert "KB-101" in assistant_text(again)
