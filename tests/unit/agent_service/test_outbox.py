"""The responder's outbox: text deltas merge while the consumer is busy, and a stream that keeps up
never waits for more."""

from __future__ import annotations

import asyncio
import time

from agents import RawResponsesStreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from services.agent_service.agents.responder import _Outbox, _Text


def _delta(text: str) -> RawResponsesStreamEvent:
    return RawResponsesStreamEvent(
        data=ResponseTextDeltaEvent(
            type="response.output_text.delta",
            delta=text,
            item_id="msg",
            output_index=0,
            content_index=0,
            sequence_number=0,
            logprobs=[],
        )
    )


async def test_a_stream_that_keeps_up_never_waits() -> None:
    outbox = _Outbox()
    for word in ("a", "b", "c"):
        outbox.put(_delta(word))
        started = time.perf_counter()
        assert await outbox.take() == [_Text([word])]
        assert time.perf_counter() - started < 0.005
        await asyncio.sleep(0.01)  # the model's pace, the consumer waiting meanwhile


async def test_deltas_that_pile_up_come_out_as_one_text_run() -> None:
    outbox = _Outbox()
    for word in ("a", "b", "c"):
        outbox.put(_delta(word))
    assert await outbox.take() == [_Text(["a", "b", "c"])]
