"""`AgentResponder`: the `Responder` (services/agent_service/turn.py) backed by the agent team.

One turn:
1. pick the starting agent: the specialist named by `thread.metadata[ACTIVE_AGENT_KEY]`, else the
   router;
2. convert the thread history to model input with a converter built for this turn
   (`SwitchboardConverter(turn.attachments)`): it reads the attachments' content with the caller's
   reader, so it is never shared between turns or concurrent requests. The content is read once
   per turn and goes to every model call of the run (router included);
3. `Runner.run_streamed(...)` with an `AgentContext` (tenant, user, role, locale, thread, ERP);
4. merge two live sources into one ordered stream: the SDK's events (moved by a small pump task)
   and the ChatKit events tools emit while they run. Both land on one unbounded queue, so a
   progress update reaches the client while its tool runs. The queue never applies backpressure
   to the model, like the SDK's own queue;
5. translate to ChatKit events (`StreamTranslator`), minting our own item ids. Each time the
   consumer comes back for more, it takes everything already queued, and text deltas that queued
   up back to back are one text run by then (`_Outbox`): one `text_delta` event (coalescing). A
   stream that fell behind catches up in one event instead of one per token and holds a few bytes
   per pending token; nothing ever waits for tokens that are not there;
6. when a tool asked the user's browser to run a client tool (`AgentContext.client_tool_call`,
   the run stopped there, see `interactive.py`), end with the pending `client_tool_call` item
   (`thread.item.done`), carrying the SDK call id; the conversation stores it and the client
   answers with `threads.add_client_tool_output`;
7. after the answer, name an untitled thread with the title agent (never failing the turn;
   skipped in the local model's benchmark mode, so a benchmark turn is one model call).

A turn after a client tool output or a structured input has no user message: its history ends
with the completed call or the answered form, which the converter turns into model input, and the
specialist in `ACTIVE_AGENT_KEY` continues.

Cancellation: closing or cancelling the iterator runs `finally: pump.cancel(); result.cancel()`,
which cancels the run loop task and with it the model's HTTP stream (or the demo model's sleep).
Breaking out of `stream_events()` alone would let the run finish in the background and keep
spending tokens for a client that left (reference §1.3). The finally block never awaits, so it
also works when the generator is closed from a garbage collector.

Errors propagate (the conversation turns them into a ChatKit `error` event), except
`MaxTurnsExceeded`, which becomes a retryable `CustomStreamError` with a readable message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Final

from agents import (
    AgentUpdatedStreamEvent,
    MaxTurnsExceeded,
    RawResponsesStreamEvent,
    RunConfig,
    RunItemStreamEvent,
    Runner,
    StreamEvent,
)
from agents.result import RunResultStreaming
from chatkit.errors import CustomStreamError
from chatkit.types import (
    ProgressUpdateEvent,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
)
from openai.types.responses import ResponseRefusalDeltaEvent, ResponseTextDeltaEvent

from services.agent_service.agents.attachment_input import AttachmentLimits
from services.agent_service.agents.context import AgentContext
from services.agent_service.agents.converter import SwitchboardConverter
from services.agent_service.agents.erp import ErpDirectory
from services.agent_service.agents.interactive import client_tool_call_item
from services.agent_service.agents.stream import StreamTranslator, assistant_message_events
from services.agent_service.agents.team import build_team, build_title_agent
from services.agent_service.agents.tools import EmployeeQuery
from services.agent_service.agents.widgets import SHOW_OPEN_ORDERS
from services.agent_service.models.factory import ModelChoice, build_model
from services.agent_service.models.local import LocalDemoModel
from services.agent_service.turn import ACTIVE_AGENT_KEY, ActionRequest, Turn
from services.common.config import Settings

logger = logging.getLogger(__name__)

TITLE_TIMEOUT_S: Final = 15.0
TITLE_MAX_CHARS: Final = 60
_RUN_CONFIG: Final = RunConfig(tracing_disabled=True)


@dataclass(frozen=True, slots=True)
class _RunEnded:
    """Last envelope of a run: `error` is what `stream_events()` raised, if anything."""

    error: Exception | None = None


@dataclass(slots=True)
class _Text:
    """Consecutive text deltas of the model that no one has taken yet, as plain strings."""

    parts: list[str]


_Envelope = StreamEvent | ThreadStreamEvent | _RunEnded | _Text


class _Outbox:
    """The turn's one queue: SDK events and tool events in arrival order, unbounded.

    Text deltas are not queued as SDK events: a delta that arrives while the previous entry is
    untaken text is appended to it as a plain string. So whatever piled up while the consumer was
    busy (writing to the network) comes out as ONE text run, which becomes one `text_delta`
    event downstream (coalescing), and a stream that is behind holds a few bytes per token
    instead of two pydantic objects. Nothing waits for tokens: `take` returns what is there.
    """

    def __init__(self) -> None:
        self._items: deque[_Envelope] = deque()
        self._ready = asyncio.Event()

    def put(self, envelope: _Envelope) -> None:
        if isinstance(envelope, RawResponsesStreamEvent) and isinstance(
            envelope.data, ResponseTextDeltaEvent | ResponseRefusalDeltaEvent
        ):
            if not envelope.data.delta:
                return
            tail = self._items[-1] if self._items else None
            if isinstance(tail, _Text):
                tail.parts.append(envelope.data.delta)
            else:
                self._items.append(_Text([envelope.data.delta]))
        else:
            self._items.append(envelope)
        self._ready.set()

    def emit(self, event: ThreadStreamEvent) -> None:
        """The sink tools emit into (`AgentContext.sink`)."""
        self.put(event)

    async def take(self) -> list[_Envelope]:
        """Everything queued so far (waits only when nothing is)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        items = list(self._items)
        self._items.clear()
        return items


async def _pump(result: RunResultStreaming, outbox: _Outbox) -> None:
    """Move the SDK's events onto the shared queue, then mark the end of the run."""
    try:
        async for event in result.stream_events():
            outbox.put(event)
    except Exception as error:
        outbox.put(_RunEnded(error))
    except BaseException:
        # Cancelled from outside the responder: unblock the consumer, then finish cancelling.
        outbox.put(_RunEnded(RuntimeError("the agent run stopped unexpectedly")))
        raise
    else:
        outbox.put(_RunEnded())


def _user_text(item: UserMessageItem) -> str:
    parts: list[str] = []
    for part in item.content:
        match part:
            case UserMessageTextContent(text=text):
                parts.append(text)
            case UserMessageTagContent(text=text):
                parts.append(f"@{text}")
    return "".join(parts).strip()


def _stream_error(error: Exception | None) -> Exception:
    """What the client sees when a run fails: `MaxTurnsExceeded` becomes a retryable message."""
    if isinstance(error, MaxTurnsExceeded):
        mapped = CustomStreamError(
            "The assistant needed too many steps to answer. Please try again or rephrase.", allow_retry=True
        )
        mapped.__cause__ = error
        return mapped
    return error or RuntimeError("the agent run failed")


def _employee_id(request: ActionRequest) -> str:
    """The validated `employee_id` of an `erp.show_open_orders` payload (ValueError if invalid)."""
    return EmployeeQuery.model_validate(request.action.payload).employee_id


def clean_title(raw: str) -> str:
    """One line, no wrapping quotes or trailing punctuation, at most `TITLE_MAX_CHARS` (word cut)."""
    title = " ".join(raw.split()).strip("\"'“”‘’`* ").rstrip(" .,;:!?…-")
    if len(title) > TITLE_MAX_CHARS:
        title = title[:TITLE_MAX_CHARS].rsplit(" ", 1)[0].rstrip(" .,;:!?…-")
    return title


class AgentResponder:
    """Runs the agent team for a turn and streams ChatKit events (see the module docstring)."""

    def __init__(self, settings: Settings, model: ModelChoice, erp: ErpDirectory) -> None:
        self._settings = settings
        self._model = model
        self._erp = erp
        self.team = build_team(model.model)
        self._title_agent = build_title_agent(model.title_model)
        self._titles = not (isinstance(model.model, LocalDemoModel) and model.model.benchmark_mode)
        """False in the local model's benchmark mode: no title agent run (nor `thread.updated`)."""
        self.attachment_limits = AttachmentLimits()
        """What one turn may put into the model input from attachments (`attachment_input.py`)."""

    async def aclose(self) -> None:
        """Close the ERP database and the model's HTTP client."""
        await self._erp.aclose()
        await self._model.aclose()

    # ------------------------------------------------------------------------------------ respond

    async def respond(self, turn: Turn) -> AsyncIterator[ThreadStreamEvent]:
        outbox = _Outbox()
        context = AgentContext(
            principal=turn.principal,
            locale=turn.locale,
            thread_id=turn.thread.id,
            erp=self._erp,
            sink=outbox.emit,
        )
        agent = self.team.starting_agent(turn.thread.metadata.get(ACTIVE_AGENT_KEY))
        converter = SwitchboardConverter(turn.attachments, limits=self.attachment_limits)
        model_input = await converter.to_agent_input(turn.history)
        result = Runner.run_streamed(
            agent, model_input, context=context, max_turns=self._settings.max_turns, run_config=_RUN_CONFIG
        )
        pump = asyncio.create_task(_pump(result, outbox), name=f"agent-run-{turn.thread.id}")
        translator = StreamTranslator(turn.thread, self.team)
        try:
            ended: _RunEnded | None = None
            while ended is None:
                events: list[ThreadStreamEvent] = []
                for envelope in await outbox.take():
                    match envelope:
                        case _RunEnded():
                            ended = envelope
                            break
                        case _Text(parts=parts):
                            events += translator.on_text("".join(parts))
                        case RawResponsesStreamEvent() | RunItemStreamEvent() | AgentUpdatedStreamEvent():
                            events += translator.on_sdk_event(envelope)
                        case _:
                            events += translator.on_tool_event(envelope)
                for event in events:
                    yield event
            if ended.error is not None:
                raise _stream_error(ended.error)
            for event in translator.finish():
                yield event
            if context.client_tool_call is not None:
                yield ThreadItemDoneEvent(
                    item=client_tool_call_item(turn.thread.id, context.client_tool_call)
                )
        finally:
            pump.cancel()
            result.cancel()
        if self._titles and turn.thread.title is None and turn.input_user_message is not None:
            await self._set_title(turn)

    async def _set_title(self, turn: Turn) -> None:
        """Name the thread after its first user message. Failures are logged, never raised."""
        first = next((item for item in turn.history if isinstance(item, UserMessageItem)), None)
        source = first or turn.input_user_message
        text = _user_text(source) if source is not None else ""
        if not text:
            return
        try:
            async with asyncio.timeout(TITLE_TIMEOUT_S):
                result = await Runner.run(self._title_agent, text, max_turns=1, run_config=_RUN_CONFIG)
        except Exception:
            logger.warning("Could not generate a title for thread %s", turn.thread.id, exc_info=True)
            return
        title = clean_title(str(result.final_output or ""))
        if title:
            turn.thread.title = title

    # ------------------------------------------------------------------------------------ actions

    async def action(self, request: ActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        if request.action.type != SHOW_OPEN_ORDERS:
            raise CustomStreamError(f"Unknown action {request.action.type!r}.", allow_retry=False)
        try:
            employee_id = _employee_id(request)
        except ValueError as error:
            raise CustomStreamError(
                f'Invalid payload for {SHOW_OPEN_ORDERS}: expected {{"employee_id": "E1001"}}.',
                allow_retry=False,
            ) from error
        yield ProgressUpdateEvent(icon="search", text=f"Looking up open orders for {employee_id}…")
        for event in assistant_message_events(
            request.thread.id, await self._open_orders_lines(request.principal.tenant, employee_id)
        ):
            yield event

    async def sync_action(self, request: ActionRequest) -> ThreadItem | None:
        """`erp.show_open_orders` only streams; its synchronous form validates and changes nothing.

        Raises `ValueError` (a pydantic `ValidationError` for a bad payload) for bad requests.
        """
        if request.action.type != SHOW_OPEN_ORDERS:
            raise ValueError(f"Unknown action {request.action.type!r}")
        _employee_id(request)
        return None

    async def _open_orders_lines(self, tenant: str, employee_id: str) -> list[str]:
        """The answer as markdown lines (streamed one line per delta)."""
        employee = await self._erp.get_employee(tenant, employee_id)
        if employee is None:
            return [f"No employee {employee_id} in your organisation."]
        orders = await self._erp.open_orders_for(tenant, employee_id)
        who = f"{employee.name} ({employee.id})"
        if not orders:
            return [f"{who} has no open orders."]
        plural = "s" if len(orders) != 1 else ""
        return [f"{who} has {len(orders)} open order{plural}:"] + [
            f"\n- {order.id} · {order.customer} · {order.amount_text} · created {order.created}"
            for order in orders
        ]


def benchmark_choice(model: ModelChoice, reply_tokens: int | None) -> ModelChoice:
    """The local model in benchmark mode when `SWITCHBOARD_LOCAL_REPLY_TOKENS` is set.

    Remote providers are left alone: the setting only changes the offline demo model.
    """
    if reply_tokens is None or not model.is_local:
        return model
    logger.warning(
        "Benchmark mode: the local model answers every message with %d text deltas (no tools, "
        "no handoff, no title)",
        reply_tokens,
    )
    return replace(model, model=LocalDemoModel(reply_tokens=reply_tokens))


async def create_responder(settings: Settings) -> AgentResponder:
    """Open (and seed) the ERP directory at `settings.erp_path` and build the configured model."""
    model = benchmark_choice(build_model(settings), settings.local_reply_tokens)
    try:
        erp = await ErpDirectory.open(settings.erp_path)
    except BaseException:
        await model.aclose()
        raise
    return AgentResponder(settings, model, erp)
