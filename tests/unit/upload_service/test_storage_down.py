"""Object storage unreachable: every RPC fails fast with UNAVAILABLE, none hangs."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import pytest_asyncio

from services.upload_service.storage import ObjectStorage
from switchboard.app import Unavailable
from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import (
    UploadServer,
    expect_error,
    make_settings,
    metadata,
    serving,
    unused_endpoint,
)

SOME_ID = "atc_" + "a" * 32


@pytest_asyncio.fixture(scope="module")
async def orphan_service() -> AsyncIterator[UploadServer]:
    storage = ObjectStorage(unused_endpoint(), access_key="test", secret_key="test", bucket="nowhere")
    try:
        async with serving(make_settings(), storage) as running:
            yield running
    finally:
        await storage.close()


async def test_every_rpc_fails_fast_with_unavailable(orphan_service: UploadServer) -> None:
    stub = orphan_service.stub
    md = metadata()
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "Upload": lambda: orphan_service.upload("a.txt", "text/plain", [b"hello"]),
        "CreateAttachment": lambda: stub.CreateAttachment(
            upload_pb2.CreateAttachmentRequest(name="a.txt", size=5, mime_type="text/plain"), metadata=md
        ),
        "GetAttachments": lambda: stub.GetAttachments(
            upload_pb2.GetAttachmentsRequest(attachment_ids=[SOME_ID]), metadata=md
        ),
        "AttachToThread": lambda: stub.AttachToThread(
            upload_pb2.AttachToThreadRequest(thread_id="thr_1", attachment_ids=[SOME_ID]), metadata=md
        ),
        "ReadAttachment": lambda: stub.ReadAttachment(
            upload_pb2.ReadAttachmentRequest(attachment_id=SOME_ID), metadata=md
        ).read(),
        "DeleteAttachment": lambda: stub.DeleteAttachment(
            upload_pb2.DeleteAttachmentRequest(attachment_id=SOME_ID), metadata=md
        ),
        "DeleteThreadAttachments": lambda: stub.DeleteThreadAttachments(
            upload_pb2.DeleteThreadAttachmentsRequest(thread_id="thr_1"), metadata=md
        ),
    }
    for name, call in calls.items():
        started = time.monotonic()
        details = await expect_error(call(), grpc.StatusCode.UNAVAILABLE)
        elapsed = time.monotonic() - started
        assert elapsed < 3, f"{name} took {elapsed:.1f} s"
        assert details == "object storage unavailable", name


async def test_storage_calls_raise_unavailable_quickly() -> None:
    storage = ObjectStorage(unused_endpoint(), access_key="test", secret_key="test", bucket="nowhere")
    try:
        for call in (
            storage.ensure_bucket(),
            storage.stat("k"),
            storage.put_bytes("k", b"x", content_type="a/b"),
        ):
            started = time.monotonic()
            with pytest.raises(Unavailable):
                await call
            assert time.monotonic() - started < 3
    finally:
        await storage.close()
