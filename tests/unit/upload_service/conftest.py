"""Fixtures: a real S3 server (the session's SeaweedFS, a child process, strict like MinIO), the real
minio SDK, and the upload service on a real gRPC socket in the test process. Tests talk to it through
the generated async stub.

Object storage is shared by the whole package (one bucket); tests that assert "nothing left behind"
compare a snapshot of every key and every unfinished multipart upload before and after.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from chatkit.types import Attachment
from grpc import aio
from minio import Minio
from pydantic import TypeAdapter

from services.common import codec
from services.common.auth import mint_token
from services.common.config import Settings
from services.upload_service.quota import UploadQuota
from services.upload_service.server import build_server
from services.upload_service.storage import ObjectStorage
from switchboard.v1 import thread_pb2, upload_pb2, upload_pb2_grpc
from tests.support.s3 import S3Server, shared_seaweedfs

SECRET = "upload-test-secret-" + "u" * 32
BUCKET = "switchboard-test"
MiB = 1024 * 1024
MAX_BYTES = 70 * MiB
SMALL_MAX_BYTES = 10 * MiB
TTL_S = 120
ATTACHMENT = TypeAdapter[Attachment](Attachment)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "upload_max_bytes": MAX_BYTES,
        "presign_ttl_s": TTL_S,
        "shutdown_grace_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)


def metadata(tenant: str = "acme", user: str = "alice") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_token(SECRET, tenant=tenant, user=user)}"),)


def unused_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def png_bytes(width: int = 2, height: int = 2) -> bytes:
    """A small valid PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def as_chatkit(message: thread_pb2.Attachment) -> Attachment:
    """The message as openai-chatkit's Attachment model (validates the wire shape)."""
    return ATTACHMENT.validate_python(codec.to_data(message))


async def http(method: str, url: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
    """A plain HTTP request (as a browser would send it to a presigned URL), off the event loop."""

    def send() -> bytes:
        request = urllib.request.Request(url, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    return await asyncio.to_thread(send)


@dataclass
class S3:
    """Direct access to the bucket, for assertions (sync SDK calls run in threads)."""

    server: S3Server
    client: Minio

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    async def keys(self) -> set[str]:
        def list_all() -> set[str]:
            return {str(o.object_name) for o in self.client.list_objects(BUCKET, recursive=True)}

        return await asyncio.to_thread(list_all)

    async def multipart_uploads(self) -> set[str]:
        def list_uploads() -> set[str]:
            return {str(u.upload_id) for u in self.client._list_multipart_uploads(BUCKET).uploads}

        return await asyncio.to_thread(list_uploads)

    async def snapshot(self) -> tuple[set[str], set[str]]:
        return await self.keys(), await self.multipart_uploads()

    async def get(self, key: str) -> bytes:
        def get() -> bytes:
            response = self.client.get_object(BUCKET, key)
            try:
                return bytes(response.read())
            finally:
                response.close()
                response.release_conn()

        return await asyncio.to_thread(get)


@dataclass
class UploadServer:
    address: str
    stub: upload_pb2_grpc.UploadServiceAsyncStub

    async def upload(
        self,
        name: str,
        mime_type: str,
        chunks: Iterable[bytes],
        *,
        size: int = 0,
        md: tuple[tuple[str, str], ...] | None = None,
        info: bool = True,
    ) -> upload_pb2.UploadResponse:
        async def requests() -> AsyncIterator[upload_pb2.UploadRequest]:
            if info:
                yield upload_pb2.UploadRequest(
                    info=upload_pb2.UploadFileInfo(name=name, mime_type=mime_type, size=size)
                )
            for chunk in chunks:
                yield upload_pb2.UploadRequest(chunk=chunk)

        return await self.stub.Upload(requests(), metadata=metadata() if md is None else md, timeout=60)


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    return shared_seaweedfs()


@pytest.fixture(scope="session")
def s3(s3_server: S3Server) -> S3:
    return S3(s3_server, s3_server.client())


@pytest_asyncio.fixture(scope="session")
async def storage(s3_server: S3Server) -> AsyncIterator[ObjectStorage]:
    store = ObjectStorage(
        s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key, bucket=BUCKET
    )
    await store.ensure_bucket()
    await store.ensure_bucket()  # idempotent
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def serving(
    settings: Settings, storage: ObjectStorage, quota: UploadQuota | None = None
) -> AsyncIterator[UploadServer]:
    """The upload service on a free loopback port, and a client channel to it (without `quota`: no
    limits, nothing counted)."""
    server, _, port = await build_server(settings, storage, listen="127.0.0.1:0", quota=quota)
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    try:
        yield UploadServer(address, upload_pb2_grpc.UploadServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(None)


@pytest_asyncio.fixture(scope="session")
async def service(storage: ObjectStorage) -> AsyncIterator[UploadServer]:
    """The upload service with a 70 MiB limit."""
    async with serving(make_settings(), storage) as running:
        yield running


@pytest_asyncio.fixture(scope="session")
async def small_service(storage: ObjectStorage) -> AsyncIterator[UploadServer]:
    """The upload service with a 10 MiB limit, to exceed it quickly after a multipart upload began."""
    async with serving(make_settings(upload_max_bytes=SMALL_MAX_BYTES), storage) as running:
        yield running


async def expect_error(call: Any, code: grpc.StatusCode) -> str:
    """Await `call`, assert it fails with `code`, return the details."""
    with pytest.raises(aio.AioRpcError) as raised:
        await call
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details() or ""
