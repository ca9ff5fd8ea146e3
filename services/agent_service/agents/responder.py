"""`AppResponder`: the `Responder` (services/agent_service/turn.py) that runs the loaded app.

One turn:
1. pick the starting agent: the agent the last handoff went to (its name is kept in
   `thread.metadata[ACTIVE_AGENT_KEY]`, looked up in the app's handoff graph), else the app's
   starting agent for the verified caller (`App.starting_agent`);
2. convert the thread history to model input with a converter built for this turn
   (`SwitchboardConverter(turn.attachments)`): it reads the attachments' content with the caller's
   reader, so it is never shared between turns or concurrent requests. The content is read once
   per turn and goes to every model call of the run;
3. `Runner.run_streamed(...)` with a `ChatContext` (the verified caller, the thread, the app's
   state) and the configured provider as the run's `ModelProvider`;
4. merge two live sources into one ordered stream: the SDK's events (moved by a small pump task)
   and the ChatKit events tools emit through their context while they run. Both land on one
   unbounded queue, so a progress update reaches the client while its tool runs. The queue never
   applies backpressure to the model, like the SDK's own queue;
5. translate to ChatKit events (`StreamTranslator`), minting our own item ids. Each time the
   consumer comes back for more, it takes everything already queued, and text deltas that queued
   up back to back are one text run by then (`_Outbox`): one `text_delta` event (coalescing). A
   stream that fell behind catches up in one event instead of one per token and holds a few bytes
   per pending token; nothing ever waits for tokens that are not there;
6. when a tool asked the user's browser to run a client tool (`ChatContext.request_client_tool`;
   the run stopped there), end with the pending `client_tool_call` item (`thread.item.done`),
   carrying the SDK call id; the conversation stores it and the client answers with
   `threads.add_client_tool_output`;
7. after the answer, name an untitled thread with the app's title agent (never failing the turn;
   an app without one names no threads).

Widget actions go to the handlers the app registered for their type (`App.action`,
`App.sync_action`); `check_action` refuses an unknown type or an invalid payload before anything
runs, so the caller gets InvalidRequest (HTTP 400) instead of a stream.

Cancellation: closing or cancelling the iterator runs `finally: pump.cancel(); result.cancel()`,
which cancels the run loop task and with it the model's HTTP stream (or an offline model's sleep).
Breaking out of `stream_events()` alone would let the run finish in the background and keep
spending tokens for a client that left. The finally block never awaits, so it also works when the
generator is closed from a garbage collector.

Errors propagate (the conversation turns them into a ChatKit `error` event): a `SwitchboardError`
a tool raised (see `switchboard.app.show_errors_to_user`) is unwrapped from the SDK's wrapping so
its message reaches the user, and `MaxTurnsExceeded` becomes a retryable message.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from agents import (
    Agent,
    AgentUpdatedStreamEvent,
    MaxTurnsExceeded,
    ModelSettings,
    RawResponsesStreamEvent,
    RunConfig,
    RunItemStreamEvent,
    Runner,
    StreamEvent,
)
from agents.result import RunResultStreaming
from chatkit.actions import Action
from chatkit.errors import CustomStreamError
from chatkit.types import (
    ClientToolCallItem,
    ThreadItem,
    ThreadItemDoneEvent,
    ThreadStreamEvent,
    UserMessageItem,
    UserMessageTagContent,
    UserMessageTextContent,
)
from openai.types.responses import ResponseRefusalDeltaEvent, ResponseTextDeltaEvent
from pydantic import BaseModel, ValidationError

from services.agent_service.agents import sdk_fastpaths
from services.agent_service.agents.attachment_input import AttachmentLimits
from services.agent_service.agents.converter import SwitchboardConverter
from services.agent_service.agents.loader import AppLoadError, load_app
from services.agent_service.agents.stream import StreamTranslator, find_agent
from services.agent_service.metrics import ModelUsage, model_call_of, observe_sdk_event
from services.agent_service.models.factory import ConfiguredModels, build_models, title_models
from services.agent_service.transcription import Transcriber
from services.agent_service.turn import ACTIVE_AGENT_KEY, ActionRequest, Turn
from services.common import metrics, tracing
from services.common.config import Settings
from services.common.ids import new_id
from services.limits import UsageMeter
from switchboard.app import (
    ActionContext,
    App,
    AppEnvironment,
    Caller,
    ChatContext,
    ClientToolRequest,
    InvalidRequest,
    StreamingActionContext,
    SwitchboardError,
)
from switchboard.app._responses import MODEL_NAME as OFFLINE_MODEL_NAME

logger = logging.getLogger(__name__)

TITLE_TIMEOUT_S: Final = 15.0
TITLE_MAX_CHARS: Final = 60
MAX_PAYLOAD_ERROR_CHARS: Final = 200


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
        """The sink tools and action handlers emit into (`ChatContext.sink`)."""
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
    """What the client sees when a run fails (module docstring)."""
    if isinstance(error, MaxTurnsExceeded):
        mapped = CustomStreamError(
            "The assistant needed too many steps to answer. Please try again or rephrase.", allow_retry=True
        )
        mapped.__cause__ = error
        return mapped
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, SwitchboardError):
            return cause
        cause = cause.__cause__  # explicit wrapping only: a handled error stays handled
    return error or RuntimeError("the agent run failed")


def _account(
    event: RawResponsesStreamEvent | RunItemStreamEvent | AgentUpdatedStreamEvent, meter: UsageMeter
) -> None:
    """Count a finished model call's reported usage and each tool call into the turn's usage."""
    call = model_call_of(event)
    if call is not None:
        meter.model_call(*call)
    elif isinstance(event, RunItemStreamEvent) and event.name == "tool_called":
        meter.tool_call()


def caller_of(turn: Turn | ActionRequest) -> Caller:
    principal = turn.principal
    return Caller(tenant=principal.tenant, user=principal.user, role=principal.role, locale=turn.locale)


def client_tool_call_item(thread_id: str, request: ClientToolRequest) -> ClientToolCallItem:
    """The pending item that ends a run which asked the browser for a client tool."""
    return ClientToolCallItem(
        id=new_id("tc"),
        thread_id=thread_id,
        created_at=datetime.now(UTC),
        status="pending",
        call_id=request.call_id,
        name=request.name,
        arguments=request.arguments,
    )


def clean_title(raw: str) -> str:
    """One line, no wrapping quotes or trailing punctuation, at most `TITLE_MAX_CHARS` (word cut)."""
    title = " ".join(raw.split()).strip("\"'“”‘’`* ").rstrip(" .,;:!?…-")
    if len(title) > TITLE_MAX_CHARS:
        title = title[:TITLE_MAX_CHARS].rsplit(" ", 1)[0].rstrip(" .,;:!?…-")
    return title


class AppResponder:
    """Runs the loaded app for a turn and streams ChatKit events (see the module docstring)."""

    def __init__(
        self,
        app: App[Any],
        state: Any,
        models: ConfiguredModels,
        *,
        max_turns: int = 8,
        transcriber: Transcriber | None = None,
    ) -> None:
        self.app = app
        self._state = state
        self._models = models
        self._max_turns = max_turns
        # include_usage: streamed Chat Completions report their token usage (the metrics count it);
        # the SDK asks OpenAI itself for it, other compatible servers only when told to.
        usage = ModelSettings(include_usage=True)
        # SDK tracing only into our OpenTelemetry traces, never with message content (factory.py).
        off = not tracing.enabled()
        self._run_config = RunConfig(
            model_provider=models,
            tracing_disabled=off,
            trace_include_sensitive_data=False,
            model_settings=usage,
        )
        self._title_config = RunConfig(
            model_provider=title_models(models),
            tracing_disabled=off,
            trace_include_sensitive_data=False,
            model_settings=usage,
        )
        self._usage = ModelUsage(models.provider)
        self._observe_events = metrics.enabled()
        """Whether the run's SDK events are looked at for the metrics (model calls and their usage,
        tool calls, handoffs): not with metrics off."""
        self.attachment_limits = AttachmentLimits()
        """What one turn may put into the model input from attachments (`attachment_input.py`)."""
        self.transcriber = transcriber or Transcriber(
            models.client, app_transcribe=app.transcribe, provider=models.provider
        )
        """Dictation: the app's own `transcribe`, else the provider's (same client), else offline."""

    async def aclose(self) -> None:
        """Shut the app down (its failure is logged), then close the provider's HTTP client."""
        try:
            if self.app.shutdown is not None:
                await self.app.shutdown(self._state)
        except Exception:
            logger.exception("The app %r failed to shut down cleanly", self.app.name)
        finally:
            await self._models.aclose()

    # ------------------------------------------------------------------------------------ respond

    async def respond(self, turn: Turn) -> AsyncIterator[ThreadStreamEvent]:
        outbox = _Outbox()
        context = ChatContext[Any](
            turn.thread.id,
            sink=outbox.emit,
            image_store=turn.images,
            caller=caller_of(turn),
            state=self._state,
        )
        root = self.app.starting_agent(context.caller)
        agent = find_agent(root, turn.thread.metadata.get(ACTIVE_AGENT_KEY)) or root
        converter = SwitchboardConverter(turn.attachments, limits=self.attachment_limits)
        model_input = await converter.to_agent_input(turn.history)
        result = Runner.run_streamed(
            agent, model_input, context=context, max_turns=self._max_turns, run_config=self._run_config
        )
        pump = asyncio.create_task(_pump(result, outbox), name=f"agent-run-{turn.thread.id}")
        translator = StreamTranslator(turn.thread)
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
                            if self._observe_events:
                                observe_sdk_event(envelope, self._usage)
                            if turn.usage is not None:
                                _account(envelope, turn.usage)
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
        if self.app.title_agent is not None and turn.thread.title is None and turn.input_user_message:
            await self._set_title(turn, self.app.title_agent)

    async def _set_title(self, turn: Turn, title_agent: Agent[Any]) -> None:
        """Name the thread after its first user message. Failures are logged, never raised."""
        first = next((item for item in turn.history if isinstance(item, UserMessageItem)), None)
        source = first or turn.input_user_message
        text = _user_text(source) if source is not None else ""
        if not text:
            return
        try:
            async with asyncio.timeout(TITLE_TIMEOUT_S):
                result = await Runner.run(title_agent, text, max_turns=1, run_config=self._title_config)
        except Exception:
            logger.warning("Could not generate a title for thread %s", turn.thread.id, exc_info=True)
            return
        used = result.context_wrapper.usage
        if turn.usage is not None:
            turn.usage.model_call(self._model_name(title_agent), used.input_tokens, used.output_tokens)
        self._usage.record(
            self._model_name(title_agent),
            requests=used.requests,
            input_tokens=used.input_tokens,
            output_tokens=used.output_tokens,
        )
        title = clean_title(str(result.final_output or ""))
        if title:
            turn.thread.title = title

    def _model_name(self, agent: Agent[Any]) -> str:
        """The model label of a non-streamed run (its responses do not name their model)."""
        if self._models.is_local:
            return OFFLINE_MODEL_NAME
        if isinstance(agent.model, str):
            return agent.model
        return str(getattr(agent.model, "model", None) or self._models.default_name or "unknown")

    # ------------------------------------------------------------------------------------ actions

    def check_action(self, action: Action[str, Any], *, streaming: bool = True) -> BaseModel:
        """The action's validated payload; InvalidRequest for an unknown type, a bad payload, or a
        streamed call of a type that only has a synchronous handler."""
        route = self.app.route(action.type)
        if route is None:
            raise InvalidRequest(f"unknown action type {action.type!r}")
        if streaming and route.streaming is None:
            raise InvalidRequest(f"action {action.type!r} is synchronous: use threads.sync_custom_action")
        try:
            return route.payload.model_validate(action.payload if action.payload is not None else {})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "payload"
            message = f"invalid payload for {action.type!r}: {where}: {first['msg']}"
            raise InvalidRequest(message[:MAX_PAYLOAD_ERROR_CHARS]) from None

    async def action(self, request: ActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        payload = self.check_action(request.action)
        route = self.app.route(request.action.type)
        if route is None or route.streaming is None:
            raise InvalidRequest(f"action {request.action.type!r} cannot be streamed")
        outbox = _Outbox()
        context = StreamingActionContext[Any](
            request.thread.id,
            sink=outbox.emit,
            image_store=request.images,
            caller=caller_of(request),
            sender=request.sender,
            state=self._state,
        )
        handler = route.streaming
        task = asyncio.create_task(
            _run_handler(handler(context, payload), outbox), name=f"action-{request.thread.id}"
        )
        try:
            while True:
                for envelope in await outbox.take():
                    if isinstance(envelope, _RunEnded):
                        if envelope.error is not None:
                            raise envelope.error
                        return
                    yield cast(ThreadStreamEvent, envelope)
        finally:
            task.cancel()

    async def sync_action(self, request: ActionRequest) -> ThreadItem | None:
        """The registered synchronous handler's updated sender item; a type registered only for
        streaming validates its payload and changes nothing."""
        payload = self.check_action(request.action, streaming=False)
        route = self.app.route(request.action.type)
        if route is None or route.sync is None:
            return None
        context = ActionContext[Any](
            caller=caller_of(request), thread_id=request.thread.id, sender=request.sender, state=self._state
        )
        return await route.sync(context, payload)


async def _run_handler(handler: Awaitable[None], outbox: _Outbox) -> None:
    """Run a streaming action handler, then mark the end of its events (with its error, if any)."""
    try:
        await handler
    except Exception as error:
        outbox.put(_RunEnded(error))
    else:
        outbox.put(_RunEnded())


async def create_responder(settings: Settings, app: App[Any] | None = None) -> AppResponder:
    """Load the app (`SWITCHBOARD_APP`), build the configured models and start the app.

    Raises `AppLoadError` (one line naming the variable) when the app cannot be loaded or its
    `startup` fails; nothing is left open then.
    """
    app = app or load_app(settings.app)
    sdk_fastpaths.install()
    models = build_models(settings)
    environment = AppEnvironment(
        data_dir=settings.data_dir,
        provider=models.provider,
        offline_token_delay_s=settings.local_token_delay_ms / 1000,
    )
    try:
        if app.offline_model is not None and models.is_local:
            models = models.with_offline(app.offline_model(environment))
        state = await app.startup(environment) if app.startup is not None else None
    except Exception as error:
        await models.aclose()
        raise AppLoadError(settings.app, f"the app {app.name!r} failed to start: {error!r}") from error
    logger.info("Serving the app %r (%s)", app.name, settings.app)
    transcriber = Transcriber(
        models.client,
        app_transcribe=app.transcribe,
        model=settings.transcribe_model,
        provider=models.provider,
        max_bytes=settings.transcribe_max_bytes,
        timeout_s=settings.transcribe_timeout_s,
    )
    return AppResponder(app, state, models, max_turns=settings.max_turns, transcriber=transcriber)
