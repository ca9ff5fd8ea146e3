"""The sweep, with a clock the test controls (no waiting for hours), on a bucket of its own; the
bucket lifecycle rules; `switchboard sweep`."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from services.cli import main
from services.upload_service.records import object_key, thread_marker_key, upload_key
from services.upload_service.storage import ObjectStorage, expiry_rule
from services.upload_service.sweep import MULTIPART_RULE_ID, UPLOADS_RULE_ID, lifecycle, sweep
from switchboard.v1 import upload_pb2
from tests.support.s3 import S3Server
from tests.unit.upload_service.conftest import UploadServer, http, make_settings, metadata, serving

TTL_S = 86_400
TEXT = b"hello sweep\n"


@pytest_asyncio.fixture
async def own_storage(s3_server: S3Server) -> AsyncIterator[ObjectStorage]:
    store = ObjectStorage(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=S3Server.new_bucket("sweep"),
    )
    await store.ensure_bucket()
    try:
        yield store
    finally:
        await store.close()


async def _keys(storage: ObjectStorage) -> set[str]:
    return set(await storage.list_keys(""))


async def _create(service: UploadServer, size: int = len(TEXT)) -> upload_pb2.Attachment:
    reply = await service.stub.CreateAttachment(
        upload_pb2.CreateAttachmentRequest(name="a.txt", size=size, mime_type="text/plain"),
        metadata=metadata(),
    )
    return reply.attachment


async def _attach(service: UploadServer, thread_id: str, attachment_id: str) -> None:
    await service.stub.AttachToThread(
        upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=[attachment_id]),
        metadata=metadata(),
    )


async def test_sweep_removes_stale_and_orphaned_keys_only(own_storage: ObjectStorage) -> None:
    storage = own_storage
    async with serving(make_settings(), storage) as service:
        never_uploaded = await _create(service)
        uploaded_never_used = await _create(service)
        await http("PUT", uploaded_never_used.upload_descriptor.url, TEXT, "text/plain")
        used = await _create(service)
        await http("PUT", used.upload_descriptor.url, TEXT, "text/plain")
        await _attach(service, "thr_used", used.id)
        await http("PUT", used.upload_descriptor.url, b"a second PUT", "text/plain")  # URL still valid
        deleted = await _create(service)
        await service.stub.DeleteAttachment(
            upload_pb2.DeleteAttachmentRequest(attachment_id=deleted.id), metadata=metadata()
        )
        await http("PUT", deleted.upload_descriptor.url, TEXT, "text/plain")  # PUT after delete
        direct_unsent = (await service.upload("d.txt", "text/plain", [TEXT])).attachment
        direct_sent = (await service.upload("s.txt", "text/plain", [TEXT])).attachment
        await _attach(service, "thr_sent", direct_sent.id)
        legacy = (await service.upload("l.txt", "text/plain", [TEXT])).attachment
        await _attach(service, "thr_legacy", legacy.id)
        await storage.remove(thread_marker_key("acme", "thr_legacy", legacy.id))  # bound before the index
        orphan = object_key("acme", "atc_" + "e" * 32)
        await storage.put_bytes(orphan, b"no record", content_type="text/plain")

        # Now: only what nothing can ever read goes, at once.
        report = await sweep(storage, pending_ttl_s=TTL_S)
        assert sorted(report.removed) == sorted([upload_key("acme", used.id), upload_key("acme", deleted.id)])
        assert report.indexed == []
        keys = await _keys(storage)
        assert orphan in keys and upload_key("acme", uploaded_never_used.id) in keys

        later = datetime.now(UTC) + timedelta(seconds=TTL_S + 3600)
        before = await _keys(storage)
        dry = await sweep(storage, pending_ttl_s=TTL_S, now=lambda: later, dry_run=True)
        assert await _keys(storage) == before
        assert dry.indexed == [legacy.id]

        report = await sweep(storage, pending_ttl_s=TTL_S, now=lambda: later)
        assert sorted(report.removed) == sorted(dry.removed)
        assert sorted(report.removed) == sorted(
            [
                f"records/acme/{never_uploaded.id}.json",
                upload_key("acme", uploaded_never_used.id),
                f"records/acme/{uploaded_never_used.id}.json",
                object_key("acme", direct_unsent.id),
                f"records/acme/{direct_unsent.id}.json",
                orphan,
            ]
        )
        assert report.indexed == [legacy.id]
        keys = await _keys(storage)
        for kept in (used, direct_sent, legacy):
            assert object_key("acme", kept.id) in keys and f"records/acme/{kept.id}.json" in keys
        # The marker written for the legacy attachment makes thread deletion find it.
        reply = await service.stub.DeleteThreadAttachments(
            upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_legacy"), metadata=metadata()
        )
        assert reply.deleted == 1
        # Nothing left to do.
        assert (await sweep(storage, pending_ttl_s=TTL_S, now=lambda: later)).removed == []


async def test_lifecycle_rules_are_added_next_to_the_buckets_own(own_storage: ObjectStorage) -> None:
    assert await own_storage.set_lifecycle_rules([expiry_rule("operators-rule", "exports/", 30)])
    assert await lifecycle(own_storage, 36 * 3600)
    assert await lifecycle(own_storage, 36 * 3600)  # idempotent
    config = own_storage._client.get_bucket_lifecycle(own_storage.bucket)
    rules = {rule.rule_id: rule for rule in config.rules}
    assert set(rules) == {"operators-rule", UPLOADS_RULE_ID, MULTIPART_RULE_ID}
    assert rules[UPLOADS_RULE_ID].expiration.days == 2
    assert rules[UPLOADS_RULE_ID].rule_filter.prefix == "uploads/"


async def test_a_store_refusing_lifecycle_rules_is_tolerated(own_storage: ObjectStorage) -> None:
    def refuse(*_: object) -> None:
        raise OSError("connection refused")

    own_storage._client.set_bucket_lifecycle = refuse  # type: ignore[method-assign]
    assert not await lifecycle(own_storage, TTL_S)


def test_the_sweep_command(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = S3Server.new_bucket("cli")
    client = s3_server.client()
    client.make_bucket(bucket)
    orphan = upload_key("acme", "atc_" + "f" * 32)
    client.put_object(bucket, orphan, io.BytesIO(b"x"), 1)
    for name, value in {
        "MINIO_ENDPOINT": s3_server.endpoint,
        "MINIO_ACCESS_KEY": s3_server.access_key,
        "MINIO_SECRET_KEY": s3_server.secret_key,
        "MINIO_BUCKET": bucket,
    }.items():
        monkeypatch.setenv(name, value)
    assert main(["sweep", "--dry-run"]) == 0
    assert f"would remove {orphan}" in capsys.readouterr().out
    assert main(["sweep"]) == 0
    out = capsys.readouterr().out
    assert f"removed {orphan}" in out and "removed 1 keys" in out
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == []
    monkeypatch.setenv("MINIO_ENDPOINT", "127.0.0.1:1")
    assert main(["sweep"]) == 1
