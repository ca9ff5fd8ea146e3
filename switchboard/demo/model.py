"""The demo app's offline model: a deterministic Agents SDK `Model` that needs no network and no key.

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
envelopes that Switchboard writes after the typed text for every attachment, the text inside them
(first ~80 characters quoted), the reason in parentheses for a file described only, and "an image"
when an `input_image` part with a `data:` URL follows the envelope. Routing and tools use the typed
text alone, so a question with attachments is routed as without them.

The specialist, tenant, user, role and locale are read from the system instructions written by
`switchboard.demo.team` (`You are the Billing specialist…`, `tenant=acme; …`). The model degrades
gracefully when they are missing.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agents import Handoff, Tool
from agents.items import TResponseInputItem

from switchboard.app.offline import Call, Citation, Reply, Say, ScriptedModel, as_mapping, content_text

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
_CHART_REQUEST: Final = re.compile(r"\b(?:chart|graph|plot)\b", re.IGNORECASE)
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
        fields = as_mapping(part)
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
            item = as_mapping(raw)
            kind = item.get("type", "message")
            if kind == "message" and item.get("role") == "user":
                text = content_text(item.get("content"), first_part_only=True)
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
                    outputs[name] = output if isinstance(output, str) else content_text(output)
        return cls(
            user_texts=user_texts, tool_outputs=outputs, structured_inputs=forms, attachments=attachments
        )


def order_url(tenant: str, order_id: str) -> str:
    """Where the demo's ERP would show an order (cited by answers about it)."""
    return f"https://erp.{tenant}.example/orders/{order_id}"


def _order_citations(text: str, tenant: str | None) -> tuple[Citation, ...]:
    """A citation of the ERP record for every "Order SO-…" the answer reports."""
    if not tenant:
        return ()
    return tuple(
        Citation(
            url=order_url(tenant, match.group(1)),
            title=f"Order {match.group(1)}",
            start=match.start(1),
            end=match.end(1),
        )
        for match in re.finditer(r"\bOrder (SO-\d{4})\b", text)
    )


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
) -> Reply:
    """The demo policy, its text answers opened by the attachments' acknowledgement (docstring)."""
    reply = _policy(instructions, transcript, tools, handoffs)
    if isinstance(reply, Say) and transcript.attachments:
        return Say(f"{_acknowledgement(transcript.attachments)} {reply.text}")
    return reply


def _policy(
    instructions: str | None, transcript: _Transcript, tools: list[Tool], handoffs: list[Handoff]
) -> Reply:
    """The demo policy (see the module docstring)."""
    newest = transcript.newest
    domain = classify(newest)
    if handoffs and not tools:
        target = _find_handoff(handoffs, domain or "general") or handoffs[0]
        return Call(target.tool_name, {})
    if (confirmation := _ticket_confirmation(transcript)) is not None:
        return Say(confirmation)
    local_time = next((out for name, out in transcript.tool_outputs.items() if "local_time" in name), None)
    if local_time is not None:
        return Say(_local_time_answer(local_time))
    tool_names = {tool.name for tool in tools}
    outputs = [output for name, output in transcript.tool_outputs.items() if name in tool_names]
    if outputs:  # one tool round per user message: answer from what the tool returned
        text = " ".join(outputs)
        return Say(text, citations=_order_citations(text, _caller(instructions).get("tenant")))
    if domain is not None and (peer := _find_handoff(handoffs, domain)) is not None:
        return Call(peer.tool_name, {})
    if _TICKET_REQUEST.search(newest) and (tool := _find_tool(tools, "ticket")):
        return Call(tool.name, _arguments(tool, "summary", " ".join(newest.split()[:12])))
    if _TIME_QUESTION.search(newest) and (tool := _find_tool(tools, "local_time")):
        return Call(tool.name, _arguments(tool, "include_date", "date" in newest.lower()))
    if (match := EMPLOYEE_ID.search(newest)) and (tool := _find_tool(tools, "employee")):
        return Call(tool.name, _arguments(tool, "employee_id", match.group(1).upper()))
    if _CHART_REQUEST.search(newest) and (tool := _find_tool(tools, "chart")):
        return Call(tool.name, {})
    if (match := ORDER_ID.search(newest)) and (tool := _find_tool(tools, "order")):
        return Call(tool.name, _arguments(tool, "order_id", match.group(1).upper()))
    return Say(_answer(instructions, transcript))


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


class DemoModel(ScriptedModel):
    """The deterministic demo model for the router and the specialists (module docstring)."""

    def reply(
        self,
        instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        handoffs: list[Handoff],
    ) -> Reply:
        return _decide(instructions, _Transcript.parse(input), tools, handoffs)
