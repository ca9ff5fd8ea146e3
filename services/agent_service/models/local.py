"""The offline demo model: a deterministic Agents SDK `Model` that needs no network and no key.

It is a DEMO, not a language model. It exists so that one command runs the whole stack on a laptop,
in CI and in tests, while still exercising the real agent machinery: the router's handoff, the ERP
tools, the streamed answer and cancellation all go through the Agents SDK exactly as with a real
provider. Its policy, per model call:

1. **Router** (handoffs offered, no tools): classify the newest user message by keywords
   (`billing`, `tech`, otherwise `general`; a request to open a ticket is `tech`) and call that
   specialist's handoff tool. It never speaks.
2. **Specialist** (tools offered):
   - if a ticket form (a structured input with a `priority` question) was answered or skipped
     after the newest user message, confirm the ticket: "Ticket opened with priority High.
     Details: …" (default priority when skipped);
   - if the browser's local time came back (the output of the `…local_time` client tool), tell it:
     "Your local time is 14:05 (Europe/Paris).";
   - if any other tool output is back, answer with that output (one tool round per user message);
   - if the newest user message clearly belongs to a *peer* specialist whose handoff is offered,
     hand off to it;
   - if it asks to open or file a ticket and a `…ticket…` tool is offered, call it (the run then
     stops at the form);
   - if it asks for the time or time zone ("what time is it", "my local time", "time zone") and a
     `…local_time` tool is offered, call it (the run then stops: the browser answers);
   - if it mentions an employee id (`E1001`) or an order id (`SO-1001`) and the matching lookup tool
     is offered, call it once;
3. **Otherwise** answer in text, streamed word by word with a cancellable delay between deltas:
   - "what is my name" after "my name is X" earlier in the history → "Your name is X.";
   - else a canned answer per specialist that quotes the question, names the tenant read from the
     system instructions (proof that the caller context reached them) and counts the earlier user
     messages it saw (proof that history reached it).

**Attachments.** Every text answer of a specialist to a user message with attachments opens with an
acknowledgement of what the model input carried, so the whole path (upload → store → reader →
converter → model) is visible offline:

    I received 2 attachments: notes.txt (text/plain, 1,234 bytes) — it starts with: "first
    words…"; photo.png (image/png, 5,678 bytes, an image).

It is read from the model input only: the `<attachment name=".." type=".." size="N bytes">`
envelopes that `SwitchboardConverter` writes after the typed text (see
`services.agent_service.agents.attachment_input`), the text inside them (first ~80 characters
quoted), the reason in parentheses for a file described only, and "an image" when an `input_image`
part with a `data:` URL follows the envelope. Routing and tools use the typed text alone, so a
question with attachments is routed as without them.

The specialist, tenant, user, role and locale are read from the system instructions written by
`services.agent_service.agents.team` (`You are the Billing specialist…`, `tenant=acme; …`). The
model degrades gracefully when they are missing.

`LocalTitleModel` answers the title agent: the first ~6 words of the first user message.

**Benchmark mode** (`LocalDemoModel(reply_tokens=N)`, switched on by `SWITCHBOARD_LOCAL_REPLY_TOKENS=N`):
every model call, whatever agent makes it and whatever tools or handoffs it offers, answers in text
with exactly N deltas, one short word each (`benchmark_deltas(N)`: "lorem", " ipsum", " dolor"…),
and no delay between them (each delta still yields to the event loop once, so a run stays
cancellable and concurrent streams interleave as they would with a network model). No tool call, no
handoff: the router answers directly. The numbers a load generator measures against a stack in this
mode are therefore the backend's own cost, not model latency. The responder also skips the title
agent in this mode (see `responder.py`).

Both models emit the full-fidelity Responses event stream (see `responses.py`).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

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
from openai.types.responses.response_prompt_param import ResponsePromptParam

from services.agent_service.models.responses import (
    ResponseStream,
    function_call,
    new_message_id,
    output_message,
)

EMPLOYEE_ID: Final = re.compile(r"\b(e\d{4})\b", re.IGNORECASE)
ORDER_ID: Final = re.compile(r"\b(so-\d{4})\b", re.IGNORECASE)

_KEYWORDS: Final[dict[str, frozenset[str]]] = {
    "billing": frozenset(
        (
            *("invoice", "invoices", "bill", "bills", "billing", "refund", "refunds", "payment"),
            *("payments", "pay", "paid", "charge", "charged", "charges", "price", "prices", "pricing"),
            *("order", "orders", "subscription", "receipt"),
        )
    ),
    "tech": frozenset(
        (
            *("error", "errors", "bug", "bugs", "crash", "crashes", "crashed", "crashing", "login"),
            *("logon", "password", "install", "installing", "api", "broken", "slow", "timeout"),
            *("outage", "reset", "ticket", "tickets"),
        )
    ),
}

# User-role messages that ChatKit's ThreadItemConverter writes for context (hidden context, widgets,
# workflows, quoted text, tags…). They are not what the user typed.
_CONTEXT_PREFIXES: Final = (
    "Hidden context for the agent",
    "A message was displayed to the user",
    "The following graphical UI widget",
    "The user is referring to this in particular",
    "# User-provided context",
    "The following image was generated",
    "A structured input request was displayed",
)

_STRUCTURED_INPUT_PREFIX: Final = "A structured input request was displayed"
_STRUCTURED_STATUS: Final = re.compile(r"with the following status: (\w+)")
_STRUCTURED_LINE: Final = re.compile(r"^- \[(?P<id>[^\]]+)\] .* — answer: (?P<answer>.*)$", re.MULTILINE)
"""One question of a structured input as `SwitchboardConverter` renders it."""
_TICKET_REQUEST: Final = re.compile(
    r"\b(?:open|file|create|raise|submit|log)\s+(?:a\s+|an\s+|the\s+|new\s+|one\s+)*(?:support\s+)?ticket\b",
    re.IGNORECASE,
)
_TIME_QUESTION: Final = re.compile(
    r"\b(?:what(?:'s| is)? the time|what time|(?:my |the )?(?:local|current) time|time ?zone)\b",
    re.IGNORECASE,
)
DEFAULT_TICKET_PRIORITY: Final = "Normal"
_NAME_STATEMENT: Final = re.compile(r"(?i:\bmy name is)\s+([A-Za-z][\w'-]*(?:\s+[A-Z][\w'-]*)?)")
_NAME_QUESTION: Final = re.compile(r"\b(what(?:'s| is) my name|who am i)\b", re.IGNORECASE)
_SPECIALIST: Final = re.compile(r"You are the (\w+) specialist")
_ENVELOPE: Final = re.compile(
    r'\A<attachment name="(?P<name>[^"]*)" type="(?P<type>[^"]*)"(?: size="(?P<size>\d+) bytes")?>'
    r"(?P<body>.*)</attachment>\Z",
    re.DOTALL,
)
"""One attachment as `SwitchboardConverter` renders it (`attachment_input.py`)."""
_TRUNCATED_LINE: Final = re.compile(r"\(truncated: [^\n]*\)\n\Z")
_IMAGE_SHOWN_NEXT: Final = "image, shown next"
"""The envelope note of an image whose `input_image` part follows."""
_EXCERPT_CHARS: Final = 80
_CALLER_FIELD: Final = re.compile(r"\b(tenant|user|role|locale)=([^;\s.]+)")


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


def classify(text: str) -> str | None:
    """The specialist a message clearly belongs to (`billing`, `tech`), or None.

    Asking to open a ticket is always `tech` (only the tech specialist has the ticket form).
    """
    if _TICKET_REQUEST.search(text):
        return "tech"
    words = re.findall(r"[a-z0-9']+", text.lower())
    scores = {domain: sum(word in keywords for word in words) for domain, keywords in _KEYWORDS.items()}
    if ORDER_ID.search(text):
        scores["billing"] += 1
    best = max(scores, key=lambda domain: scores[domain])  # ties keep dict order: billing first
    return best if scores[best] > 0 else None


def _as_mapping(item: object) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)
    return dump(exclude_unset=True) if callable(dump) else {}


def _content_text(content: object, *, first_part_only: bool = False) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    if isinstance(content, Sequence):
        for part in content:
            text = _as_mapping(part).get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts[0] if first_part_only and texts else " ".join(texts)


@dataclass(frozen=True, slots=True)
class _Received:
    """One attachment of the newest user message, as the model input presents it."""

    name: str
    mime_type: str
    size: int | None
    text: str | None = None
    """A text file's content (as included: possibly cut)."""
    truncated: bool = False
    note: str | None = None
    """The parenthesised description of a file whose content is not included."""
    image: bool = False
    """An `input_image` with a `data:` URL followed the envelope."""

    def describe(self) -> str:
        facts = [self.mime_type] + ([f"{self.size:,} bytes"] if self.size is not None else [])
        if self.image:
            facts.append("an image")
        elif self.note is not None:
            facts.append(self.note)
        head = f"{self.name} ({', '.join(facts)})"
        if self.text is None:
            return head
        excerpt = " ".join(self.text.split())
        if not excerpt:
            return f"{head} — it is empty"
        cut = len(excerpt) > _EXCERPT_CHARS or self.truncated
        return f'{head} — it starts with: "{excerpt[:_EXCERPT_CHARS].rstrip()}{"…" if cut else ""}"'


def _received(content: object) -> list[_Received]:
    """The attachments after the typed text of a user message (envelopes, each maybe + image)."""
    if isinstance(content, str) or not isinstance(content, Sequence):
        return []
    received: list[_Received] = []
    for part in list(content)[1:]:
        fields = _as_mapping(part)
        if fields.get("type") == "input_image":
            url = fields.get("image_url")
            if received and received[-1].note == _IMAGE_SHOWN_NEXT and str(url).startswith("data:"):
                received[-1] = _Received(
                    received[-1].name, received[-1].mime_type, received[-1].size, image=True
                )
            continue
        match = _ENVELOPE.match(str(fields.get("text", "")))
        if match is None:
            continue
        name, mime_type = html.unescape(match.group("name")), html.unescape(match.group("type"))
        size = int(match.group("size")) if match.group("size") else None
        body = match.group("body")
        if body.startswith("\n"):  # a text file: "\n<text>\n" and maybe a "(truncated: …)" line
            text = body[1:]
            cut = _TRUNCATED_LINE.search(text)
            if cut is not None:
                text = text[: cut.start()]
            received.append(
                _Received(name, mime_type, size, text=text.removesuffix("\n"), truncated=bool(cut))
            )
        else:
            received.append(
                _Received(name, mime_type, size, note=body.strip().removeprefix("(").removesuffix(")"))
            )
    return received


def _acknowledgement(received: list[_Received]) -> str:
    plural = "s" if len(received) != 1 else ""
    return f"I received {len(received)} attachment{plural}: {'; '.join(r.describe() for r in received)}."


@dataclass(frozen=True, slots=True)
class _Transcript:
    """What the demo policy needs from the model input."""

    user_texts: list[str]
    """What the user typed, oldest first (context messages left out)."""
    tool_outputs: dict[str, str]
    """Tool (or handoff) name → output, for calls made after the newest user message."""
    structured_inputs: list[str]
    """Structured input messages (as rendered by the converter) after the newest user message."""
    attachments: list[_Received] = field(default_factory=list)
    """The attachments of the newest user message."""

    @property
    def newest(self) -> str:
        return self.user_texts[-1] if self.user_texts else ""

    @classmethod
    def parse(cls, model_input: str | list[TResponseInputItem]) -> _Transcript:
        if isinstance(model_input, str):
            return cls(user_texts=[model_input], tool_outputs={}, structured_inputs=[])
        user_texts: list[str] = []
        call_names: dict[str, str] = {}
        outputs: dict[str, str] = {}
        forms: list[str] = []
        attachments: list[_Received] = []
        for raw in model_input:
            item = _as_mapping(raw)
            kind = item.get("type", "message")
            if kind == "message" and item.get("role") == "user":
                text = _content_text(item.get("content"), first_part_only=True)
                if text.startswith(_STRUCTURED_INPUT_PREFIX):
                    forms.append(text)
                elif not text.startswith(_CONTEXT_PREFIXES):
                    user_texts.append(text)
                    attachments = _received(item.get("content"))
                    call_names.clear()
                    outputs.clear()
                    forms.clear()
            elif kind == "function_call":
                call_names[str(item.get("call_id"))] = str(item.get("name"))
            elif kind == "function_call_output":
                name = call_names.get(str(item.get("call_id")))
                if name is not None:
                    output = item.get("output")
                    outputs[name] = output if isinstance(output, str) else _content_text(output)
        return cls(
            user_texts=user_texts, tool_outputs=outputs, structured_inputs=forms, attachments=attachments
        )


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Say:
    text: str
    deltas: tuple[str, ...] | None = None
    """How to stream `text` (they concatenate to it); None: word by word."""


_Reply = _Call | _Say


def _caller(instructions: str | None) -> dict[str, str]:
    return dict(_CALLER_FIELD.findall(instructions or ""))


def _find_handoff(handoffs: list[Handoff], specialist: str) -> Handoff | None:
    return next((h for h in handoffs if specialist in h.agent_name.lower()), None)


def _find_tool(tools: list[Tool], word: str) -> Tool | None:
    return next((t for t in tools if word in t.name), None)


def _arguments(tool: Tool, field: str, value: object) -> dict[str, Any]:
    """`{field: value}`, nested under the object parameter that declares `field` if there is one.

    Tools often take one pydantic model (`query: EmployeeQuery`); the demo model reads the tool's
    JSON schema (resolving local `$ref`s) to put the id where the tool expects it.
    """
    schema: dict[str, Any] = getattr(tool, "params_json_schema", None) or {}
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return resolve(definitions.get(ref.removeprefix("#/$defs/"), {}))
        return node

    properties: dict[str, Any] = schema.get("properties", {})
    if field not in properties:
        for name, node in properties.items():
            if field in resolve(node).get("properties", {}):
                return {name: {field: value}}
    return {field: value}


def _structured_answers(text: str) -> tuple[str, dict[str, list[str] | None]]:
    """(status, question id → answer values, None when skipped or unanswered) of a rendered form."""
    status = match.group(1) if (match := _STRUCTURED_STATUS.search(text)) else "pending"
    answers: dict[str, list[str] | None] = {}
    for line in _STRUCTURED_LINE.finditer(text):
        try:
            values = json.loads(line.group("answer"))
        except ValueError:
            values = None
        answers[line.group("id")] = (
            [str(value) for value in values] if isinstance(values, list) and values else None
        )
    return status, answers


def _ticket_confirmation(transcript: _Transcript) -> str | None:
    """The confirmation of a ticket form answered (or skipped) after the newest user message."""
    for text in reversed(transcript.structured_inputs):
        status, answers = _structured_answers(text)
        if status not in ("answered", "skipped") or "priority" not in answers:
            continue
        priority = answers["priority"]
        opened = (
            f"Ticket opened with priority {priority[0]}."
            if priority
            else f"Ticket opened with default priority ({DEFAULT_TICKET_PRIORITY})."
        )
        details = " ".join(" ".join(answers.get("details") or []).split())
        if not details:
            return opened
        return f"{opened} Details: {details}" + ("" if details.endswith((".", "!", "?", "…")) else ".")
    return None


def _local_time_answer(output: str) -> str:
    """What the browser reported (the client tool's JSON output) as one sentence."""
    try:
        reported: object = json.loads(output)
    except ValueError:
        reported = output
    if isinstance(reported, Mapping):
        clock = reported.get("time") or reported.get("local_time")
        zone = reported.get("timezone") or reported.get("time_zone")
        date = reported.get("date")
        when = f"{clock} on {date}" if clock and date else clock or date
        if when:
            return f"Your local time is {when}" + (f" ({zone})." if zone else ".")
        if zone:
            return f"Your time zone is {zone}."
    elif isinstance(reported, str) and reported.strip():
        return f"Your browser reports: {reported.strip()}"
    return "Your browser did not report its local time."


def _decide(
    instructions: str | None, transcript: _Transcript, tools: list[Tool], handoffs: list[Handoff]
) -> _Reply:
    """The demo policy, its text answers opened by the attachments' acknowledgement (docstring)."""
    reply = _policy(instructions, transcript, tools, handoffs)
    if isinstance(reply, _Say) and transcript.attachments:
        return _Say(f"{_acknowledgement(transcript.attachments)} {reply.text}")
    return reply


def _policy(
    instructions: str | None, transcript: _Transcript, tools: list[Tool], handoffs: list[Handoff]
) -> _Reply:
    """The demo policy (see the module docstring)."""
    newest = transcript.newest
    domain = classify(newest)
    if handoffs and not tools:
        target = _find_handoff(handoffs, domain or "general") or handoffs[0]
        return _Call(target.tool_name, {})
    if (confirmation := _ticket_confirmation(transcript)) is not None:
        return _Say(confirmation)
    local_time = next((out for name, out in transcript.tool_outputs.items() if "local_time" in name), None)
    if local_time is not None:
        return _Say(_local_time_answer(local_time))
    tool_names = {tool.name for tool in tools}
    outputs = [output for name, output in transcript.tool_outputs.items() if name in tool_names]
    if outputs:  # one tool round per user message: answer from what the tool returned
        return _Say(" ".join(outputs))
    if domain is not None and (peer := _find_handoff(handoffs, domain)) is not None:
        return _Call(peer.tool_name, {})
    if _TICKET_REQUEST.search(newest) and (tool := _find_tool(tools, "ticket")):
        return _Call(tool.name, _arguments(tool, "summary", " ".join(newest.split()[:12])))
    if _TIME_QUESTION.search(newest) and (tool := _find_tool(tools, "local_time")):
        return _Call(tool.name, _arguments(tool, "include_date", "date" in newest.lower()))
    if (match := EMPLOYEE_ID.search(newest)) and (tool := _find_tool(tools, "employee")):
        return _Call(tool.name, _arguments(tool, "employee_id", match.group(1).upper()))
    if (match := ORDER_ID.search(newest)) and (tool := _find_tool(tools, "order")):
        return _Call(tool.name, _arguments(tool, "order_id", match.group(1).upper()))
    return _Say(_answer(instructions, transcript))


def _answer(instructions: str | None, transcript: _Transcript) -> str:
    newest = transcript.newest
    if _NAME_QUESTION.search(newest):
        for text in reversed(transcript.user_texts[:-1]):
            if match := _NAME_STATEMENT.search(text):
                name = " ".join(word[:1].upper() + word[1:] for word in match.group(1).split())
                return f"Your name is {name}."
        return "You have not told me your name yet. Tell me and I will remember it for this conversation."
    caller = _caller(instructions)
    tenant = f" (tenant {caller['tenant']})" if "tenant" in caller else ""
    words = newest.split()
    question = " ".join(words[:12]) + ("…" if len(words) > 12 else "")
    asked = f' You asked: "{question}".' if question else ""
    earlier = len(transcript.user_texts) - 1
    seen = (
        "This is your first message here."
        if earlier == 0
        else f"I have seen {earlier} earlier message{'s' if earlier != 1 else ''} from you."
    )
    identity = _SPECIALIST.search(instructions or "")
    match identity.group(1).lower() if identity else "general":
        case "billing":
            body = "I can check orders such as SO-1001 and employees such as E1001: give me an id."
            return f"Billing here{tenant}.{asked} {body} {seen}"
        case "tech":
            body = "Please sign out and in again; if it persists, send me the exact error text."
            return f"Tech support here{tenant}.{asked} {body} {seen}"
        case _:
            body = "I can answer general questions and look up employees like E1001 or orders like SO-1001."
            return f"Happy to help{tenant}.{asked} {body} {seen}"


def _title_for(transcript: _Transcript, max_words: int = 6) -> str:
    """First `max_words` words of the first user message, capitalised, no trailing punctuation."""
    first = transcript.user_texts[0] if transcript.user_texts else ""
    title = " ".join(first.split()[:max_words]).rstrip(" .,;:!?…-")
    return title[:1].upper() + title[1:] if title else "New conversation"


class _ScriptedReplyModel(Model):
    """Turns a `_Reply` into a non-streamed `ModelResponse` or a streamed Responses event sequence."""

    def __init__(self, token_delay_s: float = 0.0) -> None:
        self.token_delay_s = token_delay_s
        self.deltas_emitted = 0
        """Text deltas produced so far, across calls (tests use it to prove a run was stopped)."""

    def _reply(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> _Reply:
        raise NotImplementedError

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
        match self._reply(system_instructions, input, tools, handoffs):
            case _Call(name=name, arguments=arguments):
                output = function_call(name, json.dumps(arguments))
            case _Say(text=text):
                output = output_message(text, new_message_id())
        return ModelResponse(
            output=[output], usage=Usage(requests=1), response_id=ResponseStream().response_id
        )

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
        stream = ResponseStream()
        for event in stream.opening():
            yield event
        match self._reply(system_instructions, input, tools, handoffs):
            case _Call(name=name, arguments=arguments):
                for event in stream.function_call_events(function_call(name, json.dumps(arguments))):
                    yield event
            case _Say(text=text, deltas=deltas):
                message = output_message(text, new_message_id())
                for event in stream.message_start(message.id):
                    yield event
                if deltas is None:
                    deltas = tuple(
                        word if index == 0 else f" {word}" for index, word in enumerate(text.split(" "))
                    )
                for delta in deltas:
                    await asyncio.sleep(self.token_delay_s)  # yields to the loop even at 0: cancellable
                    self.deltas_emitted += 1
                    yield stream.text_delta(message.id, delta)
                for event in stream.message_end(message, text):
                    yield event


class LocalDemoModel(_ScriptedReplyModel):
    """The deterministic demo model for the router and the specialists (module docstring).

    With `reply_tokens=N` it is in benchmark mode: every call answers with exactly N short text
    deltas, no tool call, no handoff and no delay (`token_delay_s` is ignored).
    """

    def __init__(self, token_delay_s: float = 0.0, *, reply_tokens: int | None = None) -> None:
        if reply_tokens is not None and reply_tokens < 1:
            raise ValueError("reply_tokens must be at least 1")
        super().__init__(0.0 if reply_tokens is not None else token_delay_s)
        self.reply_tokens = reply_tokens
        self._benchmark_reply = (
            _Say(benchmark_text(reply_tokens), benchmark_deltas(reply_tokens))
            if reply_tokens is not None
            else None
        )

    @property
    def benchmark_mode(self) -> bool:
        return self._benchmark_reply is not None

    def _reply(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> _Reply:
        if self._benchmark_reply is not None:
            return self._benchmark_reply
        return _decide(system_instructions, _Transcript.parse(input), tools, handoffs)


class LocalTitleModel(_ScriptedReplyModel):
    """Answers the title agent with the first ~6 words of the first user message."""

    def _reply(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> _Reply:
        return _Say(_title_for(_Transcript.parse(input)))
