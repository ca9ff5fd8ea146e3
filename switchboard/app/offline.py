"""Offline models: deterministic Agents SDK `Model`s that need no network and no key.

An app can run without any LLM provider (`LLM_PROVIDER=local`, or no key configured): its agents
then run on the app's offline model (`App(offline_model=...)`) or, without one, on Switchboard's
plain offline model, which only says that no provider is configured. An offline model is how an app
stays demonstrable and testable end to end on a laptop or in CI: the Agents SDK machinery (handoffs,
tools, streaming, cancellation) runs exactly as with a real provider.

Subclass `ScriptedModel` and implement `reply`: look at the instructions, the model input, the
offered tools and handoffs, and return `Say(text)` (streamed word by word, or in the `deltas` you
give) or `Call(tool_name, arguments)` (a tool or handoff call). The SDK receives the full-fidelity
Responses event stream a real model produces.

    class Parrot(ScriptedModel):
        def reply(self, instructions, input, tools, handoffs) -> Reply:
            return Say(f"You said: {last_user_text(input)}")
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents import (
    AgentOutputSchemaBase,
    Handoff,
    Model,
    ModelResponse,
    ModelSettings,
    ModelTracing,
    Tool,
    Usage,
)
from agents.items import TResponseInputItem, TResponseOutputItem, TResponseStreamEvent
from openai.types.responses.response_output_text import AnnotationURLCitation
from openai.types.responses.response_prompt_param import ResponsePromptParam

from switchboard.app._responses import ResponseStream, function_call, new_message_id, output_message


@dataclass(frozen=True, slots=True)
class Call:
    """Call the tool (or handoff) `name` with `arguments` (its JSON arguments as a dict)."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Citation:
    """A source the answer cites: the web page at `url`, for the characters [start, end) of the text."""

    url: str
    title: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Say:
    """Answer `text`, streamed as `deltas` (which must concatenate to it; None: word by word),
    citing `citations` (URL citations, as a model with web search reports them)."""

    text: str
    deltas: tuple[str, ...] | None = None
    citations: tuple[Citation, ...] = ()

    def annotations(self) -> list[AnnotationURLCitation]:
        return [
            AnnotationURLCitation(
                type="url_citation", url=c.url, title=c.title, start_index=c.start, end_index=c.end
            )
            for c in self.citations
        ]


Reply = Call | Say


class DeltaPacer(Protocol):
    """When the text deltas of one streamed answer go out: `await wait(index)` returns when delta
    `index` (0-based) may be emitted. A model makes a fresh pacer for every streamed call
    (`ScriptedModel.pacer`), so a pacer may keep per-call state (the time the call started)."""

    async def wait(self, index: int) -> None: ...


class FixedDelay:
    """A sleep of `delay_s` before every delta. At 0 it still yields to the event loop once per
    delta, so a run stays cancellable and concurrent streams interleave."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def wait(self, index: int) -> None:
        await asyncio.sleep(self.delay_s)


def as_mapping(item: object) -> Mapping[str, Any]:
    """A model input item as a mapping (input items are TypedDicts or pydantic models)."""
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)
    return dump(exclude_unset=True) if callable(dump) else {}


def content_text(content: object, *, first_part_only: bool = False) -> str:
    """The text of a message's content: a string, or the `text` of its parts joined by spaces."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    if isinstance(content, Sequence):
        for part in content:
            text = as_mapping(part).get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts[0] if first_part_only and texts else " ".join(texts)


def user_texts(model_input: str | list[TResponseInputItem]) -> list[str]:
    """The first text part of every user-role message of the input, oldest first."""
    if isinstance(model_input, str):
        return [model_input]
    texts = []
    for raw in model_input:
        item = as_mapping(raw)
        if item.get("type", "message") == "message" and item.get("role") == "user":
            texts.append(content_text(item.get("content"), first_part_only=True))
    return texts


class ScriptedModel(Model):
    """Turns `reply(...)` into a `ModelResponse` or a streamed Responses event sequence.

    `token_delay_s` paces streamed text (a sleep before each delta, which also yields to the event
    loop at 0, so a run stays cancellable and concurrent streams interleave); override `pacer` for
    another pace. Usage is reported as one request and no tokens; override `tokens` to report some
    (what a provider's usage would say, e.g. for a budget or a benchmark that counts them).
    """

    def __init__(self, token_delay_s: float = 0.0) -> None:
        self.token_delay_s = token_delay_s
        self.deltas_emitted = 0
        """Text deltas produced so far, across calls (tests use it to prove a run was stopped)."""

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        raise NotImplementedError

    def pacer(self) -> DeltaPacer:
        """The pace of one streamed call's text deltas, made when the call starts streaming: a
        sleep of `token_delay_s` before each (`FixedDelay`)."""
        return FixedDelay(self.token_delay_s)

    def tokens(
        self, instructions: str | None, input: str | list[TResponseInputItem], reply: Reply
    ) -> tuple[int, int] | None:
        """The (input, output) tokens a call with this input and reply reports as its usage; None
        (the default): it reports none."""
        return None

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        output: TResponseOutputItem
        reply = self.reply(system_instructions, input, tools, handoffs)
        match reply:
            case Call(name=name, arguments=arguments):
                output = function_call(name, json.dumps(arguments))
            case Say(text=text) as say:
                output = output_message(text, new_message_id(), say.annotations())
        tokens = self.tokens(system_instructions, input, reply)
        usage = Usage(requests=1)
        if tokens is not None:
            usage = Usage(
                requests=1, input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens)
            )
        return ModelResponse(output=[output], usage=usage, response_id=ResponseStream().response_id)

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        pacer = self.pacer()
        reply = self.reply(system_instructions, input, tools, handoffs)
        stream = ResponseStream(tokens=self.tokens(system_instructions, input, reply))
        for event in stream.opening():
            yield event
        match reply:
            case Call(name=name, arguments=arguments):
                for event in stream.function_call_events(function_call(name, json.dumps(arguments))):
                    yield event
            case Say(text=text, deltas=deltas) as say:
                message = output_message(text, new_message_id(), say.annotations())
                for event in stream.message_start(message.id):
                    yield event
                if deltas is None:
                    deltas = tuple(
                        word if index == 0 else f" {word}" for index, word in enumerate(text.split(" "))
                    )
                for index, delta in enumerate(deltas):
                    await pacer.wait(index)
                    self.deltas_emitted += 1
                    yield stream.text_delta(message.id, delta)
                for index, citation in enumerate(say.annotations()):
                    yield stream.annotation_added(message.id, index, citation)
                for event in stream.message_end(message, text):
                    yield event


__all__ = [
    "Call",
    "Citation",
    "DeltaPacer",
    "FixedDelay",
    "Reply",
    "Say",
    "ScriptedModel",
    "as_mapping",
    "content_text",
    "user_texts",
]
