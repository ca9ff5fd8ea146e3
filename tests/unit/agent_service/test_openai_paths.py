"""The remote-provider path (OpenAI, Gemini, any OpenAI-compatible server) against a real fake server,
and the provider rules of the model factory."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import OpenAIChatCompletionsModel
from chatkit.types import ThreadItemAddedEvent, ThreadItemDoneEvent, ThreadItemUpdatedEvent

from services.agent_service.agents.erp import ErpDirectory
from services.agent_service.agents.responder import AgentResponder
from services.agent_service.models.factory import build_model, resolve_provider
from services.agent_service.models.local import LocalDemoModel, LocalTitleModel
from services.agent_service.turn import ACTIVE_AGENT_KEY
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    settings,
    text_deltas,
    turn,
    widgets,
    workflows,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with fake_openai_server() as server:
        yield server


@pytest.fixture
async def erp() -> AsyncIterator[ErpDirectory]:
    directory = await ErpDirectory.open(":memory:")
    yield directory
    await directory.aclose()


def _provider_settings(provider: str, base_url: str) -> dict[str, Any]:
    if provider == "openai":
        return {"llm_provider": "openai", "openai_base_url": base_url, "openai_default_model": "gpt-fake"}
    return {
        "llm_provider": "gemini",
        "gemini_api_key": "x",
        "gemini_base_url": base_url,
        "gemini_default_model": "gemini-fake",
    }


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_a_turn_with_a_streamed_tool_call_then_a_streamed_answer(
    fake: FakeOpenAI, erp: ErpDirectory, provider: str
) -> None:
    config = settings(**_provider_settings(provider, fake.base_url))
    choice = build_model(config)
    assert choice.provider == provider and not choice.is_local
    assert isinstance(choice.model, OpenAIChatCompletionsModel)
    responder = AgentResponder(config, choice, erp)
    current = turn("Who is employee E1001?", tenant="acme", user_id="u-31x", role="user", locale="de-DE")
    try:
        events = await collect(responder.respond(current))
    finally:
        await choice.aclose()

    # router → general specialist (handoff) → lookup_employee (streamed arguments) → streamed answer
    expected_model = "gpt-fake" if provider == "openai" else "gemini-fake"
    assert {body["model"] for body in fake.requests} == {expected_model}
    assert [body.get("stream") for body in fake.requests] == [True, True, True, None], "3 turns + title"
    assert len(workflows(events)) == 1 and current.thread.metadata[ACTIVE_AGENT_KEY] == "general"
    assert len(widgets(events)) == 1
    [answer] = answers(events)
    assert answer.startswith("Tool said: Employee E1001 is Ada Lovelace, Engineering, active.")
    assert "Salary hidden for your role." in answer
    # The fake server writes every chunk at once, so the deltas arrive together and are coalesced
    # into a few (stream.py); they still add up to the answer.
    assert text_deltas(events) and "".join(text_deltas(events)) == answer
    assert_message_lifecycle(events)

    ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent | ThreadItemAddedEvent)]
    ids += [e.item_id for e in events if isinstance(e, ThreadItemUpdatedEvent)]
    assert not any("__fake_id__" in i for i in ids)
    done_ids = [e.item.id for e in events if isinstance(e, ThreadItemDoneEvent)]
    assert len(done_ids) == len(set(done_ids)) == 3

    # what the provider saw: caller context in the instructions, never in the tool schemas
    for prompt in fake.system_prompts()[:3]:
        assert "tenant=acme; user=u-31x; role=user; locale=de-DE" in prompt
    schemas = fake.tool_schemas()
    assert {schema["name"] for schema in schemas} >= {"lookup_employee", "transfer_to_general_specialist"}
    dumped = json.dumps(schemas)
    assert "acme" not in dumped and "u-31x" not in dumped
    for schema in schemas:
        assert not set(schema["parameters"].get("properties", {})) & {"tenant", "user", "role"}
    assert current.thread.title == "Echo: Who is employee E1001", "the title agent ran on the same provider"


async def test_remote_history_reaches_the_provider(fake: FakeOpenAI, erp: ErpDirectory) -> None:
    config = settings(**_provider_settings("openai", fake.base_url))
    choice = build_model(config)
    try:
        events = await collect(
            AgentResponder(config, choice, erp).respond(
                turn("my name is Ada", "Hello Ada", "and what is my name?", active="general", title="t")
            )
        )
    finally:
        await choice.aclose()
    assert answers(events) == ["Echo: and what is my name?"]
    [body] = fake.requests
    roles = [(m["role"], m.get("content")) for m in body["messages"]]
    assert roles[0][0] == "system"
    assert [role for role, _ in roles[1:]] == ["user", "assistant", "user"]
    assert "Hello Ada" in json.dumps(roles[2][1])


# ------------------------------------------------------------------------------------ the factory


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "local"),
        ({"openai_api_key": "sk-1"}, "openai"),
        ({"gemini_api_key": "g-1"}, "gemini"),
        ({"openai_api_key": "sk-1", "gemini_api_key": "g-1"}, "openai"),
        ({"llm_provider": "gemini", "openai_api_key": "sk-1", "gemini_api_key": "g-1"}, "gemini"),
        ({"llm_provider": "local", "openai_api_key": "sk-1"}, "local"),
    ],
)
def test_provider_rules(overrides: dict[str, Any], expected: str) -> None:
    values = {"llm_provider": None, **overrides}
    assert resolve_provider(settings(**values)) == expected


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"llm_provider": "openai"}, "OPENAI_API_KEY"),
        ({"llm_provider": "gemini"}, "GEMINI_API_KEY"),
    ],
)
def test_an_explicit_provider_without_its_key_is_an_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(settings(**overrides))


async def test_base_urls_and_keys_reach_the_client() -> None:
    openai = build_model(settings(llm_provider=None, openai_api_key="sk-1", openai_base_url="http://h:1/v1"))
    gemini = build_model(settings(llm_provider="gemini", gemini_api_key="g-1"))
    try:
        assert openai.client is not None and str(openai.client.base_url) == "http://h:1/v1/"
        assert openai.client.api_key == "sk-1" and openai.title_model is openai.model
        assert gemini.client is not None and gemini.client.api_key == "g-1"
        assert str(gemini.client.base_url).startswith("https://generativelanguage.googleapis.com/")
    finally:
        await openai.aclose()
        await gemini.aclose()


async def test_the_local_model_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.agent_service.models.factory"):
        choice = build_model(settings(llm_provider=None, local_token_delay_ms=25))
    assert choice.is_local and choice.provider == "local" and choice.client is None
    assert isinstance(choice.model, LocalDemoModel) and choice.model.token_delay_s == 0.025
    assert isinstance(choice.title_model, LocalTitleModel)
    assert "No OPENAI_API_KEY or GEMINI_API_KEY: using the offline local demo model" in caplog.text
