"""The upload service's operations, free of gRPC: one method per RPC, scoped by the caller.

Rules that hold for every method:
- Ownership: an attachment belongs to the (tenant, user) that created it. Anyone else gets
  NOT_FOUND, exactly as for an id that does not exist, so ids cannot be probed. Ids that are not
  `atc_` + 32 hex digits are NOT_FOUND without touching storage (INVALID_ARGUMENT when empty).
- Validation before writes: names, types and sizes are checked before anything is stored; content
  is checked while it streams in (direct uploads) or before the record changes (two-phase uploads).
  A refused upload leaves no object, no part and no record behind.
- URLs are minted fresh on every answer (`present`), valid for `presign_ttl_s`, never stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeVar

from services.common.auth import Principal
from services.common.errors import invalid, not_found
from services.common.ids import new_id
from services.upload_service.records import (
    ATTACHMENT_ID,
    AttachmentRecord,
    RecordStore,
    object_key,
)
from services.upload_service.storage import ObjectStorage
from services.upload_service.validation import (
    SNIFF_BYTES,
    ContentMismatch,
    UploadPolicy,
    check_content,
    display_name,
    is_image_type,
    storage_name,
    too_large,
)
from switchboard.app import PreconditionFailed, SwitchboardError

log = logging.getLogger(__name__)

# Ids per GetAttachments/AttachToThread call.
MAX_IDS_PER_CALL: Final = 100
# Direct uploads streaming at once per replica; each holds up to two 8 MiB parts. More wait their
# turn (their gRPC streams are simply not read, so flow control holds the senders back).
MAX_CONCURRENT_UPLOADS: Final = 16
_THREAD_ID: Final = re.compile(r"^[\x21-\x7e]{1,128}$")

_T = TypeVar("_T")


def _failed(message: str) -> SwitchboardError:
    return PreconditionFailed(message)


def _thread_id(value: str) -> str:
    if not value:
        raise invalid("thread_id is required")
    if not _THREAD_ID.fullmatch(value):
        raise invalid("thread_id is not a valid thread id")
    return value


def _ids(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """(the ids as requested, the distinct ids); at most MAX_IDS_PER_CALL distinct ones."""
    requested = list(values)
    distinct = list(dict.fromkeys(requested))
    if len(distinct) > MAX_IDS_PER_CALL:
        raise invalid(f"at most {MAX_IDS_PER_CALL} attachment ids per call")
    return requested, distinct


async def _all(calls: Iterable[Awaitable[_T]]) -> list[_T]:
    """Run the calls concurrently, let every one finish, then raise the first failure in order.

    Unlike plain gather, nothing is left running in the background when one call fails.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]  # no exceptions left


@dataclass(frozen=True, slots=True)
class Presented:
    """A record with the short-lived URLs a client needs right now."""

    record: AttachmentRecord
    preview_url: str | None
    """A presigned GET, for images."""
    upload_url: str | None
    """A presigned PUT, while the bytes have not been verified (two-phase uploads)."""


class Attachments:
    def __init__(
        self,
        storage: ObjectStorage,
        policy: UploadPolicy,
        *,
        presign_ttl_s: int,
        max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS,
    ) -> None:
        self._storage = storage
        self._records = RecordStore(storage)
        self._policy = policy
        self._ttl_s = presign_ttl_s
        self._upload_slots = asyncio.Semaphore(max_concurrent_uploads)

    @property
    def policy(self) -> UploadPolicy:
        return self._policy

    # ------------------------------------------------------------------ helpers

    async def present(self, record: AttachmentRecord) -> Presented:
        preview = upload = None
        if is_image_type(record.mime_type):
            preview = await self._storage.presigned_get(
                record.object_key, ttl_s=self._ttl_s, content_type=record.mime_type
            )
        if record.state == "pending":
            upload = await self._storage.presigned_put(record.object_key, ttl_s=self._ttl_s)
        return Presented(record, preview, upload)

    async def _owned(self, owner: Principal, attachment_id: str) -> AttachmentRecord:
        if not attachment_id:
            raise invalid("attachment_id is required")
        if not ATTACHMENT_ID.fullmatch(attachment_id):
            raise not_found("attachment")
        record = await self._records.load(owner.tenant, attachment_id)
        if record is None or record.owner != owner.user:
            raise not_found(f"attachment {attachment_id}")
        return record

    def _new_record(self, owner: Principal, name: str, mime_type: str, size: int) -> AttachmentRecord:
        attachment_id = new_id("atc")
        return AttachmentRecord(
            id=attachment_id,
            tenant=owner.tenant,
            owner=owner.user,
            name=display_name(name),
            storage_name=storage_name(name),
            mime_type=mime_type,
            size=size,
            object_key=object_key(owner.tenant, attachment_id),
            state="pending",
            created_at=datetime.now(UTC),
        )

    async def _checked(
        self, chunks: AsyncIterator[bytes], mime_type: str, declared: int
    ) -> AsyncIterator[bytes]:
        """The chunks, refused as soon as they break a rule: too many bytes, wrong content, empty.

        The first SNIFF_BYTES are held back until the content check has passed, so storage never
        sees a byte of a mismatching file. The end-of-stream checks run before the iterator is
        exhausted, so the storage layer never completes an object that is then refused.
        """
        limit = self._policy.max_bytes
        received = 0
        head: list[bytes] | None = []
        head_bytes = 0
        async for chunk in chunks:
            if not chunk:
                continue
            received += len(chunk)
            if received > limit:
                raise too_large(limit)
            if declared and received > declared:
                raise invalid(f"received more bytes than the declared size of {declared}")
            if head is None:
                yield chunk
                continue
            head.append(chunk)
            head_bytes += len(chunk)
            if head_bytes >= SNIFF_BYTES:
                sample = b"".join(held[:SNIFF_BYTES] for held in head)[:SNIFF_BYTES]
                self._check_content(sample, mime_type, complete=False)
                for held in head:
                    yield held
                head = None
        if received == 0:
            raise invalid("the file is empty")
        if declared and received != declared:
            raise invalid(f"received {received} bytes but {declared} were declared")
        if head is not None:
            self._check_content(b"".join(head), mime_type, complete=True)
            for held in head:
                yield held

    @staticmethod
    def _check_content(head: bytes, mime_type: str, *, complete: bool) -> None:
        try:
            check_content(head, mime_type, complete=complete)
        except ContentMismatch as error:
            raise invalid(str(error)) from None

    # ------------------------------------------------------------------ operations

    async def upload(
        self, owner: Principal, *, name: str, mime_type: str, size: int, chunks: AsyncIterator[bytes]
    ) -> AttachmentRecord:
        """Direct upload: validate, stream the bytes into storage, then record it as ready.

        At most `max_concurrent_uploads` stream at once; the others wait before reading any chunk.
        """
        mime_type = self._policy.check_type(mime_type)
        self._policy.check_declared_size(size, required=False)
        record = self._new_record(owner, name, mime_type, size)
        async with self._upload_slots:
            stored = await self._storage.put_stream(
                record.object_key, self._checked(chunks, mime_type, size), content_type=mime_type
            )
        record = record.model_copy(update={"state": "ready", "size": stored.size, "sha256": stored.sha256})
        try:
            await self._records.save(record)
        except BaseException:
            await self._storage.remove_quietly(record.object_key)
            raise
        log.info(
            "upload %s/%s by %s: %r, %s, %d bytes",
            owner.tenant,
            record.id,
            owner.user,
            record.storage_name,
            mime_type,
            stored.size,
        )
        return record

    async def create(self, owner: Principal, *, name: str, mime_type: str, size: int) -> AttachmentRecord:
        """Two-phase upload, phase 1: a pending record; the bytes come later through a presigned PUT."""
        mime_type = self._policy.check_type(mime_type)
        self._policy.check_declared_size(size, required=True)
        record = self._new_record(owner, name, mime_type, size)
        await self._records.save(record)
        log.info(
            "pending upload %s/%s by %s: %r, %s, %d bytes",
            owner.tenant,
            record.id,
            owner.user,
            record.storage_name,
            mime_type,
            size,
        )
        return record

    async def get(self, owner: Principal, attachment_ids: Iterable[str]) -> list[AttachmentRecord]:
        """The records in request order (a repeated id is repeated), NOT_FOUND if any is unknown."""
        requested, distinct = _ids(attachment_ids)
        records = await _all(self._owned(owner, attachment_id) for attachment_id in distinct)
        by_id = {record.id: record for record in records}
        return [by_id[attachment_id] for attachment_id in requested]

    async def attach(
        self, owner: Principal, thread_id: str, attachment_ids: Iterable[str]
    ) -> list[AttachmentRecord]:
        """Bind attachments to a thread, all or nothing (idempotent for the same thread).

        Every record is loaded and every pending upload verified (present, exactly the declared size,
        content matching the type) before any record is written. A verified-bad object is deleted
        at once; its record stays pending, so the client may upload again while its URL is valid.
        Returns the records in request order (a repeated id is repeated).
        """
        thread_id = _thread_id(thread_id)
        requested, distinct = _ids(attachment_ids)
        records = await _all(self._owned(owner, attachment_id) for attachment_id in distinct)
        for record in records:
            if record.thread_id is not None and record.thread_id != thread_id:
                raise _failed(f"attachment {record.id} belongs to another thread")
        verified = await _all(self._verified(record) for record in records)
        bound = [record.model_copy(update={"thread_id": thread_id}) for record in verified]
        changed = [new for new, old in zip(bound, records, strict=True) if new != old]
        await _all(self._records.save(record) for record in changed)
        by_id = {record.id: record for record in bound}
        return [by_id[attachment_id] for attachment_id in requested]

    async def _verified(self, record: AttachmentRecord) -> AttachmentRecord:
        """A ready record for a pending one whose object passes the checks; FAILED_PRECONDITION if not."""
        if record.state == "ready":
            return record
        info = await self._storage.stat(record.object_key)
        if info is None:
            raise _failed(f"attachment {record.id} has not been uploaded")
        problem = None
        if info.size != record.size:
            problem = f"{info.size} bytes were uploaded but {record.size} were declared"
        else:
            head = await self._storage.get_bytes(record.object_key, length=min(SNIFF_BYTES, info.size))
            try:
                check_content(head or b"", record.mime_type, complete=info.size <= SNIFF_BYTES)
            except ContentMismatch as error:
                problem = str(error)
        if problem is not None:
            log.info("refused upload %s/%s: %s", record.tenant, record.id, problem)
            await self._storage.remove_quietly(record.object_key)
            raise _failed(f"attachment {record.id}: {problem}")
        return record.model_copy(update={"state": "ready"})

    async def read(self, owner: Principal, attachment_id: str, max_bytes: int) -> AsyncGenerator[bytes, None]:
        """The bytes of a ready attachment (at most `max_bytes` when > 0), checked before streaming."""
        if max_bytes < 0:
            raise invalid("max_bytes must not be negative")
        record = await self._owned(owner, attachment_id)
        if record.state != "ready":
            raise _failed(f"attachment {attachment_id} has not been uploaded")
        limit = max_bytes if 0 < max_bytes < record.size else 0
        return self._storage.stream(record.object_key, limit=limit)

    async def delete(self, owner: Principal, attachment_id: str) -> None:
        """Remove the bytes, then the record (a failure in between leaves a record a retry removes)."""
        record = await self._owned(owner, attachment_id)
        await self._storage.remove(record.object_key)
        await self._records.delete(record)
        log.info("deleted %s/%s", owner.tenant, attachment_id)

    async def delete_thread(self, owner: Principal, thread_id: str) -> int:
        """Delete the caller's attachments bound to a thread; returns how many.

        Cost: this lists and reads every record of the tenant (one LIST page per 1000 records plus
        one GET each), as there is no index by thread. That is fine while a tenant has thousands of
        attachments; beyond that, keep an index object per thread (`threads/{tenant}/{thread}/{id}`)
        written by AttachToThread.
        """
        thread_id = _thread_id(thread_id)
        records = [
            record
            for record in await self._records.scan(owner.tenant)
            if record.owner == owner.user and record.thread_id == thread_id
        ]
        for record in records:
            await self._storage.remove(record.object_key)
            await self._records.delete(record)
        if records:
            log.info("deleted %d attachments of thread %s/%s", len(records), owner.tenant, thread_id)
        return len(records)
