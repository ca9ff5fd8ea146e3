"""Two-phase uploads: CreateAttachment, a plain HTTP PUT to the presigned URL, AttachToThread."""

from __future__ import annotations

import json

import grpc
from chatkit.types import FileAttachment, ImageAttachment

from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    BUCKET,
    S3,
    UploadServer,
    as_chatkit,
    expect_error,
    http,
    metadata,
    png_bytes,
)

TEXT = b"name,qty\nwidget,3\n"


async def _create(
    service: UploadServer, name: str, mime_type: str, size: int
) -> upload_pb2.CreateAttachmentResponse:
    return await service.stub.CreateAttachment(
        upload_pb2.CreateAttachmentRequest(name=name, size=size, mime_type=mime_type), metadata=metadata()
    )


async def _put(reply: upload_pb2.CreateAttachmentResponse, body: bytes) -> None:
    descriptor = reply.attachment.upload_descriptor
    assert descriptor.method == "PUT"
    await http("PUT", descriptor.url, body, descriptor.headers["Content-Type"])


async def _attach(service: UploadServer, thread_id: str, *ids: str) -> upload_pb2.AttachToThreadResponse:
    return await service.stub.AttachToThread(
        upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=list(ids)), metadata=metadata()
    )


async def _exists(s3: S3, key: str) -> bool:
    return key in await s3.keys()


async def test_create_put_attach(service: UploadServer, s3: S3) -> None:
    created = await _create(service, "stock.csv", "text/csv", len(TEXT))
    pending = as_chatkit(created.attachment)
    assert isinstance(pending, FileAttachment)
    assert pending.upload_descriptor is not None
    assert pending.upload_descriptor.method == "PUT"
    assert pending.upload_descriptor.headers == {"Content-Type": "text/csv"}
    assert pending.thread_id is None
    record = json.loads(await s3.get(f"records/acme/{pending.id}.json"))
    assert record["state"] == "pending" and record["size"] == len(TEXT)

    await _put(created, TEXT)
    attached = await _attach(service, "thr_1", pending.id)

    (ready,) = [as_chatkit(message) for message in attached.attachments]
    assert list(attached.sizes) == [len(TEXT)]
    assert ready.id == pending.id and ready.thread_id == "thr_1" and ready.upload_descriptor is None
    assert json.loads(await s3.get(f"records/acme/{pending.id}.json"))["state"] == "ready"

    # Idempotent for the same thread; refused for another one.
    again = await _attach(service, "thr_1", pending.id)
    assert again.attachments[0].thread_id == "thr_1"
    details = await expect_error(_attach(service, "thr_2", pending.id), grpc.StatusCode.FAILED_PRECONDITION)
    assert "another thread" in details

    got = await service.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[pending.id]), metadata=metadata()
    )
    fetched = as_chatkit(got.attachments[0])
    assert fetched.thread_id == "thr_1" and fetched.upload_descriptor is None


async def test_image_two_phase_has_preview_and_upload_urls(service: UploadServer) -> None:
    image = png_bytes(3, 3)
    created = await _create(service, "diagram.png", "image/png", len(image))
    pending = as_chatkit(created.attachment)
    assert isinstance(pending, ImageAttachment)
    assert pending.upload_descriptor is not None
    await _put(created, image)
    attached = await _attach(service, "thr_img", pending.id)
    ready = as_chatkit(attached.attachments[0])
    assert isinstance(ready, ImageAttachment) and ready.upload_descriptor is None
    assert await http("GET", str(ready.preview_url)) == image


async def test_attaching_before_the_upload_is_refused(service: UploadServer) -> None:
    created = await _create(service, "later.txt", "text/plain", 5)
    details = await expect_error(
        _attach(service, "thr_x", created.attachment.id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "not been uploaded" in details
    read = service.stub.ReadAttachment(
        upload_pb2.ReadAttachmentRequest(attachment_id=created.attachment.id), metadata=metadata()
    )
    await expect_error(read.read(), grpc.StatusCode.FAILED_PRECONDITION)


async def test_size_mismatch_deletes_the_object(service: UploadServer, s3: S3) -> None:
    created = await _create(service, "short.txt", "text/plain", 100)
    await _put(created, b"only fifty bytes".ljust(50, b"."))
    key = f"uploads/acme/{created.attachment.id}"
    assert await _exists(s3, key)
    details = await expect_error(
        _attach(service, "thr_s", created.attachment.id), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "50 bytes" in details and "100" in details
    assert not await _exists(s3, key)
    assert not await _exists(s3, f"objects/acme/{created.attachment.id}")


async def test_type_mismatch_deletes_the_object(service: UploadServer, s3: S3) -> None:
    text = b"this is not a png at all\n"
    created = await _create(service, "fake.png", "image/png", len(text))
    await _put(created, text)
    key = f"uploads/acme/{created.attachment.id}"
    await expect_error(_attach(service, "thr_t", created.attachment.id), grpc.StatusCode.FAILED_PRECONDITION)
    assert not await _exists(s3, key)
    assert not await _exists(s3, f"objects/acme/{created.attachment.id}")
    # The record stays pending: a fresh upload URL lets the client try again.
    got = await service.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[created.attachment.id]), metadata=metadata()
    )
    assert got.attachments[0].HasField("upload_descriptor")


async def test_attach_is_all_or_nothing(service: UploadServer, s3: S3) -> None:
    good = await _create(service, "good.txt", "text/plain", len(TEXT))
    await _put(good, TEXT)
    missing = await _create(service, "missing.txt", "text/plain", len(TEXT))
    await expect_error(
        _attach(service, "thr_all", good.attachment.id, missing.attachment.id),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    record = json.loads(await s3.get(f"records/acme/{good.attachment.id}.json"))
    assert record["state"] == "pending" and record["thread_id"] is None
    # An unknown id among known ones: NOT_FOUND, nothing bound either.
    await expect_error(
        _attach(service, "thr_all", good.attachment.id, "atc_" + "0" * 32), grpc.StatusCode.NOT_FOUND
    )
    assert json.loads(await s3.get(f"records/acme/{good.attachment.id}.json"))["thread_id"] is None


async def test_bad_attach_requests(service: UploadServer) -> None:
    created = await _create(service, "a.txt", "text/plain", 3)
    await expect_error(_attach(service, "", created.attachment.id), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(_attach(service, "thr 1", created.attachment.id), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(_attach(service, "thr_1", "not-an-id"), grpc.StatusCode.NOT_FOUND)
    await expect_error(_attach(service, "thr_1", ""), grpc.StatusCode.INVALID_ARGUMENT)
    empty = await _attach(service, "thr_1")
    assert not empty.attachments


async def test_presigned_urls_use_the_configured_ttl(service: UploadServer) -> None:
    created = await _create(service, "ttl.png", "image/png", 10)
    for url in (created.attachment.upload_descriptor.url, created.attachment.image.preview_url):
        assert "X-Amz-Expires=120" in url
        # Pending: both URLs are of the upload key; the checked object's key is never writable.
        assert f"/{BUCKET}/uploads/acme/{created.attachment.id}?" in url
    assert "response-content-type=image%2Fpng" in created.attachment.image.preview_url
