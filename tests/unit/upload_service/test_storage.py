"""ObjectStorage on its own: presigning offline, streaming, aborting, reading."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest

from services.upload_service.storage import ObjectStorage
from switchboard.app import InvalidRequest, NotFound, Unavailable
from tests.unit.upload_service.conftest import BUCKET, S3, MiB, make_settings, unused_endpoint


async def test_presigned_urls_are_made_offline_for_the_public_endpoint() -> None:
    """Nothing listens on the internal endpoint: presigning must not need it."""
    storage = ObjectStorage(
        unused_endpoint(),
        access_key="key",
        secret_key="secret",
        bucket="files",
        region="eu-west-3",
        public_endpoint="https://files.example.com",
    )
    try:
        put = urlsplit(await storage.presigned_put("objects/t/atc_1", ttl_s=300))
        get = urlsplit(await storage.presigned_get("objects/t/atc_1", ttl_s=60, content_type="image/png"))
    finally:
        await storage.close()
    for url, ttl in ((put, "300"), (get, "60")):
        query = parse_qs(url.query)
        assert url.scheme == "https" and url.netloc == "files.example.com"
        assert url.path == "/files/objects/t/atc_1"
        assert query["X-Amz-Expires"] == [ttl]
        assert (
            query["X-Amz-Credential"][0].startswith("key/")
            and "/eu-west-3/s3/" in query["X-Amz-Credential"][0]
        )
        assert query["X-Amz-SignedHeaders"] == ["host"]
    assert parse_qs(get.query)["response-content-type"] == ["image/png"]


def test_from_settings() -> None:
    with pytest.raises(ValueError, match="MINIO_ENDPOINT"):
        ObjectStorage.from_settings(make_settings(minio_endpoint=None))
    with pytest.raises(ValueError, match="MINIO_PUBLIC_ENDPOINT"):
        ObjectStorage.from_settings(
            make_settings(minio_endpoint="s3:9000", minio_public_endpoint="ftp://x/y")
        )


async def _chunks(count: int, *, fail_after: int | None = None) -> AsyncIterator[bytes]:
    block = os.urandom(MiB)
    for index in range(count):
        if fail_after is not None and index == fail_after:
            raise InvalidRequest("refused mid-stream")
        yield index.to_bytes(4, "big") + block[4:]


async def test_put_stream_multipart_and_single(storage: ObjectStorage, s3: S3) -> None:
    stored = await storage.put_stream("test/multi", _chunks(17), content_type="application/pdf")
    data = await s3.get("test/multi")
    assert stored.size == len(data) == 17 * MiB
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    info = await storage.stat("test/multi")
    assert info is not None and info.size == 17 * MiB and info.content_type == "application/pdf"

    small = await storage.put_stream("test/single", _chunks(1), content_type="text/plain")
    single = await s3.get("test/single")
    assert small.size == len(single) == MiB and small.sha256 == hashlib.sha256(single).hexdigest()
    await storage.remove("test/multi")
    await storage.remove("test/single")


async def test_put_stream_aborts_when_the_source_fails(storage: ObjectStorage, s3: S3) -> None:
    before = await s3.snapshot()
    with pytest.raises(InvalidRequest, match="refused mid-stream"):
        await storage.put_stream("test/aborted", _chunks(20, fail_after=18), content_type="text/plain")
    assert await s3.snapshot() == before
    assert await storage.stat("test/aborted") is None


async def test_reads(storage: ObjectStorage) -> None:
    content = os.urandom(2 * MiB + 5)
    await storage.put_bytes("test/read", content, content_type="application/octet-stream")
    chunks = [chunk async for chunk in storage.stream("test/read")]
    assert b"".join(chunks) == content and max(len(chunk) for chunk in chunks) <= MiB
    assert b"".join([chunk async for chunk in storage.stream("test/read", limit=7)]) == content[:7]
    assert await storage.get_bytes("test/read", length=4) == content[:4]
    assert await storage.get_bytes("test/missing") is None
    assert await storage.stat("test/missing") is None
    with pytest.raises(NotFound):
        async for _ in storage.stream("test/missing"):
            pass
    assert "test/read" in await storage.list_keys("test/")
    await storage.remove("test/read")
    await storage.remove("test/read")  # idempotent
    assert "test/read" not in await storage.list_keys("test/")
    assert storage.bucket == BUCKET


@pytest.mark.parametrize("wrong", ["access_key", "secret_key"])
async def test_refused_credentials_are_unavailable_and_logged_with_what_to_check(
    s3: S3, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SeaweedFS, like MinIO, checks every signature: a wrong key is an outage of storage (503 for
    clients), not an internal error, and the log names the settings to fix."""
    keys = {"access_key": s3.server.access_key, "secret_key": s3.server.secret_key}
    keys[wrong] = "wrong-" + keys[wrong]
    storage = ObjectStorage(s3.endpoint, bucket=BUCKET, **keys)
    try:
        for call in (storage.ensure_bucket(), storage.stat("objects/acme/x"), storage.list_keys("objects/")):
            with pytest.raises(Unavailable) as raised:
                await call
            assert raised.value.message == "object storage unavailable"
    finally:
        await storage.close()
    refusals = [r for r in caplog.records if "refused the upload service's credentials" in r.getMessage()]
    assert len(refusals) == 3
    assert all("MINIO_ACCESS_KEY and MINIO_SECRET_KEY" in r.getMessage() for r in refusals)
    assert all(keys["secret_key"] not in r.getMessage() for r in caplog.records)
