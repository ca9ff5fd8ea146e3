"""Benchmark mode of the demo app: every answer is exactly N short text deltas, as fast as possible
or at a fixed token rate.

Switched on by `SWITCHBOARD_LOCAL_REPLY_TOKENS=N`; the model applies while no LLM provider is
configured (offline), and the demo app names no threads while the variable is set, whatever the
provider.
Every model call, whatever agent makes it and whatever tools or handoffs it offers, answers in text
with exactly N deltas, one short word (one token) each (`benchmark_deltas(N)`: "lorem", " ipsum",
" dolor"…), and no delay between them (each delta still yields to the event loop once, so a run
stays cancellable and concurrent streams interleave as they would with a network model). Every call
reports its usage (the words of the users' messages as input tokens, N output tokens), so the stack
counts tokens as it does with a provider. No tool call, no handoff (the router answers directly) and
no title: the numbers a load generator measures against a stack in this mode are the backend's own
cost, not model latency.

`SWITCHBOARD_LOCAL_TOKENS_PER_S=R` (with the above; a positive number) paces the answer at R tokens
per second instead, as a provider streams it (`TokenSchedule`): token k of a call is due k/R seconds
after the call started streaming. The model sleeps until the next token is due, and emits
every token that is already due at once, without sleeping: when the event loop is too busy to wake
the model on time, the overdue tokens come out together, as a real provider's tokens would wait in
the socket, and the backend's overload shows as late delivery rather than as a slower model.
"""

from __future__ import annotations

import asyncio
import math
import os
from typing import Final

from agents import Handoff, Tool
from agents.items import TResponseInputItem

from switchboard.app.offline import DeltaPacer, Reply, Say, ScriptedModel, user_texts

REPLY_TOKENS_VARIABLE: Final = "SWITCHBOARD_LOCAL_REPLY_TOKENS"
MAX_REPLY_TOKENS: Final = 100_000
TOKENS_PER_S_VARIABLE: Final = "SWITCHBOARD_LOCAL_TOKENS_PER_S"
MAX_TOKENS_PER_S: Final = 1_000_000.0

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


def tokens_per_s_from_environment() -> float | None:
    """`SWITCHBOARD_LOCAL_TOKENS_PER_S` as tokens per second, None when unset (ValueError if bad)."""
    raw = os.environ.get(TOKENS_PER_S_VARIABLE, "").strip()
    if not raw:
        return None
    try:
        return checked_tokens_per_s(float(raw))
    except ValueError:
        raise ValueError(
            f"{TOKENS_PER_S_VARIABLE} must be a positive number of tokens per second, at most "
            f"{MAX_TOKENS_PER_S:,.0f} (got {raw!r})"
        ) from None


def checked_tokens_per_s(tokens_per_s: float) -> float:
    """`tokens_per_s` if it is a rate the model can keep (positive, finite, at most the maximum)."""
    if not math.isfinite(tokens_per_s) or not 0 < tokens_per_s <= MAX_TOKENS_PER_S:
        raise ValueError(f"a token rate must be positive and at most {MAX_TOKENS_PER_S:,.0f} per second")
    return tokens_per_s


class TokenSchedule:
    """The pace of one streamed answer at `tokens_per_s`: token k is due at `start + k / tokens_per_s`
    (event-loop time), the first one at once.

    The schedule is absolute: a token that is late does not push the next ones back. `wait` sleeps
    until its token is due and returns at once for a token already due, without yielding to the event
    loop, so tokens that fell behind are emitted together and the stream catches up."""

    def __init__(self, tokens_per_s: float, start: float) -> None:
        self.tokens_per_s = tokens_per_s
        self.start = start

    def due(self, index: int) -> float:
        """When token `index` (0-based) is due, in event-loop time."""
        return self.start + index / self.tokens_per_s

    async def wait(self, index: int) -> None:
        delay = self.due(index) - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)


class BenchmarkModel(ScriptedModel):
    """Answers every call with `reply_tokens` deltas, no tool call, no handoff; no delay, or at
    `tokens_per_s` tokens per second (`TokenSchedule`, anchored when the call starts streaming)."""

    def __init__(self, reply_tokens: int, tokens_per_s: float | None = None) -> None:
        super().__init__(0.0)
        self.reply_tokens = reply_tokens
        self.tokens_per_s = None if tokens_per_s is None else checked_tokens_per_s(tokens_per_s)
        self._reply = Say(benchmark_text(reply_tokens), benchmark_deltas(reply_tokens))

    def pacer(self) -> DeltaPacer:
        if self.tokens_per_s is None:
            return super().pacer()
        return TokenSchedule(self.tokens_per_s, asyncio.get_running_loop().time())

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        return self._reply

    def tokens(
        self, instructions: str | None, input: str | list[TResponseInputItem], reply: Reply
    ) -> tuple[int, int]:
        """Usage as a provider reports it, so that the stack counts tokens (metrics, the day's
        usage, the tenant's budget) as it does in production: the words of the users' messages in
        the input as its tokens (a tokenizer's count stands in for nothing here), and one token per
        delta of the answer."""
        return sum(len(text.split()) for text in user_texts(input)), self.reply_tokens
