"""The Agents SDK's traces as OpenTelemetry spans, in the trace of the gRPC call that ran the agent.

The SDK traces each run itself (a trace per `Runner.run_streamed`, spans for agents, model calls,
tool calls, handoffs, guardrails) and hands them to its trace processors. Its default processor
uploads them to OpenAI; Switchboard replaces the processors ENTIRELY (`models/factory.py`):

- tracing off (the default): no processor at all, and SDK tracing disabled;
- tracing on: `OpenTelemetryBridge` only, which turns each SDK span into an OpenTelemetry span.

So nothing is ever sent to OpenAI's trace backend. The SDK trace becomes a span `agent workflow`
whose parent is the OpenTelemetry span current when the run started (the agent service's gRPC server
span, `services/common/tracing.py`); each SDK span becomes a child of its SDK parent's span:

    ChatService/Stream (grpc server, switchboard.operation=CreateThread)
      agent workflow
        agent run
          invoke_agent Router
            agent turn 1: chat gpt-4.1-mini, handoff Router -> General specialist
          invoke_agent General specialist
            agent turn 1: chat gpt-4.1-mini, execute_tool lookup_employee
            agent turn 2: chat gpt-4.1-mini

Attributes follow the OpenTelemetry GenAI conventions where they fit (`gen_ai.operation.name`,
`gen_ai.agent.name`, `gen_ai.request.model`, `gen_ai.tool.name`, `gen_ai.usage.input_tokens`, ...).
Only names, models, counts and error kinds are recorded: never inputs, outputs, instructions or tool
arguments (the runs also pass `trace_include_sensitive_data=False`, so the SDK does not keep them).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agents import set_trace_processors, set_tracing_disabled
from agents.tracing import Span as SdkSpan
from agents.tracing import Trace as SdkTrace
from agents.tracing import TracingProcessor
from agents.tracing.span_data import (
    AgentSpanData,
    CustomSpanData,
    FunctionSpanData,
    GenerationSpanData,
    GuardrailSpanData,
    HandoffSpanData,
    MCPListToolsSpanData,
    ResponseSpanData,
    SpeechSpanData,
    TaskSpanData,
    TranscriptionSpanData,
    TurnSpanData,
)
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

logger = logging.getLogger(__name__)

Attributes = dict[str, str | int | bool | list[str]]


def install_bridge() -> None:
    """Make `OpenTelemetryBridge` the SDK's only trace processor and enable SDK tracing (tracing on:
    `services/agent_service/models/factory.py` calls this; off, it removes every processor)."""
    set_trace_processors([OpenTelemetryBridge(trace.get_tracer("switchboard.agents"))])
    set_tracing_disabled(False)


class OpenTelemetryBridge(TracingProcessor):
    """SDK traces and spans -> OpenTelemetry spans (module docstring)."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer
        self._spans: dict[str, Span] = {}
        """Open OpenTelemetry spans by SDK trace id (the workflow span) and SDK span id."""
        self._open: dict[str, list[str]] = {}
        """SDK trace id -> its SDK span ids still open (ended with the trace if the SDK did not)."""
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ traces

    def on_trace_start(self, trace_: SdkTrace) -> None:
        span = self._tracer.start_span(
            "agent workflow",
            kind=SpanKind.INTERNAL,
            attributes={"gen_ai.operation.name": "invoke_workflow", "agents.workflow.name": trace_.name},
        )
        with self._lock:
            self._spans[trace_.trace_id] = span
            self._open[trace_.trace_id] = []

    def on_trace_end(self, trace_: SdkTrace) -> None:
        with self._lock:
            span = self._spans.pop(trace_.trace_id, None)
            leftovers = [self._spans.pop(i, None) for i in self._open.pop(trace_.trace_id, [])]
        for child in leftovers:
            if child is not None:
                child.end()
        if span is not None:
            span.end()

    # ------------------------------------------------------------------ spans

    def on_span_start(self, span: SdkSpan[Any]) -> None:
        with self._lock:
            parent = self._spans.get(span.parent_id or "") or self._spans.get(span.trace_id)
        context = trace.set_span_in_context(parent) if parent is not None else None
        name, kind, attributes = describe(span.span_data)
        otel = self._tracer.start_span(name, context=context, kind=kind, attributes=attributes)
        with self._lock:
            self._spans[span.span_id] = otel
            self._open.setdefault(span.trace_id, []).append(span.span_id)

    def on_span_end(self, span: SdkSpan[Any]) -> None:
        with self._lock:
            otel = self._spans.pop(span.span_id, None)
            still_open = self._open.get(span.trace_id)
            if still_open is not None and span.span_id in still_open:
                still_open.remove(span.span_id)
        if otel is None:
            return
        if otel.is_recording():
            data = span.span_data
            otel.set_attributes(finished(data))
            if isinstance(data, HandoffSpanData) and data.to_agent:
                otel.update_name(f"handoff {data.from_agent} -> {data.to_agent}")
            error = span.error
            if error is not None:
                # The message only: the SDK's `data` may carry tool arguments or model output.
                otel.set_status(Status(StatusCode.ERROR, str(error.get("message", ""))[:200]))
        otel.end()

    def shutdown(self) -> None:
        """Nothing to do: the service flushes the OpenTelemetry provider when it stops."""

    def force_flush(self) -> None:
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


def describe(data: Any) -> tuple[str, SpanKind, Attributes]:
    """Span name, kind and the attributes known at the start, for an SDK span's data."""
    match data:
        case AgentSpanData():
            attributes: Attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": data.name}
            if data.tools:
                attributes["agents.agent.tools"] = list(data.tools)
            if data.handoffs:
                attributes["agents.agent.handoffs"] = list(data.handoffs)
            return f"invoke_agent {data.name}", SpanKind.INTERNAL, attributes
        case TaskSpanData():
            return "agent run", SpanKind.INTERNAL, {"gen_ai.operation.name": "run"}
        case TurnSpanData():
            attributes = {"agents.turn": data.turn, "gen_ai.agent.name": data.agent_name}
            return f"agent turn {data.turn}", SpanKind.INTERNAL, attributes
        case GenerationSpanData() | ResponseSpanData():
            model = getattr(data, "model", None)
            attributes = {"gen_ai.operation.name": "chat"}
            if model:
                attributes["gen_ai.request.model"] = str(model)
            return f"chat {model}" if model else "chat", SpanKind.CLIENT, attributes
        case FunctionSpanData():
            attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": data.name}
            return f"execute_tool {data.name}", SpanKind.INTERNAL, attributes
        case HandoffSpanData():
            attributes = {"gen_ai.operation.name": "handoff"}
            if data.from_agent:
                attributes["agents.handoff.from"] = data.from_agent
            return f"handoff {data.from_agent}", SpanKind.INTERNAL, attributes
        case GuardrailSpanData():
            return f"guardrail {data.name}", SpanKind.INTERNAL, {"agents.guardrail.name": data.name}
        case TranscriptionSpanData() | SpeechSpanData():
            attributes = {"gen_ai.operation.name": data.type}
            if data.model:
                attributes["gen_ai.request.model"] = str(data.model)
            return data.type, SpanKind.CLIENT, attributes
        case MCPListToolsSpanData():
            return f"mcp list_tools {data.server}", SpanKind.CLIENT, {}
        case CustomSpanData():
            return f"agents {data.name}", SpanKind.INTERNAL, {}  # its `data` is free-form: not recorded
        case _:
            return f"agents {getattr(data, 'type', 'span')}", SpanKind.INTERNAL, {}


def finished(data: Any) -> Attributes:
    """Attributes known when an SDK span ends (model, token usage, handoff target, tripwire)."""
    attributes: Attributes = {}
    match data:
        case GenerationSpanData():
            if data.model:
                attributes["gen_ai.request.model"] = str(data.model)
            attributes.update(_usage(data.usage))
        case ResponseSpanData():
            response = data.response
            if response is not None:
                attributes["gen_ai.response.id"] = response.id
                attributes["gen_ai.response.model"] = str(response.model)
            attributes.update(_usage(data.usage))
        case TaskSpanData() | TurnSpanData():
            attributes.update(_usage(data.usage))
        case HandoffSpanData():
            if data.to_agent:
                attributes["agents.handoff.to"] = data.to_agent
        case GuardrailSpanData():
            attributes["agents.guardrail.triggered"] = data.triggered
    return attributes


def _usage(usage: dict[str, Any] | None) -> Attributes:
    if not usage:
        return {}
    attributes: Attributes = {}
    for ours, theirs in (
        ("gen_ai.usage.input_tokens", ("input_tokens", "prompt_tokens")),
        ("gen_ai.usage.output_tokens", ("output_tokens", "completion_tokens")),
    ):
        value = next((usage[key] for key in theirs if isinstance(usage.get(key), int)), None)
        if value is not None:
            attributes[ours] = value
    return attributes
