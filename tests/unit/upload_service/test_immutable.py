"""Checked attachments cannot change, and reads never go past min(max_bytes, the recorded size).

Two-phase uploads are PUT to `uploads/…`; AttachToThread copies them to `objects/…` (which no URL
can write), checks the copy, records its size and deletes the upload key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from services.upload_service.records import AttachmentRecord, object_key, record_key
from services.upload_service.storage import ObjectStorage
from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    S3,
    MiB,
    UploadServer,
    expect_error,
    http,
    metadata,
    png_bytes,
)

TEXT = b"quarterly numbers: all good\n"


async def _create(service: UploadServer, name: str, mime_type: str, size: int) -> upload_pb2.Attachment:
    reply = await service.stub.CreateAttachment(
        upload_pb2.CreateAttachmentRequest(name=name, size=size, mime_type=mime_type), metadata=metadata()
    )
    return reply.attachment


async def _attach(service: UploadServer, thread_id: str, *ids: str) -> upload_pb2.AttachToThreadResponse:
    return await service.stub.AttachToThread(
        upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=list(ids)), metadata=metadata()
    )


async def _read(service: UploadServer, attachment_id: str, max_bytes: int = 0) -> bytes:
    call = service.stub.ReadAttachment(
        upload_pb2.ReadAttachmentRequest(attachment_id=attachment_id, max_bytes=max_bytes),
        metadata=metadata(),
    )
    return b"".join([reply.chunk async for reply in call])


async def test_a_second_put_with_a_used_url_changes_nothing(service: UploadServer, s3: S3) -> None:
    created = await _create(service, "notes.txt", "text/plain", len(TEXT))
    url = created.upload_descriptor.url
    await http("PUT", url, TEXT, "text/plain")
    attached = await _attach(service, "thr_imm", created.id)
    assert list(attached.sizes) == [len(TEXT)]
    keys = await s3.keys()
    assert f"objects/acme/{created.id}" in keys
    assert f"uploads/acme/{created.id}" not in keys  # deleted once checked
    record = json.loads(await s3.get(f"records/acme/{created.id}.json"))
    assert record["state"] == "ready" and record["size"] == len(TEXT)
    assert record["object_key"] == f"objects/acme/{created.id}"

    # The URL is still valid: S3 accepts the PUT, of anything, of any size...
    await http("PUT", url, b"\x00\x01 malware " * 100_000, "application/octet-stream")
    # ...but it lands on the upload key, which nothing reads.
    assert await _read(service, created.id) == TEXT
    assert await s3.get(f"objects/acme/{created.id}") == TEXT
    again = await _attach(service, "thr_imm", created.id)  # idempotent, and does not re-check
    assert list(again.sizes) == [len(TEXT)]
    assert await _read(service, created.id) == TEXT
    got = await service.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[created.id]), metadata=metadata()
    )
    assert not got.attachments[0].HasField("upload_descriptor")


async def test_image_previews_come_from_the_checked_object(service: UploadServer) -> None:
    image = png_bytes(4, 4)
    created = await _create(service, "chart.png", "image/png", len(image))
    url = created.upload_descriptor.url
    await http("PUT", url, image, "image/png")
    # While pending the composer previews the client's own upload.
    assert await http("GET", created.image.preview_url) == image
    attached = await _attach(service, "thr_img_imm", created.id)
    preview = attached.attachments[0].image.preview_url
    assert f"/objects/acme/{created.id}?" in preview
    await http("PUT", url, b"<svg onload=alert(1)>", "image/svg+xml")
    assert await http("GET", preview) == image


class _Counting:
    """Wraps the SDK's get_object: records the ranges asked for and the bytes actually read."""

    def __init__(self, storage: ObjectStorage) -> None:
        self.storage = storage
        self.ranges: list[tuple[str, int, int]] = []
        self.read = 0

    @contextmanager
    def installed(self) -> Iterator[_Counting]:
        client = self.storage._client
        original = client.get_object

        def get_object(bucket: str, key: str, offset: int = 0, length: int = 0, **kw: Any) -> Any:
            self.ranges.append((key, offset, length))
            response = original(bucket, key, offset=offset, length=length, **kw)
            read = response.read

            def counted(amt: int | None = None, **options: Any) -> bytes:
                data = read(amt, **options)
                self.read += len(data)
                return bytes(data)

            response.read = counted
            return response

        client.get_object = get_object  # type: ignore[method-assign]
        try:
            yield self
        finally:
            client.get_object = original  # type: ignore[method-assign]


async def _planted(storage: ObjectStorage, *, claimed: int, actual: int) -> str:
    """A ready record claiming `claimed` bytes over an object of `actual` bytes (written directly)."""
    attachment_id = "atc_" + datetime.now(UTC).strftime("%H%M%S%f").ljust(32, "0")
    await storage.put_bytes(object_key("acme", attachment_id), b"x" * actual, content_type="text/plain")
    record = AttachmentRecord(
        id=attachment_id,
        tenant="acme",
        owner="alice",
        name="huge.txt",
        storage_name="huge.txt",
        mime_type="text/plain",
        size=claimed,
        object_key=object_key("acme", attachment_id),
        state="ready",
        created_at=datetime.now(UTC),
    )
    await storage.put_bytes(
        record_key("acme", attachment_id), record.model_dump_json().encode(), content_type="application/json"
    )
    return attachment_id


@pytest.mark.parametrize(
    ("claimed", "actual", "max_bytes", "expected"),
    [
        (5 * 1024**3, 3 * MiB, 1 * MiB, 1 * MiB),  # a "5 GiB" record: max_bytes bounds the read
        (5 * 1024**3, 3 * MiB, 1000, 1000),
        (1000, 3 * MiB, 0, 1000),  # no max_bytes: the recorded size bounds it, not the object
        (1000, 3 * MiB, 2 * MiB, 1000),
    ],
)
async def test_reads_stop_at_min_of_max_bytes_and_recorded_size(
    service: UploadServer, storage: ObjectStorage, claimed: int, actual: int, max_bytes: int, expected: int
) -> None:
    attachment_id = await _planted(storage, claimed=claimed, actual=actual)
    with _Counting(storage).installed() as counting:
        data = await _read(service, attachment_id, max_bytes)
    assert len(data) == expected
    reads = [r for r in counting.ranges if r[0] == object_key("acme", attachment_id)]
    assert reads == [(object_key("acme", attachment_id), 0, expected)]  # one ranged GET
    # Bytes pulled from the store for this read: the records' GETs are small JSON documents.
    assert counting.read <= expected + 4096


async def test_a_store_ignoring_the_range_is_still_cut_at_the_limit(
    service: UploadServer, storage: ObjectStorage
) -> None:
    attachment_id = await _planted(storage, claimed=5 * 1024**3, actual=3 * MiB)
    client = storage._client
    original = client.get_object
    read_bytes = 0

    def ignoring_range(bucket: str, key: str, offset: int = 0, length: int = 0, **kw: Any) -> Any:
        nonlocal read_bytes
        response = original(bucket, key, **kw)  # the whole object, whatever was asked
        read = response.read

        def counted(amt: int | None = None, **options: Any) -> bytes:
            nonlocal read_bytes
            data = read(amt, **options)
            read_bytes += len(data)
            return bytes(data)

        response.read = counted
        return response

    client.get_object = ignoring_range  # type: ignore[method-assign]
    try:
        data = await _read(service, attachment_id, 100_000)
    finally:
        client.get_object = original  # type: ignore[method-assign]
    assert len(data) == 100_000
    assert read_bytes <= 100_000 + 4096  # plus the record


async def test_an_upload_swapped_for_a_larger_one_is_refused(service: UploadServer, s3: S3) -> None:
    created = await _create(service, "swap.txt", "text/plain", len(TEXT))
    await http("PUT", created.upload_descriptor.url, TEXT * 1000, "text/plain")
    details = await expect_error(
        _attach(service, "thr_swap", created.id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert f"{len(TEXT)} were declared" in details
    keys = await s3.keys()
    assert f"objects/acme/{created.id}" not in keys and f"uploads/acme/{created.id}" not in keys
