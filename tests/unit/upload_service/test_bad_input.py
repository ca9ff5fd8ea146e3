"""Refused uploads: a clear status, and nothing left in object storage (no object, part or record)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable

import grpc
import pytest
from chatkit.types import FileAttachment

from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    MAX_BYTES,
    PDF,
    S3,
    SMALL_MAX_BYTES,
    MiB,
    UploadServer,
    as_chatkit,
    expect_error,
    metadata,
    png_bytes,
)

JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


async def _refused(
    service: UploadServer,
    s3: S3,
    code: grpc.StatusCode,
    name: str,
    mime_type: str,
    chunks: Iterable[bytes],
    *,
    size: int = 0,
) -> str:
    before = await s3.snapshot()
    details = await expect_error(service.upload(name, mime_type, chunks, size=size), code)
    assert await s3.snapshot() == before
    return details


@pytest.mark.parametrize(
    ("mime_type", "content", "why"),
    [
        ("image/png", b"just some text, not an image\n", "does not match"),
        ("image/jpeg", PDF, "does not match"),
        ("application/pdf", png_bytes(), "does not match"),
        ("text/plain", png_bytes(), "binary"),
        ("text/csv", b"a,b\n\xff\xfe,1\n", "not UTF-8"),
        ("application/json", b"hello", "not JSON"),
    ],
)
async def test_content_that_contradicts_its_type_is_refused(
    service: UploadServer, s3: S3, mime_type: str, content: bytes, why: str
) -> None:
    details = await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "f.bin", mime_type, [content])
    assert why in details


async def test_mismatch_found_after_the_first_chunks_still_leaves_nothing(
    service: UploadServer, s3: S3
) -> None:
    # The content check needs 8 KiB: it spans several small chunks here.
    chunks = [b"plain text " * 100] * 10
    await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "x.png", "image/png", chunks)


async def test_disallowed_and_malformed_types(service: UploadServer, s3: S3) -> None:
    for mime_type in ("application/x-msdownload", "text/html", "", "not a type", "image/"):
        details = await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "a", mime_type, [b"MZ\x90"])
        assert "mime_type" in details or "not accepted" in details


async def test_empty_files_are_refused(service: UploadServer, s3: S3) -> None:
    assert "empty" in await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "e.txt", "text/plain", [])
    await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "e.txt", "text/plain", [b"", b""])


async def test_declared_size_must_match(service: UploadServer, s3: S3) -> None:
    details = await _refused(
        service, s3, grpc.StatusCode.INVALID_ARGUMENT, "n.txt", "text/plain", [b"12345"], size=10
    )
    assert "declared" in details
    await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "n.txt", "text/plain", [b"12345"], size=3)
    await _refused(service, s3, grpc.StatusCode.INVALID_ARGUMENT, "n.txt", "text/plain", [b"1"], size=-1)


async def test_too_large_when_declared(service: UploadServer, s3: S3) -> None:
    details = await _refused(
        service,
        s3,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "big.pdf",
        "application/pdf",
        [PDF],
        size=MAX_BYTES + 1,
    )
    assert "too large" in details


async def test_too_large_while_streaming_aborts_the_multipart_upload(
    small_service: UploadServer, s3: S3
) -> None:
    """12 MiB against a 10 MiB limit: one 8 MiB part is already stored when the limit is crossed."""
    block = os.urandom(MiB)
    chunks = [PDF[:9] + block[9:]] + [block] * 11
    details = await _refused(
        small_service, s3, grpc.StatusCode.RESOURCE_EXHAUSTED, "big.pdf", "application/pdf", chunks
    )
    assert "too large" in details and str(SMALL_MAX_BYTES) in details


async def test_the_first_message_must_be_info(service: UploadServer, s3: S3) -> None:
    before = await s3.snapshot()
    await expect_error(
        service.upload("a.txt", "text/plain", [b"hello"], info=False), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(service.upload("", "", [], info=False), grpc.StatusCode.INVALID_ARGUMENT)

    async def info_twice() -> AsyncIterator[upload_pb2.UploadRequest]:
        info = upload_pb2.UploadFileInfo(name="a.txt", mime_type="text/plain")
        yield upload_pb2.UploadRequest(info=info)
        yield upload_pb2.UploadRequest(chunk=b"hello")
        yield upload_pb2.UploadRequest(info=info)

    await expect_error(
        service.stub.Upload(info_twice(), metadata=metadata()), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await s3.snapshot() == before


async def test_client_cancelling_mid_upload_leaves_nothing(service: UploadServer, s3: S3) -> None:
    before = await s3.snapshot()
    block = os.urandom(MiB)
    call = service.stub.Upload(metadata=metadata())
    await call.write(
        upload_pb2.UploadRequest(info=upload_pb2.UploadFileInfo(name="c.pdf", mime_type="application/pdf"))
    )
    await call.write(upload_pb2.UploadRequest(chunk=PDF[:9] + block[9:]))
    for _ in range(10):  # past the first 8 MiB part
        await call.write(upload_pb2.UploadRequest(chunk=block))
    for _ in range(50):  # wait until the first part is in a multipart upload
        if (await s3.multipart_uploads()) - before[1]:
            break
        await asyncio.sleep(0.05)
    assert (await s3.multipart_uploads()) - before[1], "no multipart upload was started"
    call.cancel()
    for _ in range(50):
        if await s3.snapshot() == before:
            break
        await asyncio.sleep(0.1)
    assert await s3.snapshot() == before


HOSTILE_NAMES = [
    "../../etc/passwd",
    "..",
    "line\nbreak.txt",
    "C:\\Windows\\system32\\evil.txt",
    "\u202egnp.txt",
    " ",
    "x" * 10_000 + ".txt",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_hostile_names_never_reach_keys_and_are_shown_as_given(
    service: UploadServer, s3: S3, name: str
) -> None:
    before, _ = await s3.snapshot()
    reply = await service.upload(name, "text/plain", [b"hello"])
    attachment = as_chatkit(reply.attachment)
    assert isinstance(attachment, FileAttachment)
    if len(name) <= 255 and name.strip():
        assert attachment.name == name
    elif name.strip():
        assert len(attachment.name) == 255
        assert attachment.name.endswith(".txt") and name.startswith(attachment.name[:-4])
    else:
        assert attachment.name == "file"
    new_keys = (await s3.keys()) - before
    assert new_keys == {f"objects/acme/{attachment.id}", f"records/acme/{attachment.id}.json"}
    record = json.loads(await s3.get(f"records/acme/{attachment.id}.json"))
    stored = record["storage_name"]
    assert stored and len(stored.encode()) <= 255
    assert not any(ch in stored for ch in "/\\\n\r\x00\u202e") and not stored.startswith(".")


async def test_a_nul_in_the_name_is_refused(service: UploadServer, s3: S3) -> None:
    details = await _refused(
        service, s3, grpc.StatusCode.INVALID_ARGUMENT, "a\x00.txt", "text/plain", [b"hi"]
    )
    assert "NUL" in details
    before = await s3.snapshot()
    await expect_error(
        service.stub.CreateAttachment(
            upload_pb2.CreateAttachmentRequest(name="a\x00b", size=2, mime_type="text/plain"),
            metadata=metadata(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await s3.snapshot() == before


async def test_create_attachment_validates_before_writing(service: UploadServer, s3: S3) -> None:
    before = await s3.snapshot()
    cases = [
        (upload_pb2.CreateAttachmentRequest(name="a.png", size=0, mime_type="image/png"), "INVALID_ARGUMENT"),
        (
            upload_pb2.CreateAttachmentRequest(name="a.png", size=-5, mime_type="image/png"),
            "INVALID_ARGUMENT",
        ),
        (
            upload_pb2.CreateAttachmentRequest(name="a.exe", size=5, mime_type="application/x-msdownload"),
            "INVALID_ARGUMENT",
        ),
        (
            upload_pb2.CreateAttachmentRequest(name="a.png", size=MAX_BYTES + 1, mime_type="image/png"),
            "RESOURCE_EXHAUSTED",
        ),
    ]
    for request, code in cases:
        await expect_error(service.stub.CreateAttachment(request, metadata=metadata()), grpc.StatusCode[code])
    assert await s3.snapshot() == before


async def test_a_promised_end_decides_what_is_complete(service: UploadServer, s3: S3) -> None:
    """A client that sets `ends_with_marker` (the edge does) gets a file stored only with a right
    `end`: a stream that stops without it was cut short, whenever the cancellation is noticed."""
    before = await s3.snapshot()
    info = upload_pb2.UploadFileInfo(name="n.txt", mime_type="text/plain", ends_with_marker=True)

    async def messages(end: int | None) -> AsyncIterator[upload_pb2.UploadRequest]:
        yield upload_pb2.UploadRequest(info=info)
        yield upload_pb2.UploadRequest(chunk=b"hello ")
        yield upload_pb2.UploadRequest(chunk=b"world")
        if end is not None:
            yield upload_pb2.UploadRequest(end=upload_pb2.UploadEnd(size=end))

    await expect_error(
        service.stub.Upload(messages(None), metadata=metadata(), timeout=30), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(
        service.stub.Upload(messages(5), metadata=metadata(), timeout=30), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await s3.snapshot() == before
    reply = await service.stub.Upload(messages(11), metadata=metadata(), timeout=30)
    assert reply.size == 11
