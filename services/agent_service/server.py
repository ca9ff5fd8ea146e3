"""The agent service's gRPC wiring: ChatService handlers, auth, health, reflection, shutdown. The
admin service (AdminService, `admin.py`) is served next to ChatService, on the same port.

Each handler turns its protobuf request into chatkit models, asks the Conversation for the result
and turns that back into protobuf. Streaming handlers use grpc.aio's writer API so that a failure
before the first event becomes a real status (the edge maps it to HTTP) and so that cancellation
(client gone, deadline passed, server shutting down) always closes the conversation, which stops the
agent run and saves the partial answer. `Stream` runs the same six streaming operations as the
per-event RPCs, through the same boundary (`ChatService._stream`), and writes the events that are
ready together in one message (ready.py); the per-event RPCs remain for compatibility.

Scale-out: the service keeps no thread state in memory, so several replicas can serve one address
(the edge balances calls over them with gRPC's `round_robin`). Servers recycle client connections
after `SWITCHBOARD_GRPC_MAX_CONNECTION_AGE_S` (gracefully: calls in flight get the age grace to
finish), so clients re-resolve and spread over replicas that were added later. On startup the store
checks its schema: on PostgreSQL an outdated schema stops the service with a message naming
`switchboard migrate` (see store/migrate.py).

Workers: with `SWITCHBOARD_AGENT_WORKERS` > 1 a supervisor (`workers.py`) runs `serve` in several
processes that listen on the same address with SO_REUSEPORT (`Worker`); 1 is this module alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from chatkit.actions import Action
from chatkit.types import (
    AssistantMessageContentPartTextDelta,
    StructuredInputSubmission,
    ThreadItemUpdatedEvent,
    ThreadStreamEvent,
    UserMessageInput,
)
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import DBAPIError

from services.agent_service import metrics as agent_metrics
from services.agent_service.admin import ADMIN_SERVICE_NAME, AdminService
from services.agent_service.attachments import AttachmentClient
from services.agent_service.conversation import Conversation
from services.agent_service.ready import NOT_READY, Ready
from services.agent_service.store import SchemaError, Store, create_store, database_url, drain_shielded
from services.agent_service.store.migrate import redacted
from services.agent_service.transcription import ProviderUsage, Transcriber
from services.agent_service.turn import Responder
from services.common import codec, grpc_metrics, metrics, tracing
from services.common.auth import Principal
from services.common.config import Settings
from services.common.grpc_auth import AuthInterceptor, current_locale, current_principal
from services.common.grpc_server import abort_internal, abort_with, enable_reflection, serve_until_signalled
from services.common.grpc_server import server_options as common_server_options
from services.common.grpc_tls import bind
from services.common.identity import build_verifier
from services.common.logs import current_operation
from services.limits import Limits, LimitsStore, UsageMeter
from switchboard.app import Caller, InvalidRequest, SwitchboardError
from switchboard.v1 import admin_pb2_grpc, chat_pb2, chat_pb2_grpc, events_pb2, thread_pb2

log = logging.getLogger(__name__)

SERVICE_NAME: Final = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
_MB: Final = 1024 * 1024
SHUTDOWN_DRAIN_S: Final = 5.0
"""After the grace, how long the saves of cancelled turns (and lease releases) may still take before
the store closes (each is one short transaction; the database's own timeouts bound them)."""
SHUTDOWN_NOTICE_S: Final = 0.5
"""After SIGTERM the server reports NOT_SERVING but still accepts calls this long, so that clients
with client-side health checking stop sending it new ones before it starts refusing them (a call
that reaches a server that is stopping fails with CANCELLED, which clients cannot retry safely)."""


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments of the agent server (see services.common.grpc_server)."""
    return common_server_options(settings, max_message_bytes=16 * _MB)


STREAMING_METHODS: Final = (
    "CreateThread",
    "AddUserMessage",
    "AddClientToolOutput",
    "AddStructuredInput",
    "RetryAfterItem",
    "CustomAction",
)

MAX_BATCH_EVENTS: Final = 64
"""Most events in one `Stream` message: a bound, never a target (nothing waits to fill a batch)."""
MAX_BATCH_BYTES: Final = 64 * 1024
"""Most bytes of events in one `Stream` message; an event that is larger by itself goes alone (the
per-event RPCs send it alone too)."""

_Model = TypeVar("_Model", bound=BaseModel)
_Reply = TypeVar("_Reply", bound=Message)
Context = aio.ServicerContext[Any, Any]


def _caller() -> tuple[Principal, str]:
    return current_principal.get(), current_locale.get()


def _parse(model: type[_Model], data: Any, what: str) -> _Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or what
        raise InvalidRequest(f"invalid {what}: {where}: {first['msg']}") from error


def _user_input(message: chat_pb2.UserMessageInput) -> UserMessageInput:
    data = codec.to_data(message)
    data.setdefault("inference_options", {})
    return _parse(UserMessageInput, data, "input")


MAX_FREE_FORM_BYTES: Final = 256 * 1024
"""Largest free-form value (client tool result, action payload) as protobuf bytes: a second check
behind the edge's (which bounds the JSON form and its depth), for callers that use gRPC directly."""


_Bounded = TypeVar("_Bounded", bound=Message)


def _bounded(message: _Bounded, what: str) -> _Bounded:
    if message.ByteSize() > MAX_FREE_FORM_BYTES:
        raise InvalidRequest(f"{what} exceeds {MAX_FREE_FORM_BYTES} bytes")
    return message


def _tool_result(request: chat_pb2.AddClientToolOutputRequest) -> Any:
    if not request.HasField("result"):
        return None
    return codec.json_value(_bounded(request.result, "result"))


def _action(message: chat_pb2.Action) -> Action[str, Any]:
    if not message.type:
        raise InvalidRequest("action.type is required")
    _bounded(message, "action")
    return _parse(Action[str, Any], codec.to_data(message), "action")


def _required(value: str, name: str) -> str:
    if not value:
        raise InvalidRequest(f"{name} is required")
    return value


def event_to_proto(event: ThreadStreamEvent) -> events_pb2.ThreadStreamEvent:
    """`codec.event_to_proto`, with a direct path for text deltas (most events of a stream).

    The generic codec dumps the model to a dict and walks the proto descriptors (~11 us per delta);
    a text delta has two scalar fields, set here directly (~1.2 us). Same message either way (tests
    compare both paths, tests/unit/benchmarks/test_hot_path.py).
    """
    if isinstance(event, ThreadItemUpdatedEvent) and isinstance(
        event.update, AssistantMessageContentPartTextDelta
    ):
        message = events_pb2.ThreadStreamEvent()
        updated = message.thread_item_updated
        updated.item_id = event.item_id
        delta = updated.update.assistant_message_content_part_text_delta
        delta.content_index = event.update.content_index
        delta.delta = event.update.delta
        return message
    return codec.event_to_proto(event)


async def _refuse(context: Context, error: SwitchboardError) -> None:
    """`abort_with`, counting a refusal for a limit by the limit's name."""
    agent_metrics.count_refusal(error)
    await abort_with(context, error)


class ChatService(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, conversation: Conversation, transcriber: Transcriber | None = None) -> None:
        self._conversation = conversation
        self._transcriber = transcriber or Transcriber()
        self._transcription_calls = agent_metrics.ModelUsage(self._transcriber.provider)
        """The model metrics of dictation's provider calls (the provider's label, as the chat's)."""
        self._metrics = {name: agent_metrics.StreamMetrics(name) for name in STREAMING_METHODS}
        """The streaming methods' metric children, bound once (services/agent_service/metrics.py)."""
        self._count_text = metrics.enabled()
        """Whether streams look for their text deltas (time to the first, how many): only to count
        them, so not with metrics off."""

    async def _stream(
        self,
        context: Context,
        operation: str,
        open_events: Callable[[], AsyncIterator[ThreadStreamEvent]],
        *,
        batched: bool = False,
    ) -> None:
        """The boundary of every streaming RPC: a domain error becomes its status, anything else is
        logged with the request id and answered INTERNAL with a generic message.

        The per-event RPCs write each event as its own message. `Stream` (`batched`) writes a
        `StreamResponse` of the events that are ready together: after an event, the ones the
        conversation produces without waiting (`Ready.poll`), up to MAX_BATCH_EVENTS events and
        MAX_BATCH_BYTES bytes. Nothing waits to fill a batch. The events, their order, the statuses
        and the metrics are the same either way.

        A batch ends where the conversation suspends, inside its next step: that step is finished
        by the next `anext`, or cancelled where it waits when this call is cancelled during the
        write (as if it had been awaiting it: the run stops, the partial answer is saved, a lost
        lease is ABORTED), or when the stream ends otherwise (`Ready.aclose`).
        """
        observed = self._metrics[operation]
        count_text = self._count_text
        started = time.perf_counter()
        sent = deltas = 0
        limit = MAX_BATCH_EVENTS if batched else 1
        observed.in_flight.inc()
        try:
            try:
                events = Ready(open_events())
            except SwitchboardError as error:
                await _refuse(context, error)
                return
            except Exception:
                await abort_internal(context, "ChatService")
                return
            try:
                carried: tuple[events_pb2.ThreadStreamEvent, int] | None = None
                while True:
                    batch: list[events_pb2.ThreadStreamEvent] = []
                    size = 0
                    if carried is not None:
                        batch.append(carried[0])
                        size = carried[1]
                        carried = None
                    while len(batch) < limit:
                        if batch:
                            event = events.poll()
                            if event is NOT_READY:
                                break
                        else:
                            try:
                                event = await anext(events)
                            except StopAsyncIteration:
                                break
                        if (
                            count_text
                            and isinstance(event, ThreadItemUpdatedEvent)
                            and isinstance(event.update, AssistantMessageContentPartTextDelta)
                        ):
                            if not deltas:
                                observed.first_text.observe(time.perf_counter() - started)
                            deltas += 1
                        message = event_to_proto(event)
                        if batched:
                            bytes_ = message.ByteSize()
                            if batch and size + bytes_ > MAX_BATCH_BYTES:
                                carried = (message, bytes_)
                                break
                            size += bytes_
                        batch.append(message)
                    if not batch:
                        break  # the end of the stream
                    try:
                        await context.write(chat_pb2.StreamResponse(events=batch) if batched else batch[0])
                    except asyncio.CancelledError:
                        await events.cancel_pending()
                        raise
                    sent += len(batch)
            except SwitchboardError as error:
                await _refuse(context, error)
            except Exception:
                await abort_internal(context, "ChatService")
            finally:
                await events.aclose()
        finally:
            observed.in_flight.dec()
            if sent:  # a refused call (a status, no events) is not a stream
                observed.seconds.observe(time.perf_counter() - started)
                observed.events.inc(sent)
                if deltas:
                    observed.text_deltas.inc(deltas)

    async def _unary(self, context: Context, call: Callable[[], Awaitable[_Reply]]) -> _Reply:
        """The boundary of every unary RPC (see `_stream`)."""
        try:
            return await call()
        except SwitchboardError as error:
            await _refuse(context, error)
            raise AssertionError("unreachable") from error
        except Exception as error:
            await abort_internal(context, "ChatService")
            raise AssertionError("unreachable") from error

    # ------------------------------------------------------------------ streaming
    # These use grpc.aio's writer API (context.write), which the generated stubs do not describe.
    # Each operation's events come from its opener (`_create_thread`, ...), shared by its per-event
    # RPC and by `Stream`; an opener runs inside `_stream`, so its errors get the boundary's mapping.

    async def Stream(self, request: chat_pb2.StreamRequest, context: Context) -> None:  # type: ignore[override]
        kind = request.WhichOneof("operation")
        if kind is None:
            await abort_with(context, InvalidRequest(MISSING_OPERATION))
            return
        operation, opener = _OPERATIONS[kind]
        current_operation.set(operation)  # the logs name the operation, as for its per-event RPC
        tracing.set_operation(operation)
        inner = getattr(request, kind)
        await self._stream(context, operation, lambda: opener(self, inner), batched=True)

    async def CreateThread(self, request: chat_pb2.CreateThreadRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream(context, "CreateThread", lambda: self._create_thread(request))

    async def AddUserMessage(self, request: chat_pb2.AddUserMessageRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream(context, "AddUserMessage", lambda: self._add_user_message(request))

    async def AddClientToolOutput(  # type: ignore[override]
        self, request: chat_pb2.AddClientToolOutputRequest, context: Context
    ) -> None:
        await self._stream(context, "AddClientToolOutput", lambda: self._add_client_tool_output(request))

    async def AddStructuredInput(self, request: chat_pb2.AddStructuredInputRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream(context, "AddStructuredInput", lambda: self._add_structured_input(request))

    async def RetryAfterItem(self, request: chat_pb2.RetryAfterItemRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream(context, "RetryAfterItem", lambda: self._retry_after_item(request))

    async def CustomAction(self, request: chat_pb2.CustomActionRequest, context: Context) -> None:  # type: ignore[override]
        await self._stream(context, "CustomAction", lambda: self._custom_action(request))

    def _create_thread(self, request: chat_pb2.CreateThreadRequest) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        return self._conversation.create_thread(owner, locale, _user_input(request.input))

    def _add_user_message(self, request: chat_pb2.AddUserMessageRequest) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        return self._conversation.add_user_message(
            owner, locale, _required(request.thread_id, "thread_id"), _user_input(request.input)
        )

    def _add_client_tool_output(
        self, request: chat_pb2.AddClientToolOutputRequest
    ) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        return self._conversation.add_client_tool_output(
            owner, locale, _required(request.thread_id, "thread_id"), _tool_result(request)
        )

    def _add_structured_input(
        self, request: chat_pb2.AddStructuredInputRequest
    ) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        return self._conversation.add_structured_input(
            owner,
            locale,
            _required(request.thread_id, "thread_id"),
            _required(request.item_id, "item_id"),
            _parse(StructuredInputSubmission, codec.to_data(request.input), "input"),
        )

    def _retry_after_item(self, request: chat_pb2.RetryAfterItemRequest) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        return self._conversation.retry_after_item(
            owner,
            locale,
            _required(request.thread_id, "thread_id"),
            _required(request.item_id, "item_id"),
        )

    def _custom_action(self, request: chat_pb2.CustomActionRequest) -> AsyncIterator[ThreadStreamEvent]:
        owner, locale = _caller()
        item_id = request.item_id if request.HasField("item_id") else None
        return self._conversation.custom_action(
            owner, locale, _required(request.thread_id, "thread_id"), item_id, _action(request.action)
        )

    # ------------------------------------------------------------------ unary

    async def SyncCustomAction(
        self, request: chat_pb2.SyncCustomActionRequest, context: Context
    ) -> chat_pb2.SyncCustomActionResponse:
        owner, locale = _caller()

        async def call() -> chat_pb2.SyncCustomActionResponse:
            item_id = request.item_id if request.HasField("item_id") else None
            updated = await self._conversation.sync_custom_action(
                owner, locale, _required(request.thread_id, "thread_id"), item_id, _action(request.action)
            )
            response = chat_pb2.SyncCustomActionResponse()
            if updated is not None:
                response.updated_item.CopyFrom(codec.item_to_proto(updated))
            return response

        return await self._unary(context, call)

    async def GetThread(self, request: chat_pb2.GetThreadRequest, context: Context) -> thread_pb2.Thread:
        owner, _ = _caller()

        async def call() -> thread_pb2.Thread:
            thread = await self._conversation.get_thread(owner, _required(request.thread_id, "thread_id"))
            return codec.thread_to_proto(thread)

        return await self._unary(context, call)

    async def ListThreads(
        self, request: chat_pb2.ListThreadsRequest, context: Context
    ) -> chat_pb2.ListThreadsResponse:
        owner, _ = _caller()

        async def call() -> chat_pb2.ListThreadsResponse:
            page = await self._conversation.list_threads(
                owner,
                limit=request.limit,
                order=request.order,
                after=request.after if request.HasField("after") else None,
            )
            return codec.to_proto(page, chat_pb2.ListThreadsResponse())

        return await self._unary(context, call)

    async def UpdateThread(
        self, request: chat_pb2.UpdateThreadRequest, context: Context
    ) -> thread_pb2.Thread:
        owner, _ = _caller()

        async def call() -> thread_pb2.Thread:
            thread = await self._conversation.update_thread(
                owner, _required(request.thread_id, "thread_id"), request.title
            )
            return codec.thread_to_proto(thread)

        return await self._unary(context, call)

    async def DeleteThread(
        self, request: chat_pb2.DeleteThreadRequest, context: Context
    ) -> chat_pb2.DeleteThreadResponse:
        owner, _ = _caller()

        async def call() -> chat_pb2.DeleteThreadResponse:
            await self._conversation.delete_thread(owner, _required(request.thread_id, "thread_id"))
            return chat_pb2.DeleteThreadResponse()

        return await self._unary(context, call)

    async def ListItems(
        self, request: chat_pb2.ListItemsRequest, context: Context
    ) -> chat_pb2.ListItemsResponse:
        owner, _ = _caller()

        async def call() -> chat_pb2.ListItemsResponse:
            page = await self._conversation.list_items(
                owner,
                _required(request.thread_id, "thread_id"),
                limit=request.limit,
                order=request.order,
                after=request.after if request.HasField("after") else None,
            )
            return codec.to_proto(page, chat_pb2.ListItemsResponse())

        return await self._unary(context, call)

    async def AddFeedback(
        self, request: chat_pb2.AddFeedbackRequest, context: Context
    ) -> chat_pb2.AddFeedbackResponse:
        owner, _ = _caller()

        async def call() -> chat_pb2.AddFeedbackResponse:
            await self._conversation.add_feedback(
                owner, _required(request.thread_id, "thread_id"), list(request.item_ids), request.kind
            )
            return chat_pb2.AddFeedbackResponse()

        return await self._unary(context, call)

    async def Transcribe(
        self, request: chat_pb2.TranscribeRequest, context: Context
    ) -> chat_pb2.TranscribeResponse:
        owner, locale = _caller()
        caller = Caller(tenant=owner.tenant, user=owner.user, role=owner.role, locale=locale)

        async def call() -> chat_pb2.TranscribeResponse:
            transcriber = self._transcriber
            # Through the provider, dictation spends tokens: refused like a turn once the tenant's
            # budget of the day is used up (the request's token and that check in one transaction).
            await self._conversation.admit(owner, budget=transcriber.spends_tokens)
            transcript = await transcriber.transcribe(request.audio, request.mime_type, caller)
            if transcript.usage is not None:
                await self._count_transcription(owner, transcript.usage)
            return chat_pb2.TranscribeResponse(text=transcript.text)

        return await self._unary(context, call)

    async def _count_transcription(self, owner: Principal, usage: ProviderUsage) -> None:
        """A provider's transcription as a model call: in the model metrics, and its tokens in the
        caller's usage of the day under the transcription model's name (which adds them to the
        tenant's tokens of the day, what the budget reads). A usage that reports only the audio's
        duration (whisper-1), or nothing, counts the call and no tokens."""
        self._transcription_calls.record(
            usage.model, requests=1, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        )
        meter = UsageMeter()
        meter.model_call(usage.model, usage.input_tokens, usage.output_tokens)
        counted = meter.take()
        if counted is None:
            return
        try:
            await self._conversation.record_usage(owner, counted)
        except Exception as error:
            # A trade-off: the provider has answered and spent the tokens, and the user is waiting
            # for the text. Failing the call now would lose the transcript and not give the tokens
            # back, so the failure is logged and the text answered; the accounting and the tenant's
            # budget then miss this recording's tokens (they err low). docs/limits.md says so.
            log.warning(
                "the usage of a transcription (%s: %d input + %d output tokens) of %s/%s "
                "was not recorded: %s: %s",
                usage.model,
                usage.input_tokens,
                usage.output_tokens,
                owner.tenant,
                owner.user,
                type(error).__name__,
                error,
            )


_OPERATIONS: Final[dict[str, tuple[str, Callable[[ChatService, Any], AsyncIterator[ThreadStreamEvent]]]]] = {
    "create_thread": ("CreateThread", ChatService._create_thread),
    "add_user_message": ("AddUserMessage", ChatService._add_user_message),
    "add_client_tool_output": ("AddClientToolOutput", ChatService._add_client_tool_output),
    "add_structured_input": ("AddStructuredInput", ChatService._add_structured_input),
    "retry_after_item": ("RetryAfterItem", ChatService._retry_after_item),
    "custom_action": ("CustomAction", ChatService._custom_action),
}
"""`StreamRequest.operation`'s fields: the operation (its per-event RPC's name, the metrics' and
logs' label) and its opener."""
MISSING_OPERATION: Final = (
    "StreamRequest.operation is not set (or is not one this server knows): set one of "
    + ", ".join(_OPERATIONS)
)


async def build_server(
    settings: Settings,
    store: Store,
    responder: Responder,
    *,
    limits_store: LimitsStore,
    attachments: AttachmentClient | None = None,
    transcriber: Transcriber | None = None,
    listen: str | None = None,
    reuse_port: bool = False,
) -> tuple[aio.Server, health.aio.HealthServicer, int]:
    """A started gRPC server with every service registered; returns it, its health servicer and port.

    ChatService works on `store`; AdminService (usage, limits, audit log) on `limits_store`, an open
    `LimitsStore` on the same database. Without a `transcriber`, dictation answers with the offline
    placeholder. `reuse_port`: listen with SO_REUSEPORT, sharing the address with the other workers
    of this service (the kernel spreads new connections over them).
    """
    verifier = build_verifier(settings)
    options = server_options(settings)
    if reuse_port:
        options.append(("grpc.so_reuseport", 1))
    server = aio.server(
        interceptors=[
            *tracing.server_interceptors(),
            *grpc_metrics.server_interceptors(),
            AuthInterceptor(verifier),
        ],
        options=options,
    )
    conversation = Conversation(
        store,
        responder,
        history_items=settings.history_items,
        attachments=attachments,
        lease_ttl_s=settings.run_lease_ttl_s,
        lease_wait_s=settings.run_lease_wait_s,
        limits=Limits.from_settings(settings) if settings.limits_enabled else None,
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(conversation, transcriber), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(limits_store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [SERVICE_NAME, ADMIN_SERVICE_NAME], settings)
    port = bind(server, listen or settings.agent_listen, settings)
    if port == 0:
        raise OSError(f"cannot listen on {listen or settings.agent_listen}")
    # SERVING before the first connection: clients with client-side health checking (the edge)
    # must never see this replica as unknown while it is ready.
    for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    return server, health_servicer, port


@dataclass(frozen=True, slots=True)
class Worker:
    """What `serve` runs as in a worker process of the supervisor (`workers.py`)."""

    index: int
    """1 to `count`, for the logs."""
    count: int
    ready: Callable[[int], None]
    """Called with the port once the server accepts calls."""
    prepared: Callable[[], Awaitable[None]]
    """Awaited once the store is open and the app started, before listening: the workers of a
    supervisor start listening together, so the first clients' connections spread over all."""


async def serve(settings: Settings, *, worker: Worker | None = None) -> None:
    """Run the agent service until SIGTERM/SIGINT, then drain in-flight streams within the grace.

    Exits with status 2 and a one-line explanation when the app (`SWITCHBOARD_APP`) cannot be
    loaded or started, or when the database schema is not the one this version needs (PostgreSQL:
    run `switchboard migrate` first).

    As a `worker` it listens with SO_REUSEPORT, names itself in the "listening" line and tells the
    supervisor when it serves; its settings come from the supervisor (no metrics port of its own).
    """
    from services.agent_service.agents import AppLoadError, create_responder, load_app

    tracing.setup_tracing("agent")
    metrics.setup_metrics(settings.metrics_enabled, agent_metrics)
    try:
        app = load_app(settings.app)
    except AppLoadError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(2) from None
    try:
        store = create_store(settings)
    except ValueError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(2) from None
    try:
        await store.open()
    except SchemaError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(2) from None
    except (OSError, TimeoutError, DBAPIError) as error:
        # Exit and let the supervisor (Kubernetes) restart us with its backoff.
        log.error("cannot start: the database %s is unreachable: %s", store.url, error)
        raise SystemExit(1) from None
    try:
        responder = await create_responder(settings, app)
    except AppLoadError as error:
        await store.close()
        log.error("cannot start: %s", error)
        raise SystemExit(2) from None
    attachments = AttachmentClient(settings.upload_address, settings)
    pool_sampler = agent_metrics.watch_pool(store.pool_checked_out)
    try:
        scrape = metrics.start_metrics_server(
            settings.agent_metrics_listen, setting="SWITCHBOARD_AGENT_METRICS_LISTEN"
        )
    except (ValueError, OSError) as error:
        await responder.aclose()
        await store.close()
        log.error("cannot start: metrics on %s: %s", settings.agent_metrics_listen, error)
        raise SystemExit(2) from None
    # The admin service works through the thread store's transactions (no pool of its own).
    limits_store = LimitsStore(settings, application_name="switchboard-agent-admin", transactions=store)
    await limits_store.open()
    if worker is not None:
        await worker.prepared()
    server, health_servicer, port = await build_server(
        settings,
        store,
        responder,
        limits_store=limits_store,
        attachments=attachments,
        transcriber=responder.transcriber,
        reuse_port=worker is not None,
    )
    log.info(
        "agent service listening on %s (port %d), store %s%s",
        settings.agent_listen,
        port,
        redacted(database_url(settings)),
        f", worker {worker.index} of {worker.count} (pid {os.getpid()})" if worker is not None else "",
    )
    if worker is not None:
        worker.ready(port)

    loop = asyncio.get_running_loop()
    await serve_until_signalled(
        server,
        health_servicer,
        grace_s=settings.shutdown_grace_s,
        notice_s=SHUTDOWN_NOTICE_S,
        name="agent service",
    )
    # Turns cancelled at the end of the grace save their partial answers and release their leases
    # in shielded tasks that outlive their handlers: the store closes only after those finished.
    stopped = loop.time()
    await asyncio.sleep(0)  # let the cancelled handlers reach their shielded saves
    unfinished = await drain_shielded(SHUTDOWN_DRAIN_S)
    if unfinished:
        log.warning("%d shielded saves or lease releases did not finish before the store closed", unfinished)
    log.debug("shielded work drained in %.3f s", loop.time() - stopped)
    if pool_sampler is not None:
        pool_sampler.cancel()
    await responder.aclose()
    await attachments.aclose()
    await store.close()
    await limits_store.close()
    if scrape is not None:
        scrape.stop()
    tracing.shutdown_tracing()
    log.info("agent service stopped")


__all__ = [
    "ADMIN_SERVICE_NAME",
    "SERVICE_NAME",
    "ChatService",
    "Worker",
    "build_server",
    "events_pb2",
    "serve",
    "server_options",
]
