"""The upload service's gRPC wiring: UploadService handlers, auth, health, reflection, shutdown.

Handlers read the caller from the auth interceptor's ContextVar, call `Attachments` and turn records
into ChatKit-shaped `switchboard.v1.Attachment` messages: `image` (with a fresh presigned preview
URL) for image/* types, `file` otherwise, and `upload_descriptor` (a presigned PUT with the
Content-Type header to send) only while a two-phase upload is pending.

Requests and limits (see `quota`): Upload, CreateAttachment and DeleteAttachment are user requests
(the edge calls them for the user's own HTTP requests) and take one request of the user's rate;
AttachToThread, GetAttachments, ReadAttachment and DeleteThreadAttachments are the agent service's
calls within a user request it admitted already, and so is an Upload that carries
`WITHIN_REQUEST_KEY` (an image the agent generated). Byte limits apply to every upload.

Status codes: INVALID_ARGUMENT for bad input (names, types, empty files, declared size or content
mismatches), RESOURCE_EXHAUSTED without a retry-after hint for files over the size limit (the edge
answers 413) and with one (trailing metadata `retry-after`) for a limit that frees up later: too
many uploads at once, the user's uploaded bytes of the day, the tenant's stored bytes, the user's
request rate (the edge answers 429 with Retry-After), DEADLINE_EXCEEDED for an upload whose next
chunk did not come in time (408), NOT_FOUND for unknown or foreign attachments,
FAILED_PRECONDITION for attachments that cannot be attached or read yet, UNAVAILABLE when object
storage or the database cannot be reached (or the database has no limits tables yet), INTERNAL
for anything unexpected (logged with its traceback, never sent to the client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common import tracing
from services.common.auth import Principal
from services.common.config import Settings
from services.common.errors import invalid
from services.common.grpc_auth import AuthInterceptor, current_principal, current_request_id
from services.common.grpc_metrics import server_interceptors as metrics_interceptors
from services.common.grpc_server import abort_with, enable_reflection, serve_until_signalled, server_options
from services.common.grpc_tls import bind
from services.common.identity import build_verifier
from services.common.metrics import setup_metrics, start_metrics_server
from services.common.uploads import UPLOAD_ACCEPTED_KEY, WITHIN_REQUEST_KEY
from services.upload_service import metrics
from services.upload_service.attachments import Attachments, Presented
from services.upload_service.quota import UploadQuota, open_quota
from services.upload_service.records import AttachmentRecord
from services.upload_service.storage import ObjectStorage
from services.upload_service.sweep import lifecycle, sweep_periodically
from services.upload_service.validation import UploadPolicy
from switchboard.app import SwitchboardError, Unavailable
from switchboard.v1 import thread_pb2, upload_pb2, upload_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: Final = upload_pb2.DESCRIPTOR.services_by_name["UploadService"].full_name
_MB: Final = 1024 * 1024
# Upload chunks are at most 4 MiB (upload.proto); leave room for framing.
MAX_MESSAGE_BYTES: Final = 8 * _MB

_Reply = TypeVar("_Reply", bound=Message)
Context = aio.ServicerContext[Any, Any]


def to_proto(presented: Presented) -> thread_pb2.Attachment:
    """The ChatKit Attachment for a record and its fresh URLs."""
    record = presented.record
    message = thread_pb2.Attachment(id=record.id, name=record.name, mime_type=record.mime_type)
    if record.thread_id is not None:
        message.thread_id = record.thread_id
    if presented.preview_url is not None:
        message.image.preview_url = presented.preview_url
    else:
        message.file.SetInParent()
    if presented.upload_url is not None:
        message.upload_descriptor.url = presented.upload_url
        message.upload_descriptor.method = "PUT"
        message.upload_descriptor.headers["Content-Type"] = record.mime_type
    return message


def _within_request(context: Context) -> bool:
    """Whether the call is part of a user request another service admitted (`WITHIN_REQUEST_KEY`)."""
    return any(key == WITHIN_REQUEST_KEY for key, _ in context.invocation_metadata() or ())


async def _chunks(
    messages: AsyncIterator[upload_pb2.UploadRequest], context: Context, *, marked: bool
) -> AsyncIterator[bytes]:
    """The file's bytes. A client that cancels (the browser went away and the edge cancelled the
    call) ends the request stream just like one that finished (grpc.aio merges the two), and the
    cancellation may be noticed only a moment later: a client that promised an `end` message
    (`info.ends_with_marker`, as the edge does) is complete only with it; for other clients the
    cancellation is checked here and again before the record is saved (a truncated file that slips
    through is unreferenced: its id reached nobody, and the sweep removes it)."""
    received = 0
    ended = False
    async for message in messages:
        match message.WhichOneof("kind"):
            case "chunk" if not ended:
                received += len(message.chunk)
                yield message.chunk
            case "end" if marked and not ended:
                if message.end.size != received:
                    raise invalid(f"the upload ended after {received} bytes, not {message.end.size}")
                ended = True
            case _:
                raise invalid("`info` first, then `chunk` messages, then `end` (when promised)")
    if marked and not ended:
        # Cut short: a cancelled client ignores the answer; one that stopped sending learns why.
        raise invalid("the upload stopped before its `end` message: nothing was stored")
    if not ended and context.cancelled():
        raise asyncio.CancelledError("the client cancelled the upload")


class UploadService(upload_pb2_grpc.UploadServiceServicer):
    def __init__(self, attachments: Attachments) -> None:
        self._attachments = attachments

    async def _unary(self, context: Context, call: Callable[[], Awaitable[_Reply]]) -> _Reply:
        try:
            return await call()
        except SwitchboardError as error:
            await abort_with(context, error)
        except Exception:
            log.exception("request %s failed", current_request_id.get())
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the upload service")
        raise AssertionError("unreachable")  # context.abort raises

    async def _present(self, records: list[AttachmentRecord]) -> list[thread_pb2.Attachment]:
        presented = await asyncio.gather(*(self._attachments.present(record) for record in records))
        return [to_proto(item) for item in presented]

    async def Upload(
        self, request_iterator: AsyncIterator[upload_pb2.UploadRequest], context: Context
    ) -> upload_pb2.UploadResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.UploadResponse:
            messages = aiter(request_iterator)
            first = await anext(messages, None)
            if first is None or first.WhichOneof("kind") != "info":
                raise invalid("the first message must carry `info` (the file's name and type)")
            try:
                record = await self._attachments.upload(
                    owner,
                    name=first.info.name,
                    mime_type=first.info.mime_type,
                    size=first.info.size,
                    chunks=_chunks(messages, context, marked=first.info.ends_with_marker),
                    wanted=lambda: not context.cancelled(),
                    accepted=lambda: context.send_initial_metadata(((UPLOAD_ACCEPTED_KEY, "1"),)),
                    request=not _within_request(context),
                )
            except SwitchboardError as error:
                metrics.count_refusal(error)
                raise
            metrics.DIRECT.inc()
            metrics.UPLOAD_BYTES.inc(record.size)
            (attachment,) = await self._present([record])
            return upload_pb2.UploadResponse(
                attachment=attachment, size=record.size, sha256=record.sha256 or ""
            )

        return await self._unary(context, call)

    async def CreateAttachment(
        self, request: upload_pb2.CreateAttachmentRequest, context: Context
    ) -> upload_pb2.CreateAttachmentResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.CreateAttachmentResponse:
            try:
                record = await self._attachments.create(
                    owner, name=request.name, mime_type=request.mime_type, size=request.size
                )
            except SwitchboardError as error:
                metrics.count_refusal(error)
                raise
            metrics.PRESIGNED.inc()
            (attachment,) = await self._present([record])
            return upload_pb2.CreateAttachmentResponse(attachment=attachment)

        return await self._unary(context, call)

    async def GetAttachments(
        self, request: upload_pb2.GetAttachmentsRequest, context: Context
    ) -> upload_pb2.GetAttachmentsResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.GetAttachmentsResponse:
            records = await self._attachments.get(owner, request.attachment_ids)
            return upload_pb2.GetAttachmentsResponse(attachments=await self._present(records))

        return await self._unary(context, call)

    async def AttachToThread(
        self, request: upload_pb2.AttachToThreadRequest, context: Context
    ) -> upload_pb2.AttachToThreadResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.AttachToThreadResponse:
            records = await self._attachments.attach(owner, request.thread_id, request.attachment_ids)
            return upload_pb2.AttachToThreadResponse(
                attachments=await self._present(records), sizes=[record.size for record in records]
            )

        return await self._unary(context, call)

    # grpc.aio's writer API (context.write), so that a refusal before the first chunk is a status.
    async def ReadAttachment(  # type: ignore[override]
        self, request: upload_pb2.ReadAttachmentRequest, context: Context
    ) -> None:
        owner: Principal = current_principal.get()
        try:
            chunks = await self._attachments.read(owner, request.attachment_id, request.max_bytes)
            async with aclosing(chunks):
                async for chunk in chunks:
                    await context.write(upload_pb2.ReadAttachmentResponse(chunk=chunk))
        except SwitchboardError as error:
            await abort_with(context, error)
        except Exception:
            log.exception("request %s failed", current_request_id.get())
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the upload service")

    async def DeleteAttachment(
        self, request: upload_pb2.DeleteAttachmentRequest, context: Context
    ) -> upload_pb2.DeleteAttachmentResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.DeleteAttachmentResponse:
            await self._attachments.delete(owner, request.attachment_id)
            return upload_pb2.DeleteAttachmentResponse()

        return await self._unary(context, call)

    async def DeleteThreadAttachments(
        self, request: upload_pb2.DeleteThreadAttachmentsRequest, context: Context
    ) -> upload_pb2.DeleteThreadAttachmentsResponse:
        owner = current_principal.get()

        async def call() -> upload_pb2.DeleteThreadAttachmentsResponse:
            deleted = await self._attachments.delete_thread(owner, request.thread_id)
            return upload_pb2.DeleteThreadAttachmentsResponse(deleted=deleted)

        return await self._unary(context, call)


async def build_server(
    settings: Settings,
    storage: ObjectStorage,
    *,
    listen: str | None = None,
    serving: bool = True,
    quota: UploadQuota | None = None,
) -> tuple[aio.Server, health.aio.HealthServicer, int]:
    """A started gRPC server with every service registered; returns it, its health servicer and port.

    With `serving=False` the health status starts NOT_SERVING (`serve` flips it once the bucket
    exists); calls are answered either way, and fail with UNAVAILABLE while storage is down.
    Without `quota` no limit is checked and no byte counted (the service alone, in tests).
    """
    verifier = build_verifier(settings)
    server = aio.server(
        interceptors=[*tracing.server_interceptors(), *metrics_interceptors(), AuthInterceptor(verifier)],
        options=server_options(settings, max_message_bytes=MAX_MESSAGE_BYTES),
    )
    attachments = Attachments(
        storage,
        UploadPolicy.from_settings(settings),
        presign_ttl_s=settings.presign_ttl_s,
        max_uploads_per_user=settings.upload_max_per_user,
        chunk_timeout_s=settings.upload_chunk_timeout_s,
        quota=quota,
    )
    upload_pb2_grpc.add_UploadServiceServicer_to_server(UploadService(attachments), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection(server, [SERVICE_NAME], settings)
    port = bind(server, listen or settings.upload_listen, settings)
    if port == 0:
        raise OSError(f"cannot listen on {listen or settings.upload_listen}")
    await server.start()
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)
    return server, health_servicer, port


async def _ensure_bucket(
    storage: ObjectStorage,
    health_servicer: health.aio.HealthServicer,
    settings: Settings,
    ready: asyncio.Event,
) -> None:
    """Create the bucket, waiting for object storage to come up (it may start after us), then
    report SERVING. Runs beside the server, so a storage outage at start-up is an outage of uploads
    (UNAVAILABLE, not ready), not a service that never listens."""
    delay = 0.5
    while True:
        try:
            await storage.ensure_bucket()
            await lifecycle(storage, settings.upload_pending_ttl_s)
            break
        except SwitchboardError as error:
            level = logging.WARNING if isinstance(error, Unavailable) else logging.ERROR
            log.log(
                level,
                "cannot prepare bucket %s at %s (%s); retrying",
                storage.bucket,
                storage.endpoint,
                error,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("bucket %s ready at %s", storage.bucket, storage.endpoint)
    ready.set()


async def serve(settings: Settings) -> None:
    """Run the upload service until SIGTERM/SIGINT, then drain in-flight calls within the grace.

    The limits live in the shared database (`SWITCHBOARD_DATABASE_URL`, else the SQLite file the
    agent service uses); it is opened at start without waiting for it (see `quota`)."""
    tracing.setup_tracing("upload")
    setup_metrics(settings.metrics_enabled, metrics)
    try:
        quota = await open_quota(settings, application_name="switchboard-upload")
    except ValueError as error:
        log.error("cannot start: %s", error)
        raise SystemExit(2) from None
    storage = ObjectStorage.from_settings(settings)
    try:
        scrape = start_metrics_server(
            settings.upload_metrics_listen, setting="SWITCHBOARD_UPLOAD_METRICS_LISTEN"
        )
    except (ValueError, OSError) as error:
        await quota.close()
        await storage.close()
        log.error("cannot start: metrics on %s: %s", settings.upload_metrics_listen, error)
        raise SystemExit(2) from None
    try:
        server, health_servicer, port = await build_server(settings, storage, serving=False, quota=quota)
        ready = asyncio.Event()
        tasks = [
            asyncio.create_task(_ensure_bucket(storage, health_servicer, settings, ready)),
            asyncio.create_task(quota.check_schema()),
        ]
        if settings.upload_sweep_interval_s > 0:
            sweeper = sweep_periodically(
                storage,
                interval_s=settings.upload_sweep_interval_s,
                pending_ttl_s=settings.upload_pending_ttl_s,
                ready=ready,
                quota=quota,
            )
            tasks.append(asyncio.create_task(sweeper))
        log.info(
            "upload service listening on %s (port %d), bucket %s at %s",
            settings.upload_listen,
            port,
            storage.bucket,
            storage.endpoint,
        )
        try:
            await serve_until_signalled(
                server, health_servicer, grace_s=settings.shutdown_grace_s, name="upload service"
            )
        finally:
            for task in tasks:
                task.cancel()
    finally:
        await quota.close()
        await storage.close()
        if scrape is not None:
            scrape.stop()
        tracing.shutdown_tracing()
    log.info("upload service stopped")


__all__ = ["SERVICE_NAME", "UploadService", "build_server", "serve", "to_proto"]
