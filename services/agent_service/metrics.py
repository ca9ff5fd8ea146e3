"""The agent service's metrics (Prometheus, see services/common/metrics.py).

Streams (labels: `operation`, the streaming operation by its per-event RPC's name, also through `Stream`):
- `switchboard_agent_streams_in_flight` (gauge, no label: what an HPA scales on)
- `switchboard_agent_stream_first_text_seconds` (histogram): from the call to the first text delta
- `switchboard_agent_stream_duration_seconds` (histogram): the whole stream
- `switchboard_agent_stream_events_total`, `switchboard_agent_stream_text_deltas_total`: events
  and text deltas sent (counted per stream, added once at its end: nothing per delta but an int)

Models and agents (from the Agents SDK's stream: every `response.completed` is one model call with
the usage the provider reported; the run items `tool_called` and `handoff_occured`; and every
dictation the provider transcribed, under the transcription model, with the tokens it reported:
none when it reported only the audio's duration):
- `switchboard_model_calls_total{provider, model}`
- `switchboard_model_tokens_total{provider, model, direction="input"|"output"}`
- `switchboard_agent_tool_calls_total{tool}`, `switchboard_agent_handoffs_total{agent}` (the target)

Store:
- `switchboard_store_transaction_seconds{outcome="commit"|"rollback"}` (histogram)
- `switchboard_store_run_lease_conflicts_total`: requests refused (or given up waiting) because
  another run held the thread (ABORTED, HTTP 409)
- `switchboard_store_pool_connections_in_use` (gauge, read at scrape time from SQLAlchemy's pool)

With `SWITCHBOARD_AGENT_WORKERS` > 1 every worker writes its values to prometheus_client's
multiprocess files and the supervisor serves their merge (services/agent_service/workers.py):
counters and histograms add up over the workers (dead ones included, so totals never go back), the
gauges are `livesum` (the sum over the workers alive), and the pool gauge, whose callback only a
scrape of the worker itself could call, is sampled by each worker every `POOL_SAMPLE_S` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Final

from agents import HandoffOutputItem, RawResponsesStreamEvent, RunItemStreamEvent, StreamEvent
from openai.types.responses import ResponseCompletedEvent
from prometheus_client import Counter, Gauge, Histogram

from services.common import metrics
from services.common.metrics import DB_BUCKETS, LATENCY_BUCKETS, STREAM_BUCKETS
from services.limits import LimitReached

STREAMS_IN_FLIGHT: Final = Gauge(
    "switchboard_agent_streams_in_flight", "Streaming calls being served", multiprocess_mode="livesum"
)
FIRST_TEXT_SECONDS: Final = Histogram(
    "switchboard_agent_stream_first_text_seconds",
    "Time from a streaming call's start to its first text delta",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
STREAM_SECONDS: Final = Histogram(
    "switchboard_agent_stream_duration_seconds",
    "Duration of streaming calls, until their last event",
    ["operation"],
    buckets=STREAM_BUCKETS,
)
STREAM_EVENTS: Final = Counter(
    "switchboard_agent_stream_events_total", "ChatKit events streamed", ["operation"]
)
STREAM_TEXT_DELTAS: Final = Counter(
    "switchboard_agent_stream_text_deltas_total", "Assistant text deltas streamed", ["operation"]
)

MODEL_CALLS: Final = Counter("switchboard_model_calls_total", "Completed model calls", ["provider", "model"])
MODEL_TOKENS: Final = Counter(
    "switchboard_model_tokens_total",
    "Tokens the provider reported, by direction (input, output)",
    ["provider", "model", "direction"],
)
TOOL_CALLS: Final = Counter("switchboard_agent_tool_calls_total", "Tool calls by the agents", ["tool"])
HANDOFFS: Final = Counter("switchboard_agent_handoffs_total", "Handoffs, by target agent", ["agent"])

STORE_TRANSACTION_SECONDS: Final = Histogram(
    "switchboard_store_transaction_seconds",
    "Store transactions, from begin to commit or rollback",
    ["outcome"],
    buckets=DB_BUCKETS,
)
STORE_COMMIT: Final = STORE_TRANSACTION_SECONDS.labels("commit")
STORE_ROLLBACK: Final = STORE_TRANSACTION_SECONDS.labels("rollback")
LIMIT_REFUSALS: Final = Counter(
    "switchboard_agent_limit_refusals_total", "Requests refused for a limit, by limit", ["limit"]
)
LEASE_CONFLICTS: Final = Counter(
    "switchboard_store_run_lease_conflicts_total",
    "Requests refused because another run held the thread's lease",
)
POOL_IN_USE: Final = Gauge(
    "switchboard_store_pool_connections_in_use",
    "Database connections checked out of the pool",
    multiprocess_mode="livesum",
)
POOL_SAMPLE_S: Final = 1.0
"""With workers (multiprocess metrics), how often each worker writes its pool's use to the gauge."""


def count_refusal(error: Exception) -> None:
    """Count a request refused for a limit (`LIMIT_REFUSALS`, by the limit's name); any other
    error counts nothing here."""
    if isinstance(error, LimitReached):
        LIMIT_REFUSALS.labels(error.limit).inc()


class StreamMetrics:
    """The pre-bound children of one streaming operation, and the in-flight gauge (nothing is looked
    up per event)."""

    __slots__ = ("events", "first_text", "in_flight", "seconds", "text_deltas")

    def __init__(self, operation: str) -> None:
        self.in_flight = STREAMS_IN_FLIGHT
        self.first_text = FIRST_TEXT_SECONDS.labels(operation)
        self.seconds = STREAM_SECONDS.labels(operation)
        self.events = STREAM_EVENTS.labels(operation)
        self.text_deltas = STREAM_TEXT_DELTAS.labels(operation)


class ModelUsage:
    """Model call and token counters of one provider, children cached per model name."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._children: dict[str, tuple[Counter, Counter, Counter]] = {}

    def record(self, model: str, *, requests: int, input_tokens: int, output_tokens: int) -> None:
        children = self._children.get(model)
        if children is None:
            children = self._children[model] = (
                MODEL_CALLS.labels(self.provider, model),
                MODEL_TOKENS.labels(self.provider, model, "input"),
                MODEL_TOKENS.labels(self.provider, model, "output"),
            )
        calls, tokens_in, tokens_out = children
        if requests:
            calls.inc(requests)
        if input_tokens:
            tokens_in.inc(input_tokens)
        if output_tokens:
            tokens_out.inc(output_tokens)


def watch_pool(checked_out: Callable[[], int]) -> asyncio.Task[None] | None:
    """Report the pool's checked-out connections at each scrape.

    In a worker (multiprocess metrics) a scrape reads files, not this process: a task started here
    (call it on the event loop, cancel it at shutdown) writes the value every `POOL_SAMPLE_S`. None
    otherwise, and with metrics off."""
    if not metrics.multiprocess():
        POOL_IN_USE.set_function(lambda: float(checked_out()))
        return None
    if not metrics.enabled():
        return None
    return asyncio.create_task(_sample_pool(checked_out), name="pool-metric")


async def _sample_pool(checked_out: Callable[[], int]) -> None:
    while True:
        with contextlib.suppress(Exception):  # a store closing under us: the next sample will do
            POOL_IN_USE.set(float(checked_out()))
        await asyncio.sleep(POOL_SAMPLE_S)


def model_call_of(event: StreamEvent) -> tuple[str, int, int] | None:
    """(model, input tokens, output tokens) of a finished model call as its response reported them
    (0 when it reported none); None for any other event."""
    if not isinstance(event, RawResponsesStreamEvent) or not isinstance(event.data, ResponseCompletedEvent):
        return None
    response = event.data.response
    reported = response.usage
    return (
        str(response.model or "unknown"),
        reported.input_tokens if reported is not None else 0,
        reported.output_tokens if reported is not None else 0,
    )


def observe_sdk_event(event: StreamEvent, usage: ModelUsage) -> None:
    """Count what a run's SDK event says: a finished model call (with its reported usage), a tool
    call or a handoff. Text deltas never get here (the responder merges them first)."""
    if isinstance(event, RawResponsesStreamEvent):
        call = model_call_of(event)
        if call is not None:
            model, input_tokens, output_tokens = call
            usage.record(model, requests=1, input_tokens=input_tokens, output_tokens=output_tokens)
    elif isinstance(event, RunItemStreamEvent):
        if event.name == "tool_called":
            TOOL_CALLS.labels(_tool_name(event.item.raw_item)).inc()
        elif event.name == "handoff_occured" and isinstance(event.item, HandoffOutputItem):
            HANDOFFS.labels(event.item.target_agent.name).inc()


def _tool_name(raw: object) -> str:
    name = raw.get("name") if isinstance(raw, dict) else getattr(raw, "name", None)
    if isinstance(name, str) and name:
        return name
    kind = raw.get("type") if isinstance(raw, dict) else getattr(raw, "type", None)
    return str(kind or "unknown")
