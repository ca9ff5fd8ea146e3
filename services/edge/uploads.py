"""`POST /chatkit/api/upload`: ChatKit's direct upload strategy, streamed into the upload service.

The multipart field `file` is read chunk by chunk and each chunk becomes one message of the
client-streaming `UploadService.Upload` call, whose writes wait for HTTP/2 flow control: a slow
object store slows the browser down instead of filling memory. Neither the edge nor the upload
service ever holds the whole file. The answer is the ChatKit Attachment JSON the UI expects.

The size limit is enforced while streaming (and up front from Content-Length), so an oversized upload
is cut off as soon as it crosses the limit: 413, and the upload service leaves nothing behind.

Slow clients. Each 1 MiB chunk (or the rest of the file) must arrive within
`SWITCHBOARD_UPLOAD_CHUNK_TIMEOUT_S`, a minimum rate (1 MiB per 60 s by default), not just an idle
timeout that a client trickling a byte at a time would pass: a slower upload is cut with 408
(DEADLINE_EXCEEDED: the client was too slow, not the server, hence no 504) and its gRPC call is
cancelled, which gives its upload slots back at once.

Refusals: RESOURCE_EXHAUSTED with a retry-after hint (trailing metadata `retry-after`: too many
uploads at once, the user's uploaded bytes of the day, the tenant's stored bytes, the request rate)
is 429 with that Retry-After and the message naming the limit; without one (a file over the size
limit) it stays 413.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import unicodedata
from typing import Final

import grpc
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from grpc import aio

from services.common import codec
from services.common.uploads import UPLOAD_ACCEPTED_KEY
from services.edge.sse import encode_model
from switchboard.v1 import upload_pb2, upload_pb2_grpc

log = logging.getLogger("switchboard.edge")

FILE_FIELD: Final = "file"
CHUNK_BYTES: Final = 1024 * 1024
# Multipart framing and other small fields around the file.
_ENVELOPE_BYTES: Final = 64 * 1024
_MAX_NAME_CHARS: Final = 1024


class UploadRefused(Exception):
    """The request cannot become an upload; carries the gRPC code and message for the JSON error."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _too_slow(timeout_s: float) -> UploadRefused:
    return UploadRefused(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"the upload is too slow: less than {CHUNK_BYTES} bytes arrived in {timeout_s:g} s",
        408,
    )


async def _next_chunk(part: BodyPartReader, timeout_s: float) -> bytes:
    """The next CHUNK_BYTES of the file (fewer only at its end), all within `timeout_s`."""

    async def collect() -> bytes:
        pieces: list[bytes] = []
        size = 0
        while size < CHUNK_BYTES:
            piece = await part.read_chunk(CHUNK_BYTES - size)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise _too_slow(timeout_s) from None


def _too_large(limit: int) -> UploadRefused:
    return UploadRefused(
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"the file exceeds the limit of {limit} bytes", 413
    )


async def _file_part(request: web.Request) -> BodyPartReader:
    """The `file` part of a multipart/form-data body; other small fields are skipped."""
    if not request.content_type.startswith("multipart/form-data"):
        raise UploadRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "send the file as multipart/form-data (field 'file')"
        )
    try:
        reader: MultipartReader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise UploadRefused(
                    grpc.StatusCode.INVALID_ARGUMENT, "nested multipart bodies are not supported"
                )
            if part.name == FILE_FIELD:
                return part
            await part.release()
    except (ValueError, AssertionError, HttpProcessingError) as error:
        # HttpProcessingError: a part's headers do not parse (control characters in a file name...).
        raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, _malformed(error)) from None
    raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "the multipart body has no 'file' field")


def _malformed(error: Exception) -> str:
    detail = getattr(error, "message", None) or str(error)
    detail = " ".join(str(detail).split())[:200].encode("ascii", "backslashreplace").decode()
    return f"malformed multipart body: {detail}" if detail else "malformed multipart body"


def _file_name(part: BodyPartReader) -> str:
    """The part's file name (cut to `_MAX_NAME_CHARS`), refused (400) when empty or holding control
    characters (NUL, newlines, escapes) or lone surrogates, which cannot travel as UTF-8."""
    try:
        raw = part.filename or ""
    except (ValueError, UnicodeError):  # an undecodable RFC 2231/5987 encoded name
        raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "the file name is not valid text") from None
    name = raw.strip()[:_MAX_NAME_CHARS]
    if not name:
        raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, "the 'file' field has no file name")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in raw):
        raise UploadRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "the file name must not contain control characters"
        )
    return name


def _declared_type(part: BodyPartReader, name: str) -> str:
    declared = (part.headers.get(hdrs.CONTENT_TYPE) or "").split(";")[0].strip().lower()
    if declared and declared != "application/octet-stream":
        return declared
    guessed, _ = mimetypes.guess_type(name)
    return guessed or declared or "application/octet-stream"


ACCEPT_WAIT_S: Final = 5.0
"""How long the edge waits for the upload service to accept `info` before it sends chunks anyway
(an upload service that does not announce acceptance, e.g. an older one during a rollout)."""


async def _info_accepted(
    call: aio.StreamUnaryCall[upload_pb2.UploadRequest, upload_pb2.UploadResponse],
) -> None:
    """Wait until the upload service accepted `info` (UPLOAD_ACCEPTED_KEY), so that no chunk races
    its refusal: a chunk written while the service aborts can end the call with a transport-level
    INTERNAL instead of the refusal's status. A refused call raises its AioRpcError here."""
    waiting = asyncio.ensure_future(call.initial_metadata())
    done, _ = await asyncio.wait({waiting}, timeout=ACCEPT_WAIT_S)
    if not done:
        return  # not announced in time: send the chunks; the call's status still decides
    metadata = waiting.result()
    if metadata is None or metadata.get(UPLOAD_ACCEPTED_KEY) is None:
        await call  # refused: raises the call's AioRpcError with the refusal's status


async def stream_upload(
    request: web.Request,
    stub: upload_pb2_grpc.UploadServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    *,
    max_bytes: int,
    timeout_s: float,
    chunk_timeout_s: float,
) -> bytes:
    """Stream the request's file into `UploadService.Upload`; return the Attachment JSON.

    Raises `UploadRefused` for a request that is not an acceptable upload and
    `grpc.aio.AioRpcError` when the upload service refuses or fails.
    """
    if request.content_length is not None and request.content_length > max_bytes + _ENVELOPE_BYTES:
        raise _too_large(max_bytes)
    part = await _file_part(request)
    name = _file_name(part)
    info = upload_pb2.UploadFileInfo(name=name, mime_type=_declared_type(part, name), ends_with_marker=True)
    call: aio.StreamUnaryCall[upload_pb2.UploadRequest, upload_pb2.UploadResponse] = stub.Upload(
        metadata=metadata, timeout=timeout_s
    )
    try:
        try:
            await call.write(upload_pb2.UploadRequest(info=info))
            await _info_accepted(call)
            received = 0
            while chunk := await _next_chunk(part, chunk_timeout_s):
                received += len(chunk)
                if received > max_bytes:
                    raise _too_large(max_bytes)
                await call.write(upload_pb2.UploadRequest(chunk=chunk))
            await call.write(upload_pb2.UploadRequest(end=upload_pb2.UploadEnd(size=received)))
            await call.done_writing()
        except (HttpProcessingError, ValueError) as error:  # the body broke off or is malformed
            raise UploadRefused(grpc.StatusCode.INVALID_ARGUMENT, _malformed(error)) from None
        except (aio.AioRpcError, asyncio.InvalidStateError) as write_error:
            # A write that races with the service's refusal (it aborts after the first chunk, while
            # more are in flight) can fail with a transport-level INTERNAL, or find the call already
            # over (a refusal of `info` before the first chunk was read: InvalidStateError); the
            # call's own status says why it ended (e.g. INVALID_ARGUMENT), and that is what the
            # client must see.
            if isinstance(write_error, asyncio.InvalidStateError) or (
                write_error.code() == grpc.StatusCode.INTERNAL
            ):
                await call  # raises the call's final AioRpcError
            raise
        reply = await call
    finally:
        call.cancel()  # a no-op after success; otherwise the upload service aborts and cleans up
    return encode_model(codec.attachment_from_proto(reply.attachment))
