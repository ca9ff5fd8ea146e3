"""Fair direct uploads over gRPC: a per-user limit (RESOURCE_EXHAUSTED at once, not a queue), a
per-chunk timeout (DEADLINE_EXCEEDED), and slots given back as soon as a call is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.upload_service.storage import ObjectStorage
from switchboard.v1 import upload_pb2
from tests.unit.upload_service.conftest import S3, expect_error, make_settings, metadata, serving


def _stalled(gate: asyncio.Event) -> AsyncIterator[upload_pb2.UploadRequest]:
    async def requests() -> AsyncIterator[upload_pb2.UploadRequest]:
        yield upload_pb2.UploadRequest(
            info=upload_pb2.UploadFileInfo(name="slow.txt", mime_type="text/plain")
        )
        yield upload_pb2.UploadRequest(chunk=b"a slow start ")
        await gate.wait()

    return requests()


def _quick() -> AsyncIterator[upload_pb2.UploadRequest]:
    async def requests() -> AsyncIterator[upload_pb2.UploadRequest]:
        yield upload_pb2.UploadRequest(
            info=upload_pb2.UploadFileInfo(name="quick.txt", mime_type="text/plain")
        )
        yield upload_pb2.UploadRequest(chunk=b"quick\n")

    return requests()


async def test_per_user_limit_chunk_timeout_and_release_on_cancel(storage: ObjectStorage, s3: S3) -> None:
    settings = make_settings(upload_max_per_user=2, upload_chunk_timeout_s=30.0)
    async with serving(settings, storage) as service:
        before = await s3.snapshot()
        gate = asyncio.Event()
        held = [service.stub.Upload(_stalled(gate), metadata=metadata()) for _ in range(2)]
        await asyncio.sleep(0.3)
        details = await expect_error(
            service.stub.Upload(_quick(), metadata=metadata()), grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert "too many uploads" in details and "too large" not in details
        # Someone else is not affected.
        bobs = await service.stub.Upload(_quick(), metadata=metadata(user="bob"))
        assert bobs.size == 6
        # A cancelled call gives its slot back at once.
        held[0].cancel()
        await asyncio.sleep(0.2)
        done = await service.stub.Upload(_quick(), metadata=metadata())
        assert done.size == 6
        held[1].cancel()
        gate.set()
        for attachment_id in (done.attachment.id,):
            await service.stub.DeleteAttachment(
                upload_pb2.DeleteAttachmentRequest(attachment_id=attachment_id), metadata=metadata()
            )

    async with serving(make_settings(upload_chunk_timeout_s=0.5), storage) as service:
        gate = asyncio.Event()
        details = await expect_error(
            service.stub.Upload(_stalled(gate), metadata=metadata()), grpc.StatusCode.DEADLINE_EXCEEDED
        )
        assert "stalled" in details
        gate.set()
    # No unfinished multipart upload is left behind. (A cancelled call may leave a small object
    # and record whose id reached nobody: grpc.aio reports a cancelled request stream as ended,
    # and the cancellation itself a moment later. The sweep removes such never-attached uploads.)
    _, uploads = await s3.snapshot()
    assert uploads == before[1]
