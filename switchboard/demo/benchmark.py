"""Benchmark mode of the demo app: every answer is exactly N short text deltas, as fast as possible.

Switched on by `SWITCHBOARD_LOCAL_REPLY_TOKENS=N`; the model applies while no LLM provider is
configured (offline), and the demo app names no threads while the variable is set, whatever the
provider.
Every model call, whatever agent makes it and whatever tools or handoffs it offers, answers in text
with exactly N deltas, one short word each (`benchmark_deltas(N)`: "lorem", " ipsum", " dolor"…),
and no delay between them (each delta still yields to the event loop once, so a run stays
cancellable and concurrent streams interleave as they would with a network model). No tool call, no
handoff (the router answers directly) and no title: the numbers a load generator measures against a
stack in this mode are the backend's own cost, not model latency.
"""

from __future__ import annotations

import os
from typing import Final

from agents import Handoff, Tool
from agents.items import TResponseInputItem

from switchboard.app.offline import Reply, Say, ScriptedModel

REPLY_TOKENS_VARIABLE: Final = "SWITCHBOARD_LOCAL_REPLY_TOKENS"
MAX_REPLY_TOKENS: Final = 100_000

BENCHMARK_WORDS: Final = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do"),
    *("eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim"),
)
"""The vocabulary of benchmark answers: short ASCII words, so every delta is a few bytes."""


def benchmark_deltas(count: int) -> tuple[str, ...]:
    """The `count` text deltas of a benchmark answer: the first word bare, then " word" each."""
    if count < 1:
        raise ValueError("a benchmark answer has at least one delta")
    words = BENCHMARK_WORDS
    return tuple(
        words[index % len(words)] if index == 0 else f" {words[index % len(words)]}" for index in range(count)
    )


def benchmark_text(count: int) -> str:
    """The full text of a benchmark answer of `count` deltas (what every stream must add up to)."""
    return "".join(benchmark_deltas(count))


def reply_tokens_from_environment() -> int | None:
    """`SWITCHBOARD_LOCAL_REPLY_TOKENS` as a number of deltas, None when unset (ValueError if bad)."""
    raw = os.environ.get(REPLY_TOKENS_VARIABLE, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_REPLY_TOKENS:
        raise ValueError(f"{REPLY_TOKENS_VARIABLE} must be a whole number from 1 to {MAX_REPLY_TOKENS}")
    return int(raw)


class BenchmarkModel(ScriptedModel):
    """Answers every call with `reply_tokens` deltas, no tool call, no handoff, no delay."""

    def __init__(self, reply_tokens: int) -> None:
        super().__init__(0.0)
        self.reply_tokens = reply_tokens
        self._reply = Say(benchmark_text(reply_tokens), benchmark_deltas(reply_tokens))

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        return self._reply
