"""Server wiring: health and reflection stay open, and `switchboard upload` runs and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.upload_service.server import SERVICE_NAME
from switchboard.v1 import upload_pb2, upload_pb2_grpc
from tests.unit.upload_service.conftest import S3, SECRET, UploadServer, metadata, unused_endpoint

ROOT = Path(__file__).resolve().parents[3]


async def _health(address: str, service: str = "") -> int:
    async with aio.insecure_channel(address) as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs' types describe sync channels
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return int(reply.status)


async def test_health_and_reflection_need_no_token(service: UploadServer) -> None:
    for name in ("", SERVICE_NAME):
        assert await _health(service.address, name) == health_pb2.HealthCheckResponse.SERVING
    async with aio.insecure_channel(service.address) as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        services = set()
        async for reply in stub.ServerReflectionInfo(iter([request]), timeout=2):
            services |= {item.name for item in reply.list_services_response.service}
    assert SERVICE_NAME == "switchboard.v1.UploadService"
    assert SERVICE_NAME in services and "grpc.health.v1.Health" in services


async def test_repeated_ids_are_answered_in_request_order(service: UploadServer) -> None:
    first = (await service.upload("1.txt", "text/plain", [b"one"])).attachment.id
    second = (await service.upload("2.txt", "text/plain", [b"two"])).attachment.id
    got = await service.stub.GetAttachments(
        upload_pb2.GetAttachmentsRequest(attachment_ids=[second, first, second]), metadata=metadata()
    )
    assert [a.id for a in got.attachments] == [second, first, second]


async def test_switchboard_upload_serves_and_stops_on_sigterm(s3: S3) -> None:
    """The real command: creates its bucket, answers an upload, drains and exits 0 on SIGTERM.

    It starts before the database has its limits tables (the agent service creates them): it
    serves, answers UNAVAILABLE until they exist, and works as soon as they do."""
    listen = unused_endpoint()
    bucket = "serve-test"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SWITCHBOARD_", "MINIO_"))}
    with tempfile.TemporaryDirectory() as data_dir, tempfile.TemporaryFile() as log:
        env.update(
            {
                "SWITCHBOARD_DATA_DIR": data_dir,
                "SWITCHBOARD_JWT_SECRET": SECRET,
                "SWITCHBOARD_UPLOAD_LISTEN": listen,
                "SWITCHBOARD_SHUTDOWN_GRACE_S": "2",
                **s3.server.env(bucket),
            }
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "upload",
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if await _health(listen) == health_pb2.HealthCheckResponse.SERVING:
                        break
                except aio.AioRpcError:
                    pass
                assert process.returncode is None and time.monotonic() < deadline, "the service did not start"
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(s3.client.bucket_exists, bucket)
            async with aio.insecure_channel(listen) as channel:
                stub = upload_pb2_grpc.UploadServiceStub(channel)
                create = upload_pb2.CreateAttachmentRequest(name="a.txt", size=3, mime_type="text/plain")
                with pytest.raises(aio.AioRpcError) as refused:
                    await stub.CreateAttachment(create, metadata=metadata())
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                migrated = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "services.cli", "migrate", cwd=ROOT, env=env, stdout=log, stderr=log
                )
                assert await migrated.wait() == 0
                created = await stub.CreateAttachment(create, metadata=metadata())
                assert created.attachment.upload_descriptor.url.startswith(f"http://{s3.endpoint}/{bucket}/")
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 10)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        log.seek(0)
        output = log.read().decode(errors="replace")
    assert code == 0, output
    assert "upload service listening on" in output and "upload service stopped" in output
    assert "the database has no limits tables yet" in output
