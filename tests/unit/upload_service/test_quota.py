"""Upload limits in the upload service, over gRPC, on a real SQLite database migrated as the agent
service does: which calls take a request of the user's rate, when bytes are checked, counted and
given back, and what a refusal leaves behind (nothing).

Each test works in a tenant of its own whose limits are per-tenant overrides (`set_limits`).
End to end through the edge, on SQLite and PostgreSQL: tests/e2e/test_upload_limits.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import count

import grpc
import pytest
from grpc import aio

from services.agent_service.store import create_store
from services.common.auth import Principal
from services.common.config import Settings
from services.common.grpc_server import retry_after_hint
from services.common.uploads import WITHIN_REQUEST_KEY
from services.limits import LimitsStore, usage_rows_total
from services.upload_service.attachments import Attachments
from services.upload_service.quota import UploadQuota
from services.upload_service.records import AttachmentRecord
from services.upload_service.storage import ObjectStorage
from services.upload_service.sweep import sweep
from services.upload_service.validation import UploadPolicy
from switchboard.app import Unavailable
from switchboard.v1 import upload_pb2
from tests.support.s3 import S3Server
from tests.unit.upload_service.conftest import (
    S3,
    UploadServer,
    expect_error,
    http,
    make_settings,
    metadata,
    serving,
)

OPERATOR = Principal(tenant="ops", user="test", role="platform-admin")
TEXT = b"0123456789" * 10  # 100 bytes
_tenants = count()


def _tenant() -> str:
    return f"quota-{next(_tenants)}"


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file with the agent service's schema (the limits tables among it)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('quota') / 'limits.sqlite3'}"
    store = create_store(make_settings(database_url=url))
    await store.migrate()
    await store.close()
    return url


@pytest.fixture(scope="module")
async def limits(database: str) -> AsyncIterator[LimitsStore]:
    """The test's own view of the database: overrides and usage."""
    store = LimitsStore(make_settings(database_url=database), application_name="test")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _quota(settings: Settings) -> UploadQuota:
    store = LimitsStore(settings, application_name="switchboard-upload")
    await store.open()
    return UploadQuota(store)


@pytest.fixture(scope="module")
async def limited(database: str, storage: ObjectStorage) -> AsyncIterator[UploadServer]:
    """The upload service with limits in the database (the rate limit off unless a tenant sets it)."""
    settings = make_settings(database_url=database, limit_requests_per_minute=0)
    quota = await _quota(settings)
    try:
        async with serving(settings, storage, quota) as running:
            yield running
    finally:
        await quota.close()


async def _set(limits: LimitsStore, tenant: str, **values: int) -> None:
    await limits.set_limits(OPERATOR, tenant, values, via="test")


async def _usage(limits: LimitsStore, tenant: str) -> tuple[int, int]:
    """(the tenant's uploaded bytes today, the bytes it keeps stored now)."""
    rows, stored = await limits.usage(tenant)
    return usage_rows_total(rows)["uploaded_bytes"], stored


def _md(tenant: str, user: str = "alice", *, within: bool = False) -> tuple[tuple[str, str], ...]:
    extra = ((WITHIN_REQUEST_KEY, "1"),) if within else ()
    return (*metadata(tenant, user), *extra)


async def _upload(
    service: UploadServer,
    tenant: str,
    body: bytes = TEXT,
    *,
    user: str = "alice",
    size: int = 0,
    within: bool = False,
) -> upload_pb2.UploadResponse:
    return await service.upload(
        "notes.txt", "text/plain", [body], size=size, md=_md(tenant, user, within=within)
    )


async def _refused(call: object, limit: str) -> aio.AioRpcError:
    """The call failed with RESOURCE_EXHAUSTED naming `limit`, with a retry-after hint."""
    with pytest.raises(aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert f"limit reached ({limit})" in (error.details() or "")
    assert (retry_after_hint(error) or 0) >= 1
    return error


def _keys_of(keys: set[str], tenant: str) -> set[str]:
    return {key for key in keys if f"/{tenant}/" in key}


# --------------------------------------------------------------------------- direct uploads


async def test_direct_uploads_are_counted_and_one_over_the_day_leaves_nothing(
    limited: UploadServer, limits: LimitsStore, s3: S3
) -> None:
    tenant = _tenant()
    await _set(limits, tenant, upload_bytes_per_day=250)
    first = await _upload(limited, tenant)
    second = await _upload(limited, tenant)
    assert await _usage(limits, tenant) == (200, 200)
    record = json.loads(await s3.get(f"records/{tenant}/{first.attachment.id}.json"))
    assert record["counted"] is True and record["size"] == 100

    before = await s3.snapshot()
    await _refused(_upload(limited, tenant), "upload_bytes_per_day")  # 300 > 250
    assert await s3.snapshot() == before
    assert await _usage(limits, tenant) == (200, 200)
    # 50 bytes still fit; another user of the tenant has a day of their own.
    await _upload(limited, tenant, TEXT[:50])
    await _upload(limited, tenant, user="bob")
    assert await _usage(limits, tenant) == (350, 350)
    assert second.size == 100


async def test_a_declared_size_that_cannot_fit_is_refused_before_any_chunk(
    limited: UploadServer, limits: LimitsStore, s3: S3
) -> None:
    tenant = _tenant()
    await _set(limits, tenant, stored_bytes=150)
    await _upload(limited, tenant)
    before = await s3.snapshot()
    error = await _refused(_upload(limited, tenant, size=100), "stored_bytes")
    assert "delete some first" in (error.details() or "")
    assert error.initial_metadata() is None or not dict(error.initial_metadata() or ()).get(
        "x-upload-accepted"
    )
    assert await s3.snapshot() == before


async def test_a_deleted_attachment_gives_its_bytes_back_once(
    limited: UploadServer, limits: LimitsStore
) -> None:
    tenant = _tenant()
    await _set(limits, tenant, stored_bytes=200)
    first = await _upload(limited, tenant)
    await _upload(limited, tenant)
    await _refused(_upload(limited, tenant), "stored_bytes")
    request = upload_pb2.DeleteAttachmentRequest(attachment_id=first.attachment.id)
    await limited.stub.DeleteAttachment(request, metadata=_md(tenant))
    assert await _usage(limits, tenant) == (200, 100)  # uploaded bytes of the day stay counted
    await expect_error(
        limited.stub.DeleteAttachment(request, metadata=_md(tenant)), grpc.StatusCode.NOT_FOUND
    )
    assert await _usage(limits, tenant) == (200, 100)
    await _upload(limited, tenant)
    assert await _usage(limits, tenant) == (300, 200)


async def test_a_failed_delete_releases_nothing(
    database: str, storage: ObjectStorage, limits: LimitsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = _tenant()
    owner = Principal(tenant=tenant, user="alice", role="user")
    quota = await _quota(make_settings(database_url=database, limit_requests_per_minute=0))
    attachments = Attachments(
        storage, UploadPolicy(max_bytes=1000, allowed_types=["text/plain"]), presign_ttl_s=60, quota=quota
    )
    try:

        async def chunks() -> AsyncIterator[bytes]:
            yield TEXT

        record = await attachments.upload(
            owner, name="a.txt", mime_type="text/plain", size=0, chunks=chunks()
        )
        assert record.counted and await _usage(limits, tenant) == (100, 100)

        async def down(*_: object) -> None:
            raise Unavailable("object storage unavailable")

        with monkeypatch.context() as patched:
            patched.setattr(attachments._records, "delete", down)
            with pytest.raises(Unavailable):
                await attachments.delete(owner, record.id)
        assert await _usage(limits, tenant) == (100, 100)
        await attachments.delete(owner, record.id)  # the retry removes the record, and releases once
        assert await _usage(limits, tenant) == (100, 0)
    finally:
        await quota.close()


# --------------------------------------------------------------------------- two-phase uploads


async def _create(service: UploadServer, tenant: str, size: int) -> upload_pb2.CreateAttachmentResponse:
    request = upload_pb2.CreateAttachmentRequest(name="notes.txt", size=size, mime_type="text/plain")
    return await service.stub.CreateAttachment(request, metadata=_md(tenant))


async def _attach(
    service: UploadServer, tenant: str, thread_id: str, *ids: str
) -> upload_pb2.AttachToThreadResponse:
    request = upload_pb2.AttachToThreadRequest(thread_id=thread_id, attachment_ids=list(ids))
    return await service.stub.AttachToThread(request, metadata=_md(tenant))


async def test_two_phase_bytes_count_when_attached_and_a_refusal_keeps_the_upload_pending(
    limited: UploadServer, limits: LimitsStore, s3: S3
) -> None:
    tenant = _tenant()
    await _set(limits, tenant, upload_bytes_per_day=1000)
    await _refused(_create(limited, tenant, 1001), "upload_bytes_per_day")
    first = await _create(limited, tenant, len(TEXT))
    second = await _create(limited, tenant, len(TEXT))
    for created in (first, second):
        await http("PUT", created.attachment.upload_descriptor.url, TEXT, "text/plain")
    assert await _usage(limits, tenant) == (0, 0)  # nothing counted before the bytes are verified

    # Room for one of the two, not both: the message's attachments are refused together.
    await _set(limits, tenant, upload_bytes_per_day=150)
    keys = _keys_of(await s3.keys(), tenant)
    await _refused(
        _attach(limited, tenant, "thr_1", first.attachment.id, second.attachment.id), "upload_bytes_per_day"
    )
    assert _keys_of(await s3.keys(), tenant) == keys  # no verified copy left in objects/
    assert await _usage(limits, tenant) == (0, 0)
    record = json.loads(await s3.get(f"records/{tenant}/{first.attachment.id}.json"))
    assert record["state"] == "pending" and not record["counted"]

    # Once there is room, the same attachments are sent again without uploading again.
    await _set(limits, tenant, upload_bytes_per_day=1000)
    attached = await _attach(limited, tenant, "thr_1", first.attachment.id, second.attachment.id)
    assert list(attached.sizes) == [100, 100]
    assert await _usage(limits, tenant) == (200, 200)
    await _attach(limited, tenant, "thr_1", first.attachment.id)  # again: already counted
    assert await _usage(limits, tenant) == (200, 200)

    deleted = await limited.stub.DeleteThreadAttachments(
        upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_1"), metadata=_md(tenant)
    )
    assert deleted.deleted == 2
    assert await _usage(limits, tenant) == (200, 0)


# --------------------------------------------------------------------------- requests


async def test_user_requests_take_the_rate_and_the_agents_calls_do_not(
    limited: UploadServer, limits: LimitsStore
) -> None:
    tenant = _tenant()
    await _set(limits, tenant, requests_per_minute=1, request_burst=3)
    uploaded = await _upload(limited, tenant)  # 1
    created = await _create(limited, tenant, len(TEXT))  # 2
    await http("PUT", created.attachment.upload_descriptor.url, TEXT, "text/plain")
    # Within a request the agent service admitted: an image it generated, attaching, reading,
    # refreshing URLs, deleting a thread's attachments.
    for _ in range(3):
        await _upload(limited, tenant, within=True)
    await _attach(limited, tenant, "thr_r", uploaded.attachment.id, created.attachment.id)
    read = limited.stub.ReadAttachment(
        upload_pb2.ReadAttachmentRequest(attachment_id=uploaded.attachment.id), metadata=_md(tenant)
    )
    assert b"".join([reply.chunk async for reply in read]) == TEXT
    await limited.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[uploaded.attachment.id]), metadata=_md(tenant)
    )
    await limited.stub.DeleteThreadAttachments(
        upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_r"), metadata=_md(tenant)
    )
    await _upload(limited, tenant)  # 3
    await _refused(_upload(limited, tenant), "requests_per_minute")
    await _refused(_create(limited, tenant, 10), "requests_per_minute")
    await _refused(
        limited.stub.DeleteAttachment(
            upload_pb2.DeleteAttachmentRequest(attachment_id=uploaded.attachment.id), metadata=_md(tenant)
        ),
        "requests_per_minute",
    )
    await _upload(limited, tenant, user="bob")  # a bucket per user


# --------------------------------------------------------------------------- settings and the sweep


async def test_with_limits_off_nothing_is_refused_but_bytes_are_counted(
    database: str, storage: ObjectStorage, limits: LimitsStore
) -> None:
    tenant = _tenant()
    await _set(
        limits, tenant, upload_bytes_per_day=10, stored_bytes=10, requests_per_minute=1, request_burst=1
    )
    settings = make_settings(database_url=database, limits_enabled=False)
    quota = await _quota(settings)
    try:
        async with serving(settings, storage, quota) as unlimited:
            for _ in range(3):
                await _upload(unlimited, tenant)
            await _create(unlimited, tenant, 500)
    finally:
        await quota.close()
    assert await _usage(limits, tenant) == (300, 300)


async def test_the_sweep_gives_back_the_bytes_of_uploads_never_sent(
    database: str, limits: LimitsStore, s3_server: S3Server
) -> None:
    tenant = _tenant()
    storage = ObjectStorage(
        s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket=S3Server.new_bucket("quota"),
    )
    await storage.ensure_bucket()
    settings = make_settings(database_url=database, limit_requests_per_minute=0)
    quota = await _quota(settings)
    try:
        async with serving(settings, storage, quota) as service:
            await _upload(service, tenant)
            await _upload(service, tenant)
            sent = await _upload(service, tenant)
            await _attach(service, tenant, "thr_s", sent.attachment.id)
            pending = await _create(service, tenant, len(TEXT))  # never counted: nothing to give back
        assert await _usage(limits, tenant) == (300, 300)
        later = datetime.now(UTC) + timedelta(days=2)
        dry = await sweep(storage, pending_ttl_s=3600, now=lambda: later, dry_run=True, quota=quota)
        assert any(pending.attachment.id in key for key in dry.removed)
        assert await _usage(limits, tenant) == (300, 300)
        await sweep(storage, pending_ttl_s=3600, now=lambda: later, quota=quota)
        assert await _usage(limits, tenant) == (300, 100)  # the one sent to a thread stays
        await sweep(storage, pending_ttl_s=3600, now=lambda: later, quota=quota)
        assert await _usage(limits, tenant) == (300, 100)
    finally:
        await quota.close()
        await storage.close()


def test_records_written_before_the_limits_release_nothing() -> None:
    """A record without `counted` (stored before the limits existed) reads as not counted."""
    old = {
        "id": "atc_" + "0" * 32,
        "tenant": "acme",
        "owner": "alice",
        "name": "a.txt",
        "storage_name": "a.txt",
        "mime_type": "text/plain",
        "size": 3,
        "object_key": "objects/acme/atc_" + "0" * 32,
        "state": "ready",
        "created_at": "2024-01-01T00:00:00Z",
    }
    assert AttachmentRecord.model_validate(old).counted is False
