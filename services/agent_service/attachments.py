"""The agent service's client of the upload service: attachments used by messages and read by agents.

Every call acts for the caller: it forwards the caller's bearer token (and request id), so the upload
service checks ownership itself and a thread can only use its owner's attachments. Failures become
domain errors the conversation can report before it writes anything:

- an attachment that does not exist (or is someone else's) is `NotFound`, like any unknown id;
- an attachment that is not uploaded completely, or whose bytes do not match its type, keeps the
  upload service's answer (`PreconditionFailed`);
- a limit that frees up later (the user's uploaded bytes of the day, the tenant's stored bytes)
  stays `LimitReached` with the upload service's retry-after hint (HTTP 429 with Retry-After);
- an unreachable upload service is `Unavailable`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

import grpc
from chatkit.types import (
    Attachment,
    GeneratedImage,
    GeneratedImageItem,
    ImageAttachment,
    ThreadItem,
    UserMessageItem,
)
from grpc import aio

from services.common import codec
from services.common.config import Settings, grpc_target
from services.common.errors import from_grpc_status
from services.common.grpc_auth import current_authorization, current_request_id
from services.common.grpc_server import retry_after_hint
from services.common.grpc_tls import client_channel
from services.common.uploads import WITHIN_REQUEST_KEY
from services.limits import LimitReached
from switchboard.app import NotFound, SwitchboardError, Unavailable
from switchboard.v1 import upload_pb2, upload_pb2_grpc

STORED_PREVIEW_URL: Final = "https://attachments.invalid/{id}"
"""What the store keeps instead of a preview URL: URLs are minted when items are read, never stored
(`.invalid` is reserved, RFC 2606, so a stored value can never leak a working link)."""
SIZE_KEY: Final = "size"
"""Key in `Attachment.metadata` (kept in the store, never sent to clients) holding the byte size."""
_TIMEOUT_S: Final = 10.0
_CHUNK_BYTES: Final = 1024 * 1024
_CHANNEL_OPTIONS: Final = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Several upload replicas behind one DNS name (a headless Service): spread calls over all.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),
]


def _metadata() -> tuple[tuple[str, str], ...]:
    return (("authorization", current_authorization.get()), ("x-request-id", current_request_id.get()))


def _service_error(error: aio.AioRpcError, subject: str) -> SwitchboardError:
    """The upload service's refusal as the domain error it means for the conversation."""
    code = error.code()
    details = error.details() or code.name
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"unknown {subject}: {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable("the upload service is unavailable; try again later")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        hint = retry_after_hint(error)
        if hint is not None:
            return LimitReached.relayed(details, retry_after_s=hint)
    return from_grpc_status(code, details)


@dataclass(slots=True)
class AttachmentClient:
    """gRPC calls to the upload service on the current caller's behalf."""

    address: str
    settings: Settings | None = None
    """Transport security for the channel (see `services.common.grpc_tls`); None: plaintext."""
    _channel: aio.Channel | None = None
    _stub: upload_pb2_grpc.UploadServiceAsyncStub | None = None

    @property
    def stub(self) -> upload_pb2_grpc.UploadServiceAsyncStub:
        if self._stub is None:
            self._channel = client_channel(grpc_target(self.address), self.settings, options=_CHANNEL_OPTIONS)
            self._stub = upload_pb2_grpc.UploadServiceStub(self._channel)
        return self._stub

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub = None, None

    async def attach(self, thread_id: str, attachment_ids: Sequence[str]) -> list[Attachment]:
        """Bind the attachments to the thread (all or none); each carries its size in metadata."""
        if not attachment_ids:
            return []
        request = upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=list(attachment_ids))
        try:
            reply = await self.stub.AttachToThread(request, metadata=_metadata(), timeout=_TIMEOUT_S)
        except aio.AioRpcError as error:
            raise _service_error(error, "attachment") from error
        attachments = []
        for message, size in zip(reply.attachments, reply.sizes, strict=True):
            attachment = codec.attachment_from_proto(message)
            attachment.metadata = {SIZE_KEY: int(size)}
            attachments.append(attachment)
        return attachments

    async def fresh(self, attachment_ids: Sequence[str]) -> dict[str, Attachment]:
        """The attachments with newly minted preview URLs, by id (missing ones left out)."""
        if not attachment_ids:
            return {}
        ids = list(dict.fromkeys(attachment_ids))
        try:
            reply = await self.stub.GetAttachments(
                upload_pb2.GetAttachmentsRequest(attachment_ids=ids), metadata=_metadata(), timeout=_TIMEOUT_S
            )
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND or len(ids) == 1:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return {}
                raise _service_error(error, "attachment") from error
            # One of them is gone (deleted): ask for each, so the others still get fresh URLs.
            found: dict[str, Attachment] = {}
            for attachment_id in ids:
                found.update(await self.fresh([attachment_id]))
            return found
        return {message.id: codec.attachment_from_proto(message) for message in reply.attachments}

    async def with_fresh_urls(self, items: Sequence[ThreadItem]) -> None:
        """Give image attachments of user messages, and generated images, fresh URLs in place (one
        batch call).

        When the upload service cannot answer, the items keep their placeholders: reading a thread
        must not fail because previews are unavailable.
        """
        images = [
            attachment
            for item in items
            if isinstance(item, UserMessageItem)
            for attachment in item.attachments
            if isinstance(attachment, ImageAttachment)
        ]
        generated = [item.image for item in items if isinstance(item, GeneratedImageItem) and item.image]
        if not images and not generated:
            return
        try:
            fresh = await self.fresh([image.id for image in images] + [image.id for image in generated])
        except SwitchboardError:
            return
        for image in images:
            minted = fresh.get(image.id)
            if isinstance(minted, ImageAttachment):
                image.preview_url = minted.preview_url
        for picture in generated:
            minted = fresh.get(picture.id)
            if isinstance(minted, ImageAttachment):
                picture.url = str(minted.preview_url)

    async def store_image(self, thread_id: str, data: bytes, mime_type: str, name: str) -> GeneratedImage:
        """Upload a generated image as an attachment of the caller, bound to `thread_id` (so the
        thread's deletion deletes it), and return it with a fresh URL."""

        async def requests() -> AsyncIterator[upload_pb2.UploadRequest]:
            yield upload_pb2.UploadRequest(
                info=upload_pb2.UploadFileInfo(name=name, mime_type=mime_type, size=len(data))
            )
            for start in range(0, len(data), _CHUNK_BYTES):
                yield upload_pb2.UploadRequest(chunk=data[start : start + _CHUNK_BYTES])

        # Within the turn's request: no second request of the user's rate (the bytes still count).
        metadata = (*_metadata(), (WITHIN_REQUEST_KEY, "1"))
        try:
            reply = await self.stub.Upload(requests(), metadata=metadata, timeout=_TIMEOUT_S)
        except aio.AioRpcError as error:
            raise _service_error(error, "image") from error
        attachment = codec.attachment_from_proto(reply.attachment)
        await self.attach(thread_id, [attachment.id])
        url = attachment.preview_url if isinstance(attachment, ImageAttachment) else None
        return GeneratedImage(id=attachment.id, url=str(url or STORED_PREVIEW_URL.format(id=attachment.id)))

    async def read(self, attachment_id: str, max_bytes: int) -> bytes:
        """At most `max_bytes` of the attachment's content."""
        request = upload_pb2.ReadAttachmentRequest(attachment_id=attachment_id, max_bytes=max_bytes)
        chunks: list[bytes] = []
        try:
            async for reply in self.stub.ReadAttachment(request, metadata=_metadata(), timeout=_TIMEOUT_S):
                chunks.append(reply.chunk)
        except aio.AioRpcError as error:
            raise _service_error(error, "attachment") from error
        return b"".join(chunks)[:max_bytes]

    async def delete_thread(self, thread_id: str) -> int:
        request = upload_pb2.DeleteThreadAttachmentsRequest(thread_id=thread_id)
        try:
            reply = await self.stub.DeleteThreadAttachments(request, metadata=_metadata(), timeout=_TIMEOUT_S)
        except aio.AioRpcError as error:
            raise _service_error(error, "thread") from error
        return int(reply.deleted)
