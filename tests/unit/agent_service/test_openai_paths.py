"""The remote-provider path (OpenAI, Gemini, any OpenAI-compatible server) against a real fake server,
and the provider rules of the model factory."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import OpenAIChatCompletionsModel
from chatkit.types import ThreadItemAddedEvent, ThreadItemDoneEvent, ThreadItemUpdatedEvent

from services.agent_service.agents.responder import create_responder
from services.agent_service.models.factory import build_models, resolve_provider, title_models
from services.agent_service.models.offline import OfflineModel, OfflineTitleModel
from services.agent_service.turn import ACTIVE_AGENT_KEY
from switchboard.demo.model import DemoModel
from tests.fakes.openai_server import FakeOpenAI, fake_openai_server
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    demo_responder,
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
    fake: FakeOpenAI, provider: str
) -> None:
    config = settings(**_provider_settings(provider, fake.base_url))
    models = build_models(config)
    assert models.provider == provider and not models.is_local
    assert isinstance(models.get_model(None), OpenAIChatCompletionsModel)
    responder = await demo_responder(models=models)
    current = turn("Who is employee E1001?", tenant="acme", user_id="u-31x", role="user", locale="de-DE")
    try:
        events = await collect(responder.respond(current))
    finally:
        await responder.aclose()

    # router → general specialist (handoff) → lookup_employee (streamed arguments) → streamed answer
    expected_model = "gpt-fake" if provider == "openai" else "gemini-fake"
    assert {body["model"] for body in fake.requests} == {expected_model}
    assert [body.get("stream") for body in fake.requests] == [True, True, True, None], "3 turns + title"
    assert len(workflows(events)) == 1
    assert current.thread.metadata[ACTIVE_AGENT_KEY] == "General specialist"
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


async def test_remote_history_reaches_the_provider(fake: FakeOpenAI) -> None:
    config = settings(**_provider_settings("openai", fake.base_url))
    responder = await demo_responder(models=build_models(config))
    try:
        events = await collect(
            responder.respond(
                turn(
                    "my name is Ada",
                    "Hello Ada",
                    "and what is my name?",
                    active="General specialist",
                    title="t",
                )
            )
        )
    finally:
        await responder.aclose()
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
        build_models(settings(**overrides))


async def test_base_urls_and_keys_reach_the_client() -> None:
    openai = build_models(settings(llm_provider=None, openai_api_key="sk-1", openai_base_url="http://h:1/v1"))
    gemini = build_models(settings(llm_provider="gemini", gemini_api_key="g-1"))
    try:
        assert openai.client is not None and str(openai.client.base_url) == "http://h:1/v1/"
        assert openai.client.api_key == "sk-1"
        # Titles run on the same provider: the same model object for the same name.
        assert title_models(openai).get_model(None) is openai.get_model(None)
        assert openai.get_model("gpt-other") is openai.get_model("gpt-other") is not openai.get_model(None)
        assert gemini.client is not None and gemini.client.api_key == "g-1"
        assert str(gemini.client.base_url).startswith("https://generativelanguage.googleapis.com/")
    finally:
        await openai.aclose()
        await gemini.aclose()


async def test_the_local_model_is_announced(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.agent_service.models.factory"):
        models = build_models(settings(llm_provider=None, local_token_delay_ms=25))
    assert models.is_local and models.provider == "local" and models.client is None
    assert isinstance(models.get_model(None), OfflineModel), "without an app: the plain offline model"
    assert isinstance(title_models(models).get_model(None), OfflineTitleModel)
    assert "No OPENAI_API_KEY or GEMINI_API_KEY: agents run on an offline model" in caplog.text


async def test_offline_the_demo_app_runs_on_its_own_model_with_the_configured_pace(tmp_path: Path) -> None:
    responder = await create_responder(
        settings(llm_provider=None, local_token_delay_ms=25, data_dir=tmp_path)
    )
    try:
        model = responder._models.get_model(None)
        assert isinstance(model, DemoModel) and model.token_delay_s == 0.025
    finally:
        await responder.aclose()
