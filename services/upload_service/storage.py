"""An asyncio facade over the synchronous `minio` SDK, for any S3-compatible object store.

Threads. Every SDK call (network or not) runs in a worker thread, never on the event loop. The
service uses its own bounded ThreadPoolExecutor rather than `asyncio.to_thread`: the default executor
has only min(32, cpus + 4) threads (6 on a 2-core pod) and is shared with everything else in the
process, such as DNS lookups; a few slow S3 calls would then stall unrelated work. The urllib3 pool
has as many connections as the executor has threads.

Streaming uploads. `put_stream` turns an async iterator of chunks into an S3 multipart upload with
constant memory: chunks are collected until one part (5 MiB by default, the S3 minimum) is complete,
that part is uploaded in a worker thread while the next one is collected, and the part before it is always
finished before a new one starts. So at most two parts (plus the chunk being received) are held, the
caller's iterator is not advanced while a part waits for its predecessor (backpressure reaches the
gRPC stream through its flow control), and a file smaller than one part is a single PUT. The SHA-256
is computed part by part in the same worker threads. If the iterator raises (validation refused the
content, the client went away) or storage fails, the multipart upload is aborted before the error
propagates: no part and no object is left behind.

This uses the SDK's multipart primitives (`_create_multipart_upload`, `_upload_part`,
`_complete_multipart_upload`, `_abort_multipart_upload`; unchanged across minio 7.x, and the version
is pinned) rather than the public `put_object(length=-1)`, which reads a blocking file object:
feeding it from asyncio needs a pipe that pins a thread for the whole upload, and its part reader
re-copies the part on every read. A crash of the whole process mid-upload can still leave an
incomplete multipart upload behind: the upload service adds a lifecycle rule with
`AbortIncompleteMultipartUpload` to the bucket at start (see `sweep.lifecycle`) to reclaim those.

Presigned URLs are computed offline: the client knows its region, so the SDK never asks the server
for the bucket location. When `public_endpoint` is set (browsers reach object storage under another
name than the services do), URLs are signed by a second client configured with that endpoint; a
proxy in front of it must forward the Host header unchanged, since it is part of the signature.

Failures. urllib3 is configured to fail fast: 0.8 s connect timeout, one connect retry, no read
retries, two quick retries of idempotent requests on 5xx. An unreachable store therefore surfaces
within two seconds (at once when the port refuses connections) as
`Unavailable("object storage unavailable")`, instead of after the SDK's default five retries with
five-minute timeouts. S3 server errors (5xx) are `Unavailable` as well, and so are refused
credentials (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch): the store is unusable until
an operator fixes MINIO_ACCESS_KEY/MINIO_SECRET_KEY, which is an outage for clients (503, try
later), not a fault of their request; the log says which setting to check. Any other S3 error (a
missing bucket, say) is unexpected: `StorageRefused` (INTERNAL at the gRPC boundary).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, CopySource, Filter
from minio.datatypes import Part
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, Expiration, LifecycleConfig, Rule

from services.common.config import Settings
from switchboard.app import NotFound, SwitchboardError, Unavailable

log = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
DEFAULT_PART_BYTES: Final = 5 * MiB
# S3 refuses parts below 5 MiB, except the last one.
MIN_PART_BYTES: Final = 5 * MiB
READ_CHUNK_BYTES: Final = 1 * MiB
DEFAULT_THREADS: Final = 32
CONNECT_TIMEOUT_S: Final = 0.8
READ_TIMEOUT_S: Final = 30.0
_MISSING: Final = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion"})
_CREDENTIALS_REFUSED: Final = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
_UNAVAILABLE: Final = "object storage unavailable"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One key of a listing, with its size and last modification time (timezone-aware UTC)."""

    key: str
    size: int
    last_modified: datetime


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What `put_stream` stored: the byte count and the hex SHA-256 of the bytes."""

    size: int
    sha256: str


def _http_client(threads: int, connect_timeout_s: float, read_timeout_s: float) -> urllib3.PoolManager:
    return urllib3.PoolManager(
        maxsize=threads,
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        retries=urllib3.Retry(
            total=2,
            connect=1,
            read=0,
            status=2,
            backoff_factor=0.1,
            backoff_max=0.5,
            status_forcelist=(500, 502, 503, 504),
            respect_retry_after_header=False,
            raise_on_status=False,  # the SDK turns the final 5xx into an exception itself
        ),
    )


def _public_endpoint(value: str, default_secure: bool) -> tuple[str, bool]:
    """`host:port` or `http(s)://host:port` -> (host:port, secure)."""
    if "://" not in value:
        return value, default_secure
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"MINIO_PUBLIC_ENDPOINT must be host:port or http(s)://host:port, not {value!r}")
    return parts.netloc, parts.scheme == "https"


class StorageRefused(SwitchboardError):
    """Object storage refused a request it should have accepted: a misconfiguration, not the
    caller's fault (no domain class maps it, so the gRPC boundary answers INTERNAL)."""


def _translate(error: Exception, endpoint: str) -> SwitchboardError:
    """The SwitchboardError for an SDK or transport failure (see the module docstring)."""
    if isinstance(error, S3Error):
        status = getattr(error.response, "status", 0) or 0
        if error.code in _CREDENTIALS_REFUSED:
            log.error(
                "object storage at %s refused the upload service's credentials (%s, HTTP %s): check "
                "MINIO_ACCESS_KEY and MINIO_SECRET_KEY, and that they may use the bucket",
                endpoint,
                error.code,
                status,
            )
            return Unavailable(_UNAVAILABLE)
        if status >= 500:
            log.warning("object storage error %s (HTTP %s): %s", error.code, status, error.message)
            return Unavailable(_UNAVAILABLE)
        log.error("object storage refused a request: %s (HTTP %s): %s", error.code, status, error.message)
        return StorageRefused("object storage refused the request")
    log.warning("object storage unreachable: %s: %s", type(error).__name__, error)
    return Unavailable(_UNAVAILABLE)


_FAILURES: Final = (urllib3.exceptions.HTTPError, OSError, ServerError, InvalidResponseError, S3Error)


def _is_missing(error: S3Error) -> bool:
    return error.code in _MISSING


def _close(response: Any) -> None:
    response.close()
    response.release_conn()


@dataclass
class _Upload:
    """The state of one streaming upload (see `ObjectStorage.put_stream`)."""

    key: str
    content_type: str
    hasher: Any = field(default_factory=hashlib.sha256)
    upload_id: str | None = None
    parts: list[Part] = field(default_factory=list)
    in_flight: asyncio.Task[Part] | None = None


def expiry_rule(rule_id: str, prefix: str, days: int) -> Rule:
    """A lifecycle rule deleting objects under `prefix` `days` days after their last write."""
    return Rule(ENABLED, rule_filter=Filter(prefix=prefix), rule_id=rule_id, expiration=Expiration(days=days))


def abort_multipart_rule(rule_id: str, days: int) -> Rule:
    """A lifecycle rule aborting multipart uploads left unfinished for `days` days (a crashed
    process's parts)."""
    return Rule(
        ENABLED,
        rule_filter=Filter(prefix=""),
        rule_id=rule_id,
        abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=days),
    )


class ObjectStorage:
    """One bucket of an S3-compatible store, with async methods (see the module docstring).

    Keys are opaque here; the attachment layout lives in `records.py`.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str = "us-east-1",
        secure: bool = False,
        public_endpoint: str | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
        threads: int = DEFAULT_THREADS,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (an S3 limit)")
        self.bucket = bucket
        self.endpoint = endpoint
        self._part_bytes = part_bytes
        self._http = _http_client(threads, connect_timeout_s, read_timeout_s)

        def client(host: str, tls: bool) -> Minio:
            return Minio(
                host,
                access_key=access_key,
                secret_key=secret_key,
                secure=tls,
                region=region,
                http_client=self._http,
            )

        self._client = client(endpoint, secure)
        self._presigner = (
            client(*_public_endpoint(public_endpoint, secure)) if public_endpoint else self._client
        )
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> ObjectStorage:
        if not settings.minio_endpoint:
            raise ValueError("MINIO_ENDPOINT is not set: the upload service needs an S3 endpoint")
        return cls(
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            bucket=settings.minio_bucket,
            region=settings.minio_region,
            secure=settings.minio_secure,
            public_endpoint=settings.minio_public_endpoint,
            **options,
        )

    async def _call(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one blocking SDK call in the storage thread pool, translating its failures."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))
        except _FAILURES as error:
            raise _translate(error, self.endpoint) from error

    async def close(self) -> None:
        """Wait for pending cleanups, then release the threads and connections."""
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.clear()

    # ------------------------------------------------------------------ bucket

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (idempotent, safe with several replicas starting)."""

        def ensure() -> bool:
            if self._client.bucket_exists(self.bucket):
                return False
            try:
                self._client.make_bucket(self.bucket)
            except S3Error as error:
                if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
                return False
            return True

        if await self._call(ensure):
            log.info("created bucket %s", self.bucket)

    async def set_lifecycle_rules(self, rules: list[Rule]) -> bool:
        """Add (or replace, by rule id) these lifecycle rules, keeping the bucket's other rules.

        Returns False, with a warning in the log, when the store refuses lifecycle configuration
        (not every S3-compatible store implements it): the service's own sweep still cleans up.
        """
        ids = {rule.rule_id for rule in rules}

        def apply() -> None:
            current = self._client.get_bucket_lifecycle(self.bucket)
            kept = [rule for rule in (current.rules if current else []) if rule.rule_id not in ids]
            self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig([*kept, *rules]))

        try:
            await self._call(apply)
        except (StorageRefused, Unavailable) as error:
            log.warning(
                "object storage did not accept lifecycle rules %s on bucket %s (%s); the upload "
                "service's periodic sweep removes stale uploads instead",
                sorted(str(rule_id) for rule_id in ids),
                self.bucket,
                error,
            )
            return False
        return True

    # ------------------------------------------------------------------ writes

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        """Store a small object in one PUT."""
        await self._call(self._client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes], *, content_type: str) -> StoredObject:
        """Store the chunks as one object with bounded memory; abort cleanly on any failure."""
        upload = _Upload(key, content_type)
        size = 0
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= self._part_bytes:
                    await self._send_part(upload, pending)
                    pending_bytes = 0
            if upload.upload_id is None:
                body = b"".join(pending)
                pending.clear()
                await self._call(self._put_hashed, upload, body)
            else:
                if pending:
                    await self._send_part(upload, pending)
                await self._finish(upload)
        except BaseException:
            await self._abandon(upload)
            raise
        return StoredObject(size=size, sha256=upload.hasher.hexdigest())

    async def _send_part(self, upload: _Upload, pending: list[bytes]) -> None:
        """Start uploading `pending` as the next part once the previous part is done."""
        if upload.in_flight is not None:
            upload.parts.append(await upload.in_flight)
            upload.in_flight = None
        if upload.upload_id is None:
            upload.upload_id = await self._call(
                self._client._create_multipart_upload,
                self.bucket,
                upload.key,
                {"Content-Type": upload.content_type},
            )
        # The worker takes the part out of this list, so the bytes are freed as soon as it is sent
        # (an argument would stay referenced by the executor until after the result is delivered).
        body = [b"".join(pending)]
        pending.clear()
        number = len(upload.parts) + 1
        upload.in_flight = asyncio.ensure_future(self._call(self._upload_part, upload, number, body))

    def _put_hashed(self, upload: _Upload, body: bytes) -> None:
        upload.hasher.update(body)
        self._client.put_object(
            self.bucket, upload.key, io.BytesIO(body), len(body), content_type=upload.content_type
        )

    def _upload_part(self, upload: _Upload, number: int, holder: list[bytes]) -> Part:
        # Parts are hashed in order: a part starts only after the previous one finished.
        assert upload.upload_id is not None, "a part needs a multipart upload"
        body = holder.pop()
        upload.hasher.update(body)
        etag = self._client._upload_part(self.bucket, upload.key, body, None, upload.upload_id, number)
        return Part(number, etag)

    async def _finish(self, upload: _Upload) -> None:
        if upload.in_flight is not None:
            upload.parts.append(await upload.in_flight)
            upload.in_flight = None
        await self._call(
            self._client._complete_multipart_upload, self.bucket, upload.key, upload.upload_id, upload.parts
        )
        upload.upload_id = None

    async def _abandon(self, upload: _Upload) -> None:
        """Abort an unfinished multipart upload; survives a second cancellation of the caller."""

        async def cleanup() -> None:
            if upload.in_flight is not None:
                await asyncio.wait([upload.in_flight])
                if not upload.in_flight.cancelled():
                    upload.in_flight.exception()  # retrieved: a failed part is not a new error
            if upload.upload_id is not None:
                try:
                    await self._call(
                        self._client._abort_multipart_upload, self.bucket, upload.key, upload.upload_id
                    )
                except SwitchboardError:
                    log.warning(
                        "could not abort the multipart upload of %s; a bucket lifecycle rule reclaims it",
                        upload.key,
                    )

        task = asyncio.ensure_future(cleanup())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    async def copy(self, source: str, target: str, *, content_type: str) -> None:
        """Server-side copy of `source` to `target` (the bytes never pass through this process),
        with `content_type` as the target's Content-Type. NotFound when `source` does not exist."""

        def copy() -> None:
            try:
                self._client.copy_object(
                    self.bucket,
                    target,
                    CopySource(self.bucket, source),
                    metadata={"Content-Type": content_type},
                    metadata_directive="REPLACE",
                )
            except S3Error as error:
                if _is_missing(error):
                    raise NotFound("the uploaded object is missing") from None
                raise

        await self._call(copy)

    async def remove(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error (S3 semantics)."""
        await self._call(self._client.remove_object, self.bucket, key)

    async def remove_quietly(self, *keys: str) -> None:
        """Best-effort removal during cleanup after another failure: logs instead of raising.

        Shielded, so that a cancelled caller (client gone) still gets its leftovers removed.
        """

        async def remove_all() -> None:
            for key in keys:
                try:
                    await self.remove(key)
                except SwitchboardError:
                    log.warning("could not remove %s after a failed request", key)

        task = asyncio.ensure_future(remove_all())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        await asyncio.shield(task)

    # ------------------------------------------------------------------ reads

    async def stat(self, key: str) -> ObjectInfo | None:
        """Size and type of an object, or None when it does not exist."""

        def stat() -> ObjectInfo | None:
            try:
                info = self._client.stat_object(self.bucket, key)
            except S3Error as error:
                if _is_missing(error):
                    return None
                raise
            return ObjectInfo(
                size=int(info.size or 0), content_type=info.content_type or "", etag=info.etag or ""
            )

        return await self._call(stat)

    async def get_bytes(self, key: str, *, offset: int = 0, length: int = 0) -> bytes | None:
        """An object's bytes (or `length` of them from `offset`); None when it does not exist.

        Meant for small objects and heads of files: the result is held in memory.
        """

        def get() -> bytes | None:
            try:
                response = self._client.get_object(self.bucket, key, offset=offset, length=length)
            except S3Error as error:
                if _is_missing(error):
                    return None
                if error.code == "InvalidRange":
                    return b""
                raise
            try:
                return bytes(response.read())
            finally:
                _close(response)

        return await self._call(get)

    async def stream(self, key: str, *, limit: int = 0) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks of at most READ_CHUNK_BYTES (at most `limit` bytes if > 0).

        Each chunk is read in a worker thread only when the consumer asks for it, so a slow consumer
        holds one chunk, not the object. Raises NotFound when it does not exist.
        With a limit, the request is a ranged GET of `limit` bytes and reading stops at `limit` even
        if the store sent more (it ignored the range): the connection is closed, never drained.
        Close the iterator (`contextlib.aclosing`) to release the connection early.
        """

        def open_object() -> Any:
            try:
                return self._client.get_object(self.bucket, key, length=limit)
            except S3Error as error:
                if _is_missing(error):
                    return None
                raise

        response = await self._call(open_object)
        if response is None:
            raise NotFound("the attachment's content is missing")
        remaining = limit if limit > 0 else None
        try:
            while remaining is None or remaining > 0:
                want = READ_CHUNK_BYTES if remaining is None else min(READ_CHUNK_BYTES, remaining)
                chunk = await self._call(response.read, want)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield bytes(chunk)
        finally:
            await self._call(_close, response)

    async def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (all pages; the list is held in memory)."""

        def list_all() -> list[str]:
            objects = self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            return [str(item.object_name) for item in objects]

        return await self._call(list_all)

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        """Every object under `prefix` with its size and age (all pages; held in memory)."""

        def list_all() -> list[ListedObject]:
            return [
                ListedObject(
                    str(item.object_name),
                    int(item.size or 0),
                    item.last_modified or datetime.fromtimestamp(0, UTC),
                )
                for item in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
            ]

        return await self._call(list_all)

    # ------------------------------------------------------------------ presigned URLs

    async def presigned_get(self, key: str, *, ttl_s: int, content_type: str | None = None) -> str:
        """A GET URL valid for `ttl_s` seconds; `content_type` overrides the stored Content-Type."""
        headers = {"response-content-type": content_type} if content_type else None
        return await self._call(
            self._presigner.presigned_get_object,
            self.bucket,
            key,
            expires=timedelta(seconds=ttl_s),
            response_headers=headers,
        )

    async def presigned_put(self, key: str, *, ttl_s: int) -> str:
        """A PUT URL valid for `ttl_s` seconds (the body is sent raw, with a Content-Type header)."""
        return await self._call(
            self._presigner.presigned_put_object, self.bucket, key, expires=timedelta(seconds=ttl_s)
        )
