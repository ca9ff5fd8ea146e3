"""The hot-path optimisations keep the wire exact: coalesced deltas, direct protobuf and SSE frames."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from agents import RawResponsesStreamEvent
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    ProgressUpdateEvent,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
)
from openai.types.responses import ResponseRefusalDeltaEvent, ResponseTextDeltaEvent

from services.agent_service.agents.responder import AppResponder, _Outbox, _RunEnded, _Text
from services.agent_service.server import event_to_proto
from services.common import codec
from services.edge.sse import encode_event, encode_model, encode_text_delta
from switchboard.app.offline import ScriptedModel
from switchboard.demo.benchmark import BenchmarkModel, benchmark_text
from switchboard.demo.model import DemoModel
from tests.support.chatkit_wire import parse_sse
from tests.unit.agent_service.agent_support import (
    answers,
    assert_message_lifecycle,
    check_wire,
    demo_responder,
    text_deltas,
    turn,
)

TRICKY = [
    "",
    " lorem",
    'quotes " and \\ backslashes',
    "new\nlines\tand\r\x00\x01\x1f controls",
    "ünïcödé — 👋🏽 \u2028\u2029 \x7f",
    "</script><!-- -->",
    "a" * 10_000,
]


def _raw_delta(text: str, refusal: bool = False) -> RawResponsesStreamEvent:
    if refusal:
        data: Any = ResponseRefusalDeltaEvent(
            type="response.refusal.delta",
            item_id="m",
            output_index=0,
            content_index=0,
            delta=text,
            sequence_number=0,
        )
    else:
        data = ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id="m",
            output_index=0,
            content_index=0,
            delta=text,
            logprobs=[],
            sequence_number=0,
        )
    return RawResponsesStreamEvent(data=data)


async def test_the_outbox_merges_text_that_queued_up_back_to_back_and_keeps_order() -> None:
    outbox = _Outbox()
    progress = ProgressUpdateEvent(text="Looking up")
    for envelope in (_raw_delta("Hel"), _raw_delta(""), _raw_delta("lo", refusal=True)):
        outbox.put(envelope)
    outbox.emit(progress)
    outbox.put(_raw_delta(" world"))
    outbox.put(_RunEnded())
    assert await outbox.take() == [_Text(["Hel", "lo"]), progress, _Text([" world"]), _RunEnded()]
    waiter = asyncio.ensure_future(outbox.take())
    await asyncio.sleep(0)
    assert not waiter.done()  # nothing queued: take waits, it never returns empty
    outbox.put(_raw_delta("again"))
    assert await waiter == [_Text(["again"])]


async def _consume(model: ScriptedModel, pause_s: float) -> list[ThreadStreamEvent]:
    """One turn of the demo app on `model`, read by a consumer that pauses after every event."""
    responder: AppResponder = await demo_responder(model)
    events = []
    try:
        async for event in responder.respond(turn("hello")):
            check_wire(event)
            events.append(event)
            if pause_s:
                await asyncio.sleep(pause_s)  # a consumer busy writing to a slow network
    finally:
        await responder.aclose()
    return events


@pytest.mark.parametrize("pause_s", [0.0, 0.002])
async def test_coalesced_deltas_add_up_to_the_final_text(pause_s: float) -> None:
    events = await _consume(BenchmarkModel(200), pause_s)
    assert answers(events) == [benchmark_text(200)]
    assert "".join(text_deltas(events)) == benchmark_text(200)
    assert_message_lifecycle(events)
    if pause_s:
        assert len(text_deltas(events)) < 20, "a consumer that is behind gets few, large deltas"


async def test_a_consumer_that_keeps_up_gets_the_text_as_it_comes() -> None:
    # With a real token pace the consumer is idle when a token arrives: one delta per token.
    events = await _consume(DemoModel(token_delay_s=0.003), 0.0)
    [answer] = answers(events)
    words = answer.split(" ")
    assert "".join(text_deltas(events)) == answer
    # One delta per word, unless the machine stalled the loop for longer than a token's pause.
    assert len(text_deltas(events)) >= len(words) // 2


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("index", [0, 3])
def test_the_direct_proto_of_a_delta_is_the_codecs(text: str, index: int) -> None:
    event = ThreadItemUpdatedEvent(
        item_id="msg_0123456789abcdef01234567",
        update=AssistantMessageContentPartTextDelta(content_index=index, delta=text),
    )
    assert event_to_proto(event) == codec.event_to_proto(event)
    other = ProgressUpdateEvent(text="x")
    assert event_to_proto(other) == codec.event_to_proto(other)


def _random_text(rng: random.Random) -> str:
    alphabet = [chr(c) for c in (*range(0, 0x80), 0xE9, 0x2028, 0x2029, 0xFFFD, 0x1F44B, 0x10FFFF)]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))


def test_the_direct_sse_frame_of_a_delta_is_chatkit_servers_frame() -> None:
    rng = random.Random(20261126)
    texts = [*TRICKY, *(_random_text(rng) for _ in range(300))]
    for number, text in enumerate(texts):
        model = ThreadItemUpdatedEvent(
            item_id=f"msg_{number:08x}",
            update=AssistantMessageContentPartTextDelta(content_index=number % 3, delta=text),
        )
        expected = b"data: " + encode_model(model) + b"\n\n"
        assert encode_text_delta(model.item_id, number % 3, text) == expected
        assert encode_event(codec.event_to_proto(model)) == expected
        assert parse_sse(expected) == [model]
