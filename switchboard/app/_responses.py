"""Builders for Responses-API stream events, used by the offline models (`switchboard.app.offline`).

The Agents SDK consumes every model's stream as Responses events and needs exactly one terminal
`response.completed` whose `output` drives the next step (final answer, tool call or handoff). We
emit the full-fidelity sequence a real Responses stream has (the same one the SDK's own
`agents.testing.ScriptedModel` emits), so anything downstream that reads the raw events behaves
as it would against the OpenAI API:

    text:  created, in_progress, output_item.added, content_part.added, output_text.delta…,
           output_text.done, content_part.done, output_item.done, completed
    call:  created, in_progress, output_item.added, function_call_arguments.delta,
           function_call_arguments.done, output_item.done, completed

Every response gets fresh ids (`resp_…`, `msg_…`, `fc_…`, `call_…`) so ids are unique within a run.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.items import TResponseOutputItem, TResponseStreamEvent
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponseOutputTextAnnotationAddedEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseUsage,
)
from openai.types.responses.response_output_text import AnnotationURLCitation
from openai.types.responses.response_usage import InputTokensDetails, OutputTokensDetails

MODEL_NAME = "switchboard-offline"


def _hex() -> str:
    return secrets.token_hex(12)


def output_message(
    text: str, item_id: str, annotations: Sequence[AnnotationURLCitation] = ()
) -> ResponseOutputMessage:
    return ResponseOutputMessage(
        id=item_id,
        type="message",
        role="assistant",
        status="completed",
        content=[ResponseOutputText(type="output_text", text=text, annotations=list(annotations))],
    )


def function_call(name: str, arguments: str) -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(
        type="function_call",
        id=f"fc_{_hex()}",
        call_id=f"call_{_hex()}",
        name=name,
        arguments=arguments,
        status="completed",
    )


@dataclass
class ResponseStream:
    """Builds the events of one streamed response, numbering them in order."""

    response_id: str = field(default_factory=lambda: f"resp_{_hex()}")
    tokens: tuple[int, int] | None = None
    """(input, output) tokens the completed response reports as its usage; None: no usage."""
    _sequence: int = 0

    def _next(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    def response(self, output: list[TResponseOutputItem], *, done: bool) -> Response:
        return Response(
            id=self.response_id,
            created_at=time.time(),
            model=MODEL_NAME,
            object="response",
            output=output,
            tool_choice="auto",
            tools=[],
            parallel_tool_calls=False,
            status="completed" if done else "in_progress",
            usage=response_usage(*self.tokens) if done and self.tokens is not None else None,
        )

    def opening(self) -> list[TResponseStreamEvent]:
        return [
            ResponseCreatedEvent(
                type="response.created", response=self.response([], done=False), sequence_number=self._next()
            ),
            ResponseInProgressEvent(
                type="response.in_progress",
                response=self.response([], done=False),
                sequence_number=self._next(),
            ),
        ]

    def message_start(self, item_id: str) -> list[TResponseStreamEvent]:
        in_progress = ResponseOutputMessage(
            id=item_id, type="message", role="assistant", status="in_progress", content=[]
        )
        return [
            ResponseOutputItemAddedEvent(
                type="response.output_item.added",
                item=in_progress,
                output_index=0,
                sequence_number=self._next(),
            ),
            ResponseContentPartAddedEvent(
                type="response.content_part.added",
                item_id=item_id,
                output_index=0,
                content_index=0,
                part=ResponseOutputText(type="output_text", text="", annotations=[]),
                sequence_number=self._next(),
            ),
        ]

    def text_delta(self, item_id: str, delta: str) -> ResponseTextDeltaEvent:
        return ResponseTextDeltaEvent(
            type="response.output_text.delta",
            item_id=item_id,
            output_index=0,
            content_index=0,
            delta=delta,
            logprobs=[],
            sequence_number=self._next(),
        )

    def annotation_added(
        self, item_id: str, index: int, citation: AnnotationURLCitation
    ) -> ResponseOutputTextAnnotationAddedEvent:
        return ResponseOutputTextAnnotationAddedEvent(
            type="response.output_text.annotation.added",
            item_id=item_id,
            output_index=0,
            content_index=0,
            annotation_index=index,
            annotation=citation.model_dump(),
            sequence_number=self._next(),
        )

    def message_end(self, message: ResponseOutputMessage, text: str) -> list[TResponseStreamEvent]:
        annotations = (
            message.content[0].annotations if isinstance(message.content[0], ResponseOutputText) else []
        )
        part = ResponseOutputText(type="output_text", text=text, annotations=annotations)
        return [
            ResponseTextDoneEvent(
                type="response.output_text.done",
                item_id=message.id,
                output_index=0,
                content_index=0,
                text=text,
                logprobs=[],
                sequence_number=self._next(),
            ),
            ResponseContentPartDoneEvent(
                type="response.content_part.done",
                item_id=message.id,
                output_index=0,
                content_index=0,
                part=part,
                sequence_number=self._next(),
            ),
            ResponseOutputItemDoneEvent(
                type="response.output_item.done", item=message, output_index=0, sequence_number=self._next()
            ),
            self.completed([message]),
        ]

    def function_call_events(self, call: ResponseFunctionToolCall) -> list[TResponseStreamEvent]:
        item_id = call.id or call.call_id
        return [
            ResponseOutputItemAddedEvent(
                type="response.output_item.added",
                item=call.model_copy(update={"arguments": "", "status": "in_progress"}),
                output_index=0,
                sequence_number=self._next(),
            ),
            ResponseFunctionCallArgumentsDeltaEvent(
                type="response.function_call_arguments.delta",
                item_id=item_id,
                output_index=0,
                delta=call.arguments,
                sequence_number=self._next(),
            ),
            ResponseFunctionCallArgumentsDoneEvent.model_validate(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "arguments": call.arguments,
                    "name": call.name,
                    "sequence_number": self._next(),
                }
            ),
            ResponseOutputItemDoneEvent(
                type="response.output_item.done", item=call, output_index=0, sequence_number=self._next()
            ),
            self.completed([call]),
        ]

    def completed(self, output: list[TResponseOutputItem]) -> ResponseCompletedEvent:
        return ResponseCompletedEvent(
            type="response.completed", response=self.response(output, done=True), sequence_number=self._next()
        )


def response_usage(input_tokens: int, output_tokens: int) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=0, cache_write_tokens=0),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
        total_tokens=input_tokens + output_tokens,
    )


def new_message_id() -> str:
    return f"msg_{_hex()}"
