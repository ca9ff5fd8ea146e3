"""Presigned URLs and storage credentials, through the real edge and upload service on SeaweedFS.

These are the behaviours a lenient S3 stand-in (moto) cannot show: an expired or tampered URL is
refused by object storage, and wrong credentials make the upload service unready instead of a
source of 500s. The stack's presigned URLs live TTL_S seconds, so expiry is reached by waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest
from chatkit.types import (
    Attachment,
    FileAttachment,
    ImageAttachment,
    Page,
    Thread,
    ThreadItem,
    ThreadItemDoneEvent,
    UserMessageItem,
)
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from minio.error import S3Error
from pydantic import TypeAdapter

from services.common import codec
from switchboard.v1 import upload_pb2, upload_pb2_grpc
from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.processes import Stack, running_stack
from tests.unit.upload_service.conftest import png_bytes

ATTACHMENT = TypeAdapter[Attachment](Attachment)
ITEMS = TypeAdapter[Page[ThreadItem]](Page[ThreadItem])
TTL_S = 2
# Signatures are checked against whole seconds: wait past the expiry with a margin.
EXPIRED_AFTER_S = TTL_S + 1.5


@pytest.fixture(scope="module")
def short_ttl_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("presign"), SWITCHBOARD_PRESIGN_TTL_S=str(TTL_S)) as stack:
        yield stack


async def _status(http: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    async with http.request(method, url, data=body, headers=headers) as reply:
        await reply.read()
        return reply.status


async def _upload_image(http: aiohttp.ClientSession, stack: Stack, image: bytes) -> ImageAttachment:
    form = aiohttp.FormData()
    form.add_field("file", image, filename="chart.png", content_type="image/png")
    async with http.post(f"{stack.edge_url}/chatkit/api/upload", data=form, headers=stack.headers()) as reply:
        body = await reply.json()
        assert reply.status == 200, body
    attachment = ATTACHMENT.validate_python(body)
    assert isinstance(attachment, ImageAttachment)
    return attachment


async def _create_two_phase(http: aiohttp.ClientSession, stack: Stack, content: bytes) -> FileAttachment:
    created = await call(
        http,
        stack.edge_url,
        request("attachments.create", name="notes.txt", size=len(content), mime_type="text/plain"),
        stack.headers(),
    )
    attachment = ATTACHMENT.validate_python(created)
    assert isinstance(attachment, FileAttachment)
    assert attachment.upload_descriptor is not None
    return attachment


async def _attachment_over_grpc(stack: Stack, attachment_id: str) -> upload_pb2.GetAttachmentsResponse:
    metadata = (("authorization", f"Bearer {stack.token()}"),)
    async with aio.insecure_channel(stack.upload_address) as channel:
        return await upload_pb2_grpc.UploadServiceStub(channel).GetAttachments(
            upload_pb2.GetAttachmentsRequest(attachment_ids=[attachment_id]), metadata=metadata, timeout=10
        )


def _keys(stack: Stack) -> set[str]:
    """Every key in the stack's bucket, read with the server's own credentials."""
    return {str(o.object_name) for o in stack.s3.client().list_objects(stack.bucket, recursive=True)}


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def _flip_last(text: str) -> str:
    return text[:-1] + ("0" if text[-1] != "0" else "1")


async def test_an_expired_upload_url_is_refused_and_the_attachment_stays_pending(
    http: aiohttp.ClientSession, short_ttl_stack: Stack
) -> None:
    stack = short_ttl_stack
    content = b"Numbers for the board meeting.\n"
    attachment = await _create_two_phase(http, stack, content)
    assert attachment.upload_descriptor is not None
    await asyncio.sleep(EXPIRED_AFTER_S)
    assert await _status(http, "PUT", str(attachment.upload_descriptor.url), content) == 403

    key = f"objects/acme/{attachment.id}"
    assert key not in {
        str(o.object_name) for o in stack.s3.client().list_objects(stack.bucket, recursive=True)
    }
    payload = await call(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("read it"), "attachments": [attachment.id]}),
        stack.headers(),
        status=400,
    )
    code, message = error_of(payload)
    assert code == "FAILED_PRECONDITION"
    assert "has not been uploaded" in message

    # Still pending: a fresh read mints a new upload URL, and that one works.
    (pending,) = (await _attachment_over_grpc(stack, attachment.id)).attachments
    fresh = ATTACHMENT.validate_python(codec.to_data(pending))
    assert fresh.upload_descriptor is not None
    assert fresh.upload_descriptor.url != attachment.upload_descriptor.url
    assert await _status(http, "PUT", str(fresh.upload_descriptor.url), content) == 200
    events = await stream(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("read it"), "attachments": [attachment.id]}),
        stack.headers(),
    )
    user = next(
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, UserMessageItem)
    )
    assert [a.id for a in user.attachments] == [attachment.id]
    assert user.attachments[0].upload_descriptor is None


async def test_an_expired_preview_url_is_refused_and_a_fresh_read_mints_a_working_one(
    http: aiohttp.ClientSession, short_ttl_stack: Stack
) -> None:
    stack = short_ttl_stack
    image = png_bytes(5, 3)
    uploaded = await _upload_image(http, stack, image)
    events = await stream(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("Describe the chart"), "attachments": [uploaded.id]}),
        stack.headers(),
    )
    thread_id = events[0].thread.id  # type: ignore[union-attr]
    started = time.monotonic()
    async with http.get(str(uploaded.preview_url)) as preview:
        assert preview.status == 200
        assert await preview.read() == image
    await asyncio.sleep(max(0.0, EXPIRED_AFTER_S - (time.monotonic() - started)))
    assert await _status(http, "GET", str(uploaded.preview_url)) == 403

    thread = Thread.model_validate(
        await call(http, stack.edge_url, request("threads.get_by_id", thread_id=thread_id), stack.headers())
    )
    listed = ITEMS.validate_python(
        await call(http, stack.edge_url, request("items.list", thread_id=thread_id), stack.headers())
    )
    for items in (thread.items.data, listed.data):
        stored = next(i for i in items if isinstance(i, UserMessageItem)).attachments[0]
        assert isinstance(stored, ImageAttachment)
        assert stored.preview_url != uploaded.preview_url
        async with http.get(str(stored.preview_url)) as preview:
            assert preview.status == 200
            assert await preview.read() == image


async def test_tampered_urls_are_refused(http: aiohttp.ClientSession, short_ttl_stack: Stack) -> None:
    stack = short_ttl_stack
    image = png_bytes(2, 2)
    mine = await _upload_image(http, stack, image)
    other = await _upload_image(http, stack, png_bytes(3, 3))
    url = str(mine.preview_url)
    query = dict(parse_qsl(urlsplit(url).query))
    tampered = {
        "signature": _with_query(url, **{"X-Amz-Signature": _flip_last(query["X-Amz-Signature"])}),
        "a longer lifetime": _with_query(url, **{"X-Amz-Expires": "604800"}),
        "another content type": _with_query(url, **{"response-content-type": "text/html"}),
        "another object": _with_path(url, urlsplit(url).path.replace(mine.id, other.id)),
    }
    for case, bad in tampered.items():
        assert bad != url, case
        assert await _status(http, "GET", bad) == 403, case
    async with http.get(url) as untouched:  # the original still works: the refusals were the tampering
        assert untouched.status == 200
        assert await untouched.read() == image

    # A signed upload URL cannot be pointed at another key to write there.
    pending = await _create_two_phase(http, stack, b"hello")
    assert pending.upload_descriptor is not None
    upload_url = str(pending.upload_descriptor.url)
    elsewhere = _with_path(upload_url, urlsplit(upload_url).path.replace(pending.id, "atc_" + "f" * 32))
    assert await _status(http, "PUT", elsewhere, b"hello") == 403
    assert not any("f" * 32 in key for key in _keys(stack))


async def test_deleting_a_thread_removes_its_objects_and_their_urls_stop_working(
    http: aiohttp.ClientSession, short_ttl_stack: Stack
) -> None:
    stack = short_ttl_stack
    image = png_bytes(4, 4)
    uploaded = await _upload_image(http, stack, image)
    events = await stream(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("keep this"), "attachments": [uploaded.id]}),
        stack.headers(),
    )
    thread_id = events[0].thread.id  # type: ignore[union-attr]
    thread = Thread.model_validate(
        await call(http, stack.edge_url, request("threads.get_by_id", thread_id=thread_id), stack.headers())
    )
    stored = next(i for i in thread.items.data if isinstance(i, UserMessageItem)).attachments[0]
    assert isinstance(stored, ImageAttachment)
    assert any(uploaded.id in key for key in _keys(stack))
    assert (
        await call(http, stack.edge_url, request("threads.delete", thread_id=thread_id), stack.headers())
        == {}
    )
    assert not any(uploaded.id in key for key in _keys(stack))
    with pytest.raises(S3Error) as missing:
        stack.s3.client().stat_object(stack.bucket, f"objects/acme/{uploaded.id}")
    assert missing.value.code == "NoSuchKey"
    # A URL minted before the deletion (still within its lifetime) now finds nothing.
    assert await _status(http, "GET", str(stored.preview_url)) == 404


async def _health(address: str) -> int:
    async with aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types describe sync channels
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return int(reply.status)


async def test_wrong_storage_credentials_make_the_upload_service_unready_not_a_source_of_500s(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with running_stack(tmp_path / "wrong-key", MINIO_SECRET_KEY="not-the-secret-key") as stack:
        # It keeps retrying the bucket with backoff; it must stay unready the whole time.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert await _health(stack.upload_address) == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.sleep(0.3)
        form = aiohttp.FormData()
        form.add_field("file", b"hello", filename="a.txt", content_type="text/plain")
        async with http.post(
            f"{stack.edge_url}/chatkit/api/upload", data=form, headers=stack.headers()
        ) as reply:
            assert reply.status == 503
            assert error_of(await reply.json())[0] == "UNAVAILABLE"
        payload = await call(
            http,
            stack.edge_url,
            request("attachments.create", name="a.txt", size=5, mime_type="text/plain"),
            stack.headers(),
            status=503,
        )
        assert error_of(payload)[0] == "UNAVAILABLE"
        logs = stack.services["upload"].logs()
        assert "refused the upload service's credentials" in logs, logs
        assert "check MINIO_ACCESS_KEY and MINIO_SECRET_KEY" in logs
        assert "not-the-secret-key" not in logs  # the secret itself is never logged
        assert not stack.s3.client().bucket_exists(stack.bucket)
