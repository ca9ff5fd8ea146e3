"""The demo app's benchmark mode (`SWITCHBOARD_LOCAL_REPLY_TOKENS`): exactly N short deltas, no tools,
no handoff, no title; paced at R tokens per second with `SWITCHBOARD_LOCAL_TOKENS_PER_S`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from agents import ModelSettings, ModelTracing, OpenAIChatCompletionsModel
from agents.items import TResponseInputItem
from openai.types.responses import ResponseCompletedEvent, ResponseOutputMessage, ResponseTextDeltaEvent

from services.agent_service.agents.responder import AppResponder, create_responder
from switchboard.app import DEFAULT_TITLE_AGENT, AppEnvironment
from switchboard.app.offline import ScriptedModel
from switchboard.demo import create_app
from switchboard.demo.benchmark import (
    BENCHMARK_WORDS,
    MAX_REPLY_TOKENS,
    MAX_TOKENS_PER_S,
    REPLY_TOKENS_VARIABLE,
    TOKENS_PER_S_VARIABLE,
    BenchmarkModel,
    TokenSchedule,
    benchmark_deltas,
    benchmark_text,
    tokens_per_s_from_environment,
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


async def _stream(model: ScriptedModel, text: str, **kw: Any) -> list[Any]:
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


async def test_every_call_reports_its_usage_as_a_provider_would() -> None:
    model = BenchmarkModel(12)
    events = await _stream(model, "Where is order SO-1001?")
    usage = events[-1].response.usage
    assert usage is not None, "the completed response carries the usage the stack counts"
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (4, 12, 16)
    assert all(
        getattr(event, "response", None) is None or event.response.usage is None for event in events[:-1]
    )
    response = await model.get_response(
        None,
        [_user("one two"), _user("three")],
        ModelSettings(),
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    )
    assert (response.usage.requests, response.usage.input_tokens, response.usage.output_tokens) == (1, 3, 12)
    # A scripted model reports no tokens unless it says so.
    plain = DemoModel()
    [*_, completed] = await _stream(plain, "hello")
    assert isinstance(completed, ResponseCompletedEvent) and completed.response.usage is None


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


# --------------------------------------------------------------------------- paced (issue #17)


async def _delta_times(
    model: BenchmarkModel, *, block_after: int | None = None, block_s: float = 0.0
) -> list[float]:
    """The event-loop time at which each text delta came out; after delta `block_after` the consumer
    blocks the event loop for `block_s` (a busy server)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []
    async for event in model.stream_response(
        None,
        [_user("hi")],
        ModelSettings(),
        [],
        None,
        [],
        ModelTracing.DISABLED,
        previous_response_id=None,
        conversation_id=None,
        prompt=None,
    ):
        if isinstance(event, ResponseTextDeltaEvent):
            times.append(loop.time())
            if len(times) == block_after:
                time.sleep(block_s)  # noqa: ASYNC251 - blocking the loop is the point
    return times


async def test_a_paced_answer_takes_its_tokens_over_count_over_rate() -> None:
    model = BenchmarkModel(10, tokens_per_s=100.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    times = await _delta_times(model)
    assert len(times) == 10 and model.deltas_emitted == 10
    assert times[0] - started < 0.05, "the first token is due at once"
    # Token k is due k/100 s after the start: the last one (k = 9) after 90 ms, none early.
    for index, at in enumerate(times):
        assert at >= started + index / 100 - 0.002
    assert 0.088 <= times[-1] - started < 0.5


async def test_tokens_that_fell_behind_come_out_at_once_and_the_schedule_does_not_drift() -> None:
    model = BenchmarkModel(20, tokens_per_s=100.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    times = await _delta_times(model, block_after=3, block_s=0.1)  # blocked from ~20 to ~120 ms
    # Tokens 3 to ~12 were due while the loop was blocked: they follow each other without a sleep.
    overdue = [t for index, t in enumerate(times) if index >= 3 and started + index / 100 < times[3]]
    assert len(overdue) >= 8
    assert overdue[-1] - overdue[0] < 0.005
    # The schedule is absolute: the block did not push the later tokens back by 100 ms.
    assert times[-1] - started < 0.19 + 0.05
    assert times[-1] >= started + 0.19 - 0.002


async def test_without_a_rate_the_model_does_not_wait() -> None:
    model = BenchmarkModel(50)
    assert model.tokens_per_s is None
    times = await _delta_times(model)
    assert len(times) == 50 and times[-1] - times[0] < 0.05


async def test_a_schedule_is_due_at_start_plus_k_over_rate() -> None:
    schedule = TokenSchedule(50.0, start=10.0)
    assert [schedule.due(k) for k in (0, 1, 50, 299)] == [10.0, 10.02, 11.0, 15.98]
    past = TokenSchedule(50.0, start=asyncio.get_running_loop().time() - 60)
    started = time.perf_counter()
    await past.wait(10)  # long overdue: returns at once
    assert time.perf_counter() - started < 0.01


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan"), MAX_TOKENS_PER_S * 2])
def test_a_bad_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        BenchmarkModel(10, tokens_per_s=rate)


def test_the_rate_variable_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKENS_PER_S_VARIABLE, raising=False)
    assert tokens_per_s_from_environment() is None
    for raw, rate in (("50", 50.0), (" 12.5 ", 12.5), ("1e3", 1000.0)):
        monkeypatch.setenv(TOKENS_PER_S_VARIABLE, raw)
        assert tokens_per_s_from_environment() == rate


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf", "nan", "1e9", "50/s"])
def test_a_bad_rate_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, "12")
    monkeypatch.setenv(TOKENS_PER_S_VARIABLE, value)
    with pytest.raises(ValueError, match=f"{TOKENS_PER_S_VARIABLE} must be a positive number"):
        create_app()


def test_the_rate_variable_paces_the_benchmark_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(REPLY_TOKENS_VARIABLE, "300")
    monkeypatch.setenv(TOKENS_PER_S_VARIABLE, "50")
    app = create_app()
    assert app.offline_model is not None
    model = app.offline_model(_environment(tmp_path))
    assert isinstance(model, BenchmarkModel) and (model.reply_tokens, model.tokens_per_s) == (300, 50.0)
    monkeypatch.delenv(TOKENS_PER_S_VARIABLE)
    unpaced = create_app().offline_model
    assert unpaced is not None
    model = unpaced(_environment(tmp_path))
    assert isinstance(model, BenchmarkModel) and model.tokens_per_s is None


def test_a_rate_without_benchmark_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPLY_TOKENS_VARIABLE, raising=False)
    monkeypatch.setenv(TOKENS_PER_S_VARIABLE, "50")
    with pytest.raises(ValueError, match=f"set {REPLY_TOKENS_VARIABLE} too"):
        create_app()
