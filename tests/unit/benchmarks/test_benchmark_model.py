"""The local model's benchmark mode: exactly N short deltas, no tools, no handoff, no title."""

from __future__ import annotations

from typing import Any

import pytest
from agents import ModelSettings, ModelTracing
from agents.items import TResponseInputItem
from openai.types.responses import ResponseOutputMessage, ResponseTextDeltaEvent

from services.agent_service.agents.responder import AgentResponder, benchmark_choice, create_responder
from services.agent_service.agents.team import build_team
from services.agent_service.agents.tools import ERP_TOOLS
from services.agent_service.models.factory import build_model
from services.agent_service.models.local import (
    BENCHMARK_WORDS,
    LocalDemoModel,
    benchmark_deltas,
    benchmark_text,
)
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


async def _stream(model: LocalDemoModel, text: str, **kw: Any) -> list[Any]:
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


@pytest.mark.parametrize("count", [1, 7, 64])
async def test_every_call_streams_exactly_n_deltas_whatever_is_offered(count: int) -> None:
    router = build_team(LocalDemoModel()).router
    model = LocalDemoModel(token_delay_s=5.0, reply_tokens=count)  # the delay is ignored
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


def test_demo_mode_is_unchanged_without_reply_tokens() -> None:
    assert not LocalDemoModel().benchmark_mode and LocalDemoModel().token_delay_s == 0.0
    assert LocalDemoModel(0.015).token_delay_s == 0.015
    with pytest.raises(ValueError, match="at least 1"):
        LocalDemoModel(reply_tokens=0)


def test_the_setting_switches_the_local_model_only() -> None:
    local = build_model(settings())
    assert benchmark_choice(local, None) is local
    chosen = benchmark_choice(local, 12)
    assert isinstance(chosen.model, LocalDemoModel) and chosen.model.reply_tokens == 12
    assert chosen.title_model is local.title_model and chosen.is_local
    remote = build_model(settings(llm_provider="openai", openai_api_key="sk-test"))
    assert benchmark_choice(remote, 12) is remote


async def test_a_turn_in_benchmark_mode_answers_as_the_router_without_handoff_or_title() -> None:
    responder: AgentResponder = await create_responder(settings(local_reply_tokens=16))
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
