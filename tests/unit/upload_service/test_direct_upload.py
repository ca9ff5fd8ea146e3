"""`Upload` (ChatKit's direct strategy): streaming into S3, ChatKit-valid answers, bounded memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tracemalloc
from collections.abc import Iterator

import grpc
from chatkit.types import FileAttachment, ImageAttachment

from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    BUCKET,
    PDF,
    S3,
    MiB,
    UploadServer,
    as_chatkit,
    expect_error,
    http,
    metadata,
    png_bytes,
)


def pdf_chunks(count: int, seed: bytes) -> Iterator[bytes]:
    """`count` distinct 1 MiB chunks of a "PDF" (a real header, then noise), made one at a time."""
    block = os.urandom(MiB)
    for index in range(count):
        prefix = PDF[:9] if index == 0 else b""
        label = prefix + seed + index.to_bytes(4, "big")
        yield label + block[len(label) :]


async def test_large_upload_is_stored_intact_and_answers_a_chatkit_file(
    service: UploadServer, s3: S3
) -> None:
    digest = hashlib.sha256()
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for chunk in pdf_chunks(20, b"big"):
            digest.update(chunk)
            sent += len(chunk)
            yield chunk

    reply = await service.upload("report.pdf", "application/pdf", chunks(), size=20 * MiB)

    assert reply.size == sent == 20 * MiB
    assert reply.sha256 == digest.hexdigest()
    attachment = as_chatkit(reply.attachment)
    assert isinstance(attachment, FileAttachment)
    assert attachment.name == "report.pdf"
    assert attachment.mime_type == "application/pdf"
    assert attachment.upload_descriptor is None and attachment.thread_id is None
    assert attachment.id.startswith("atc_")
    stored = await s3.get(f"objects/acme/{attachment.id}")
    assert hashlib.sha256(stored).hexdigest() == digest.hexdigest()
    record = json.loads(await s3.get(f"records/acme/{attachment.id}.json"))
    assert record["state"] == "ready" and record["size"] == 20 * MiB and record["owner"] == "alice"
    assert record["sha256"] == digest.hexdigest()


async def test_memory_stays_bounded_during_a_64_mib_upload(service: UploadServer, s3: S3) -> None:
    """tracemalloc's peak covers every Python allocation in this process, in every thread, during
    the upload: the servicer's buffers, the minio SDK's part bodies and urllib3, and the test client
    (its chunks and the request messages it serialises). The gRPC server runs in this process, so
    the peak bounds what the service holds. Buffers inside grpc core and the kernel are not Python
    objects and are not counted; they are bounded by HTTP/2 flow control, not by the file size. A
    service that held the file would peak above 64 MiB; this one holds at most two 8 MiB parts.
    """
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        reply = await service.upload("big.pdf", "application/pdf", pdf_chunks(64, b"mem"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reply.size == 64 * MiB
    assert peak - before < 32 * MiB, f"peak {(peak - before) / MiB:.1f} MiB"
    info = await asyncio.to_thread(s3.client.stat_object, BUCKET, f"objects/acme/{reply.attachment.id}")
    assert info.size == 64 * MiB


async def test_image_upload_has_a_preview_url_that_serves_the_bytes(service: UploadServer) -> None:
    image = png_bytes()
    reply = await service.upload("photo.png", "image/png", [image[:10], image[10:]])

    attachment = as_chatkit(reply.attachment)
    assert isinstance(attachment, ImageAttachment)
    assert attachment.name == "photo.png" and attachment.mime_type == "image/png"
    assert await http("GET", str(attachment.preview_url)) == image
    assert reply.sha256 == hashlib.sha256(image).hexdigest() and reply.size == len(image)


async def test_small_text_files_and_declared_sizes(service: UploadServer) -> None:
    text = "héllo wörld\n".encode()
    reply = await service.upload("notes.md", "text/markdown; charset=utf-8", [text], size=len(text))
    attachment = as_chatkit(reply.attachment)
    assert isinstance(attachment, FileAttachment)
    assert attachment.mime_type == "text/markdown"
    # A multi-byte character split across chunks is still UTF-8.
    split = await service.upload("split.txt", "text/plain", [text[:1], text[1:2], text[2:]])
    assert split.size == len(text)


async def test_read_attachment_streams_the_bytes(service: UploadServer) -> None:
    chunks = list(pdf_chunks(3, b"read"))
    content = b"".join(chunks)
    reply = await service.upload("r.pdf", "application/pdf", chunks)

    received = [
        message.chunk
        async for message in service.stub.ReadAttachment(
            upload_pb2.ReadAttachmentRequest(attachment_id=reply.attachment.id), metadata=metadata()
        )
    ]
    assert b"".join(received) == content
    assert all(len(chunk) <= MiB for chunk in received)

    head = [
        message.chunk
        async for message in service.stub.ReadAttachment(
            upload_pb2.ReadAttachmentRequest(attachment_id=reply.attachment.id, max_bytes=10),
            metadata=metadata(),
        )
    ]
    assert b"".join(head) == content[:10]

    negative = service.stub.ReadAttachment(
        upload_pb2.ReadAttachmentRequest(attachment_id=reply.attachment.id, max_bytes=-1), metadata=metadata()
    )
    await expect_error(negative.read(), grpc.StatusCode.INVALID_ARGUMENT)


async def test_chunks_up_to_the_protos_4_mib_are_accepted(service: UploadServer) -> None:
    chunk = PDF[:9] + os.urandom(4 * MiB - 9)
    reply = await service.upload("four.pdf", "application/pdf", [chunk, chunk[:100]])
    assert reply.size == 4 * MiB + 100
