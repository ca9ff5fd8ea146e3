"""The demo app's benchmark mode (`SWITCHBOARD_LOCAL_REPLY_TOKENS`): exactly N short deltas, no tools,
no handoff, no title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import ModelSettings, ModelTracing, OpenAIChatCompletionsModel
from agents.items import TResponseInputItem
from openai.types.responses import ResponseOutputMessage, ResponseTextDeltaEvent

from services.agent_service.agents.responder import AppResponder, create_responder
from switchboard.app import DEFAULT_TITLE_AGENT, AppEnvironment
from switchboard.demo import create_app
from switchboard.demo.benchmark import (
    BENCHMARK_WORDS,
    MAX_REPLY_TOKENS,
    REPLY_TOKENS_VARIABLE,
    BenchmarkModel,
    benchmark_deltas,
    benchmark_text,
)
from switchboard.demo.model import DemoModel
from switchboard.demo.team import build_team
from switchboard.demo.tools import ERP_TOOLS
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    collect,
    settings,
    text_deltas,
    turn,
    workflows,
)


def _user(text: str) -> TResponseInputItem:
    return {"role": "user", "type": "message", "content": [{"type": "input_text", "text": text}]}


async def _stream(model: BenchmarkModel, text: str, **kw: Any) -> list[Any]:
    return [
        event
        async for event in model.stream_response(
            kw.get("system", "You are the Billing specialist."),
            [_user(text)],
            ModelSettings(),
            kw.get("tools", []),
            None,
            kw.get("handoffs", []),
            ModelTracing.DISABLED,
            previous_response_id=None,
            conversation_id=None,
            prompt=None,
        )
    ]


def test_benchmark_deltas_are_short_words_that_add_up() -> None:
    deltas = benchmark_deltas(45)
    assert len(deltas) == 45
    assert deltas[0] == BENCHMARK_WORDS[0] and all(d.startswith(" ") for d in deltas[1:])
    assert all(0 < len(d) <= 12 and d.strip().isalpha() for d in deltas)
    assert "".join(deltas) == benchmark_text(45) == " ".join(d.strip() for d in deltas)
    with pytest.raises(ValueError, match="at least one delta"):
        benchmark_deltas(0)
    with pytest.raises(ValueError, match="at least one delta"):
        BenchmarkModel(0)


@pytest.mark.parametrize("count", [1, 7, 64])
async def test_every_call_streams_exactly_n_deltas_whatever_is_offered(count: int) -> None:
    router = build_team()
    model = BenchmarkModel(count)
    assert model.token_delay_s == 0.0, "no delay between deltas"
    # A billing question with an order id would route, hand off or call a tool in demo mode.
    for offered in ({"handoffs": router.handoffs}, {"tools": ERP_TOOLS}, {}):
        events = await _stream(model, "Where is order SO-1001? I need a refund", **offered)
        deltas = [e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)]
        assert deltas == list(benchmark_deltas(count))
        assert not [e for e in events if e.type.startswith("response.function_call")]
        [message] = events[-1].response.output
        assert isinstance(message, ResponseOutputMessage)
        assert message.content[0].text == benchmark_text(count)  # type: ignore[union-attr]
    assert model.deltas_emitted == 3 * count


def _environment(tmp_path: Path, delay_s: float = 0.0) -> AppEnvironment:
    return AppEnvironment(data_dir=tmp_path, provider="local", offline_token_delay_s=delay_s)


def test_demo_mode_is_unchanged_without_reply_tokens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(REPLY_TOKENS_VARIABLE, raising=False)
    app = create_app()
    assert app.offline_model is not None and app.title_agent is DEFAULT_TITLE_AGENT
    model = app.offline_model(_environment(tmp_path))
    assert isinstance(model, DemoModel) and model.token_delay_s == 0.0
    paced = app.offline_model(_environment(tmp_path, 0.015))
    assert isinstance(paced, DemoModel) and paced.token_delay_s == 0.015


def test_the_variable_switches_the_demo_app_to_benchmark_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, "12")
    app = create_app()
    assert app.offline_model is not None
    model = app.offline_model(_environment(tmp_path, 5.0))
    assert isinstance(model, BenchmarkModel) and model.reply_tokens == 12
    assert model.token_delay_s == 0.0, "the configured pace is ignored"
    assert app.title_agent is None, "no title"


async def test_the_variable_leaves_a_remote_provider_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, "12")
    remote = await create_responder(
        settings(llm_provider="openai", openai_api_key="sk-test", data_dir=tmp_path)
    )
    try:
        assert isinstance(remote._models.get_model(None), OpenAIChatCompletionsModel)
    finally:
        await remote.aclose()


@pytest.mark.parametrize("value", ["0", "abc", str(MAX_REPLY_TOKENS + 1), "-3", "1.5"])
def test_a_bad_reply_token_count_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, value)
    with pytest.raises(ValueError, match=REPLY_TOKENS_VARIABLE):
        create_app()


async def test_a_turn_in_benchmark_mode_answers_as_the_router_without_handoff_or_title(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, "16")
    responder: AppResponder = await create_responder(settings(data_dir=tmp_path))
    try:
        current = turn("My invoice is wrong and the API crashes, E1001 SO-1001")
        events = await collect(responder.respond(current))
    finally:
        await responder.aclose()
    assert answers(events) == [benchmark_text(16)]
    assert "".join(text_deltas(events)) == benchmark_text(16)
    assert 1 <= len(text_deltas(events)) <= 16  # deltas that were ready together are coalesced
    assert workflows(events) == []  # no handoff
    assert current.thread.metadata == {} and current.thread.title is None  # no specialist, no title
    assert_message_lifecycle(events)
