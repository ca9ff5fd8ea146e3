"""Ownership (tenant and user), deletion, authentication."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from services.upload_service.records import AttachmentRecord, object_key, record_key
from services.upload_service.storage import ObjectStorage
from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    S3,
    UploadServer,
    expect_error,
    http,
    metadata,
    png_bytes,
)

TEXT = b"owned by alice\n"
OUTSIDERS = [("acme", "bob"), ("globex", "alice")]


async def _upload(service: UploadServer, tenant: str = "acme", user: str = "alice") -> str:
    reply = await service.upload("mine.txt", "text/plain", [TEXT], md=metadata(tenant, user))
    return reply.attachment.id


async def _attach(service: UploadServer, thread_id: str, attachment_id: str, tenant: str, user: str) -> None:
    await service.stub.AttachToThread(
        upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=[attachment_id]),
        metadata=metadata(tenant, user),
    )


@pytest.mark.parametrize(("tenant", "user"), OUTSIDERS)
async def test_other_users_and_tenants_get_not_found(
    service: UploadServer, s3: S3, tenant: str, user: str
) -> None:
    attachment_id = await _upload(service)
    before = await s3.snapshot()
    record_before = await s3.get(f"records/acme/{attachment_id}.json")
    md = metadata(tenant, user)
    stub = service.stub

    await expect_error(
        stub.GetAttachments(upload_pb2.GetAttachmentsRequest(attachment_ids=[attachment_id]), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        stub.AttachToThread(
            upload_pb2.AttachToThreadRequest(thread_id="thr_evil", attachment_ids=[attachment_id]),
            metadata=md,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    read = stub.ReadAttachment(upload_pb2.ReadAttachmentRequest(attachment_id=attachment_id), metadata=md)
    await expect_error(read.read(), grpc.StatusCode.NOT_FOUND)
    await expect_error(
        stub.DeleteAttachment(upload_pb2.DeleteAttachmentRequest(attachment_id=attachment_id), metadata=md),
        grpc.StatusCode.NOT_FOUND,
    )
    deleted = await stub.DeleteThreadAttachments(
        upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_evil"), metadata=md
    )
    assert deleted.deleted == 0

    assert await s3.snapshot() == before
    assert await s3.get(f"records/acme/{attachment_id}.json") == record_before
    got = await stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[attachment_id]), metadata=metadata()
    )
    assert got.attachments[0].id == attachment_id and not got.attachments[0].HasField("thread_id")


async def test_unknown_and_malformed_ids_are_not_found(service: UploadServer) -> None:
    for attachment_id in ("atc_" + "f" * 32, "atc_../../records", "x" * 300):
        await expect_error(
            service.stub.GetAttachments(
                upload_pb2.GetAttachmentsRequest(attachment_ids=[attachment_id]), metadata=metadata()
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    await expect_error(
        service.stub.DeleteAttachment(
            upload_pb2.DeleteAttachmentRequest(attachment_id=""), metadata=metadata()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_delete_removes_object_and_record(service: UploadServer, s3: S3) -> None:
    attachment_id = await _upload(service)
    keys = {f"objects/acme/{attachment_id}", f"records/acme/{attachment_id}.json"}
    assert keys <= await s3.keys()

    await service.stub.DeleteAttachment(
        upload_pb2.DeleteAttachmentRequest(attachment_id=attachment_id), metadata=metadata()
    )

    assert not keys & await s3.keys()
    await expect_error(
        service.stub.DeleteAttachment(
            upload_pb2.DeleteAttachmentRequest(attachment_id=attachment_id), metadata=metadata()
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_delete_pending_attachment(service: UploadServer, s3: S3) -> None:
    created = await service.stub.CreateAttachment(
        upload_pb2.CreateAttachmentRequest(name="p.txt", size=3, mime_type="text/plain"), metadata=metadata()
    )
    attachment_id = created.attachment.id
    await service.stub.DeleteAttachment(
        upload_pb2.DeleteAttachmentRequest(attachment_id=attachment_id), metadata=metadata()
    )
    assert f"records/acme/{attachment_id}.json" not in await s3.keys()


async def test_delete_thread_attachments_removes_only_the_callers_in_that_thread(
    service: UploadServer, s3: S3
) -> None:
    first, second, other_thread = [await _upload(service) for _ in range(3)]
    bobs = await _upload(service, user="bob")
    for attachment_id in (first, second):
        await _attach(service, "thr_gone", attachment_id, "acme", "alice")
    await _attach(service, "thr_kept", other_thread, "acme", "alice")
    await _attach(service, "thr_gone", bobs, "acme", "bob")

    reply = await service.stub.DeleteThreadAttachments(
        upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_gone"), metadata=metadata()
    )

    assert reply.deleted == 2
    keys = await s3.keys()
    for gone in (first, second):
        assert f"objects/acme/{gone}" not in keys and f"records/acme/{gone}.json" not in keys
    for kept in (other_thread, bobs):
        assert f"objects/acme/{kept}" in keys and f"records/acme/{kept}.json" in keys
    assert json.loads(await s3.get(f"records/acme/{bobs}.json"))["thread_id"] == "thr_gone"
    await expect_error(
        service.stub.DeleteThreadAttachments(
            upload_pb2.DeleteThreadAttachmentsRequest(thread_id=""), metadata=metadata()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_preview_urls_are_fresh_on_every_answer(service: UploadServer) -> None:
    image = png_bytes()
    reply = await service.upload("p.png", "image/png", [image])
    got = await service.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[reply.attachment.id]), metadata=metadata()
    )
    assert got.attachments[0].image.preview_url
    assert await http("GET", got.attachments[0].image.preview_url) == image


async def test_calls_without_a_valid_token_are_unauthenticated(service: UploadServer, s3: S3) -> None:
    before = await s3.snapshot()
    stub = service.stub
    for md in ((), (("authorization", "Bearer not-a-jwt"),)):
        await expect_error(
            stub.CreateAttachment(
                upload_pb2.CreateAttachmentRequest(name="a.txt", size=1, mime_type="text/plain"), metadata=md
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        await expect_error(
            service.upload("a.txt", "text/plain", [b"x"], md=md), grpc.StatusCode.UNAUTHENTICATED
        )
        read = stub.ReadAttachment(
            upload_pb2.ReadAttachmentRequest(attachment_id="atc_" + "0" * 32), metadata=md
        )
        await expect_error(read.read(), grpc.StatusCode.UNAUTHENTICATED)
        await expect_error(
            stub.DeleteThreadAttachments(
                upload_pb2.DeleteThreadAttachmentsRequest(thread_id="t"), metadata=md
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert await s3.snapshot() == before


async def test_deleting_a_thread_costs_the_same_with_2000_unrelated_records(
    service: UploadServer, storage: ObjectStorage
) -> None:
    """DeleteThreadAttachments reads the thread's index, not every record of the tenant."""
    tenant = "bigco"
    md = metadata(tenant, "alice")
    gate = asyncio.Semaphore(32)

    async def planted(number: int) -> None:
        attachment_id = f"atc_{number:032x}"
        record = AttachmentRecord(
            id=attachment_id,
            tenant=tenant,
            owner="alice",
            name="old.txt",
            storage_name="old.txt",
            mime_type="text/plain",
            size=5,
            object_key=object_key(tenant, attachment_id),
            state="ready",
            thread_id=f"thr_old_{number % 50}",
            created_at=datetime.now(UTC),
        )
        async with gate:
            await storage.put_bytes(
                record_key(tenant, attachment_id),
                record.model_dump_json().encode(),
                content_type="application/json",
            )

    await asyncio.gather(*(planted(number) for number in range(2000)))
    mine = [await _upload(service, tenant=tenant) for _ in range(2)]
    for attachment_id in mine:
        await _attach(service, "thr_small", attachment_id, tenant, "alice")

    calls: Counter[str] = Counter()
    client = storage._client
    originals = {name: getattr(client, name) for name in ("list_objects", "get_object", "stat_object")}

    def counting(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return originals[name](*args, **kwargs)

        return call

    for name in originals:
        setattr(client, name, counting(name))
    try:
        reply = await service.stub.DeleteThreadAttachments(
            upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_small"), metadata=md
        )
    finally:
        for name, original in originals.items():
            setattr(client, name, original)
    assert reply.deleted == 2
    # One LIST of the thread's markers, one GET per record of the thread: not 2000 of anything.
    assert calls == Counter({"list_objects": 1, "get_object": 2})
    for attachment_id in mine:
        assert await storage.stat(object_key(tenant, attachment_id)) is None
