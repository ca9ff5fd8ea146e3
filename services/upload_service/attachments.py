"""The upload service's operations, free of gRPC: one method per RPC, scoped by the caller.

Rules that hold for every method:
- Ownership: an attachment belongs to the (tenant, user) that created it. Anyone else gets
  NOT_FOUND, exactly as for an id that does not exist, so ids cannot be probed. Ids that are not
  `atc_` + 32 hex digits are NOT_FOUND without touching storage (INVALID_ARGUMENT when empty).
- Validation before writes: names, types and sizes are checked before anything is stored; content
  is checked while it streams in (direct uploads) or before the record changes (two-phase uploads).
  A refused upload leaves no object, no part and no record behind.
- URLs are minted fresh on every answer (`present`), valid for `presign_ttl_s`, never stored.
  Upload URLs only ever point at `uploads/…` keys; checked bytes live at `objects/…`, which only
  this service writes (see `records`), so an attachment cannot change once it has been checked.
- Reads are bounded by min(max_bytes, the recorded size): a ranged GET that stops at its limit.
- Fairness: at most `max_uploads_per_user` direct uploads per (tenant, user) stream at once (more
  are refused with RESOURCE_EXHAUSTED and a retry-after hint at once rather than queued), at most
  `max_concurrent_uploads` in all (these queue), and each chunk must arrive within
  `chunk_timeout_s` (DEADLINE_EXCEEDED otherwise). A cancelled call (client gone) gives its slots
  back at once.
- Limits (`quota`): a user request (`request=True`: an upload, a creation or a deletion the user
  asked for, not the agent service's calls within a request it admitted) takes one request of the
  user's rate; declared sizes are checked against the user's uploaded bytes of the day and the
  tenant's stored bytes before anything is stored, and the real sizes are counted once the bytes
  are stored (a direct upload's record written, a two-phase upload verified): a refusal there
  removes what was stored. Deleting a counted attachment gives its bytes back, after its record is
  gone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeVar

from services.common.auth import Principal
from services.common.errors import invalid, not_found
from services.common.ids import new_id
from services.upload_service.quota import UploadQuota
from services.upload_service.records import (
    ATTACHMENT_ID,
    AttachmentRecord,
    RecordStore,
    object_key,
    record_key,
    thread_marker_key,
    upload_key,
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
from switchboard.app import LimitExceeded, NotFound, PreconditionFailed, SwitchboardError, TimedOut

log = logging.getLogger(__name__)

# Ids per GetAttachments/AttachToThread call.
MAX_IDS_PER_CALL: Final = 100
# Direct uploads streaming at once per replica; each holds up to two 8 MiB parts. More wait their
# turn (their gRPC streams are simply not read, so flow control holds the senders back).
MAX_CONCURRENT_UPLOADS: Final = 16
MAX_UPLOADS_PER_USER: Final = 4
CHUNK_TIMEOUT_S: Final = 60.0
BUSY_RETRY_AFTER_S: Final = 2.0
"""The hint of a refusal for too many uploads at once: one of them must end first."""
_THREAD_ID: Final = re.compile(r"^[\x21-\x7e]{1,128}$")

_T = TypeVar("_T")


def _failed(message: str) -> SwitchboardError:
    return PreconditionFailed(message)


class TooManyUploads(LimitExceeded):
    """A user with `max_uploads_per_user` direct uploads streaming (RESOURCE_EXHAUSTED with a
    retry-after hint: HTTP 429 at the edge)."""

    retry_after_s = BUSY_RETRY_AFTER_S


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
        max_uploads_per_user: int = MAX_UPLOADS_PER_USER,
        chunk_timeout_s: float = CHUNK_TIMEOUT_S,
        quota: UploadQuota | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._storage = storage
        self._quota = quota or UploadQuota(None)
        self._records = RecordStore(storage)
        self._policy = policy
        self._ttl_s = presign_ttl_s
        self._upload_slots = asyncio.Semaphore(max_concurrent_uploads)
        self._per_user = max_uploads_per_user
        self._uploading: Counter[tuple[str, str]] = Counter()
        self._chunk_timeout_s = chunk_timeout_s
        self._now = now

    @property
    def policy(self) -> UploadPolicy:
        return self._policy

    # ------------------------------------------------------------------ helpers

    async def present(self, record: AttachmentRecord) -> Presented:
        """Fresh URLs: while pending, PUT and preview the upload key (the client's own unchecked
        bytes, for its composer); once ready, preview the checked object and offer no PUT."""
        pending = record.state == "pending"
        source = upload_key(record.tenant, record.id) if pending else record.object_key
        preview = upload = None
        if is_image_type(record.mime_type):
            preview = await self._storage.presigned_get(
                source, ttl_s=self._ttl_s, content_type=record.mime_type
            )
        if pending:
            upload = await self._storage.presigned_put(source, ttl_s=self._ttl_s)
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
            created_at=self._now(),
        )

    async def _paced(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The chunks, cut with TimedOut when the next one takes longer than `chunk_timeout_s`."""
        iterator = aiter(chunks)
        while True:
            try:
                chunk = await asyncio.wait_for(anext(iterator), self._chunk_timeout_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TimedOut(
                    f"the upload stalled: no data for {self._chunk_timeout_s:g} s, so it was cut off"
                ) from None
            yield chunk

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
        self,
        owner: Principal,
        *,
        name: str,
        mime_type: str,
        size: int,
        chunks: AsyncIterator[bytes],
        wanted: Callable[[], bool] = lambda: True,
        accepted: Callable[[], Awaitable[None]] | None = None,
        request: bool = True,
    ) -> AttachmentRecord:
        """Direct upload: validate, stream the bytes into storage, then record it as ready.

        The checked bytes go straight to the final key (`object_key`): no URL can write there, so
        no copy is needed. A user with `max_uploads_per_user` uploads streaming is refused
        (TooManyUploads) before anything is read; at most `max_concurrent_uploads` stream at once
        in all, the others wait before reading any chunk. `accepted` is awaited once the name,
        type, declared size and the user's limits passed, before any chunk is read.

        Limits: with `request`, one request of the user's rate. The declared size (at least one
        byte when unknown: the edge streams without one) must fit the user's day and the tenant's
        storage before any chunk is read; the stored size is counted after the record is written,
        and a refusal then removes the record and the object again (`LimitReached`).
        """
        mime_type = self._policy.check_type(mime_type)
        self._policy.check_declared_size(size, required=False)
        record = self._new_record(owner, name, mime_type, size)
        user = (owner.tenant, owner.user)
        if self._uploading[user] >= self._per_user:
            raise TooManyUploads(
                f"too many uploads in progress: at most {self._per_user} at once per user; "
                "retry when one has finished"
            )
        self._uploading[user] += 1
        try:
            await self._quota.admit(owner, max(size, 1), request=request)
            if accepted is not None:
                await accepted()
            async with self._upload_slots:
                stored = await self._storage.put_stream(
                    record.object_key,
                    self._checked(self._paced(chunks), mime_type, size),
                    content_type=mime_type,
                )
        finally:
            self._uploading[user] -= 1
            if self._uploading[user] <= 0:
                del self._uploading[user]
        record = record.model_copy(
            update={
                "state": "ready",
                "size": stored.size,
                "sha256": stored.sha256,
                "counted": self._quota.counts,
            }
        )
        try:
            if not wanted():  # the caller is gone: the bytes may be a truncated file
                raise asyncio.CancelledError("the client cancelled the upload")
            await self._records.save(record)
            await self._quota.count(owner, record.size)
        except BaseException:
            # The record first: a record whose object is gone would be worse than an orphaned
            # object, which the sweep removes.
            await self._storage.remove_quietly(record_key(record.tenant, record.id), record.object_key)
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

    async def create(
        self, owner: Principal, *, name: str, mime_type: str, size: int, request: bool = True
    ) -> AttachmentRecord:
        """Two-phase upload, phase 1: a pending record; the bytes come later through a presigned PUT.

        With `request`, one request of the user's rate; the declared size must fit the user's day
        and the tenant's storage now (it is counted when `attach` has verified the bytes)."""
        mime_type = self._policy.check_type(mime_type)
        self._policy.check_declared_size(size, required=True)
        await self._quota.admit(owner, size, request=request)
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

        Every record is loaded and every pending upload copied to its final key and verified there
        (exactly the declared size, content matching the type) before any record is written. A
        verified-bad upload is deleted at once; its record stays pending, so the client may upload
        again while its URL is valid. Thread index markers are written before the records that
        they index; the upload keys of newly checked attachments are deleted after them.
        Returns the records in request order (a repeated id is repeated).

        Limits: the agent service calls this within the user's request, so it takes no request of
        the user's rate. The pending uploads' declared sizes must fit the user's day and the
        tenant's storage before anything is copied; once verified, their bytes are counted
        together, and a refusal removes the verified copies again (`LimitReached`): the records
        stay pending, so the same message can be sent again once there is room.
        """
        thread_id = _thread_id(thread_id)
        requested, distinct = _ids(attachment_ids)
        records = await _all(self._owned(owner, attachment_id) for attachment_id in distinct)
        for record in records:
            if record.thread_id is not None and record.thread_id != thread_id:
                raise _failed(f"attachment {record.id} belongs to another thread")
        pending = [record for record in records if record.state == "pending"]
        declared = sum(record.size for record in pending)
        await self._quota.admit(owner, declared, request=False)
        verified = await _all(self._verified(record) for record in records)
        if pending:
            try:
                await self._quota.count(owner, declared)  # verified: the real sizes are the declared ones
            except BaseException:
                await self._storage.remove_quietly(*(record.object_key for record in pending))
                raise
        fresh = {record.id for record in pending} if self._quota.counts else set()
        bound = [
            record.model_copy(
                update={"thread_id": thread_id, "counted": record.counted or record.id in fresh}
            )
            for record in verified
        ]
        changed = [new for new, old in zip(bound, records, strict=True) if new != old]
        newly_bound = [new for new, old in zip(bound, records, strict=True) if old.thread_id is None]
        await self._quota.shielded(self._bind(newly_bound, changed, fresh))
        checked = [upload_key(old.tenant, old.id) for old in records if old.state == "pending"]
        if checked:
            await self._storage.remove_quietly(*checked)
        by_id = {record.id: record for record in bound}
        return [by_id[attachment_id] for attachment_id in requested]

    async def _bind(
        self, newly_bound: list[AttachmentRecord], changed: list[AttachmentRecord], fresh: set[str]
    ) -> None:
        """Write the thread markers, then the records. The bytes counted by this call (`fresh`) of
        records that could not be written are given back: those records stay pending."""
        try:
            await _all(self._records.mark_thread(record) for record in newly_bound)
        except BaseException:
            await self._quota.release(record for record in changed if record.id in fresh)
            raise
        results = await asyncio.gather(
            *(self._records.save(record) for record in changed), return_exceptions=True
        )
        failures = [
            (record, result)
            for record, result in zip(changed, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failures:
            await self._quota.release(record for record, _ in failures if record.id in fresh)
            raise failures[0][1]

    async def _verified(self, record: AttachmentRecord) -> AttachmentRecord:
        """A ready record for a pending one whose upload, copied to the final key, passes the
        checks there; FAILED_PRECONDITION if not.

        The upload key's size is checked first, so an oversized upload is never copied. The
        content and the final size are checked on the copy, which no presigned URL can write:
        what passed is exactly what every later read gets, even if the client PUTs again while
        this runs (the copy is of one version; a later PUT only changes the upload key).
        """
        if record.state == "ready":
            return record
        source = upload_key(record.tenant, record.id)
        info = await self._storage.stat(source)
        if info is None:
            raise _failed(f"attachment {record.id} has not been uploaded")
        problem = None
        if info.size != record.size:
            problem = f"{info.size} bytes were uploaded but {record.size} were declared"
        else:
            try:
                await self._storage.copy(source, record.object_key, content_type=record.mime_type)
            except NotFound:
                raise _failed(f"attachment {record.id} has not been uploaded") from None
            final = await self._storage.stat(record.object_key)
            size = final.size if final is not None else 0
            if size != record.size:
                problem = f"{size} bytes were uploaded but {record.size} were declared"
            else:
                head = await self._storage.get_bytes(record.object_key, length=min(SNIFF_BYTES, size))
                try:
                    check_content(head or b"", record.mime_type, complete=size <= SNIFF_BYTES)
                except ContentMismatch as error:
                    problem = str(error)
        if problem is not None:
            log.info("refused upload %s/%s: %s", record.tenant, record.id, problem)
            await self._storage.remove_quietly(source, record.object_key)
            raise _failed(f"attachment {record.id}: {problem}")
        return record.model_copy(update={"state": "ready"})

    async def read(self, owner: Principal, attachment_id: str, max_bytes: int) -> AsyncGenerator[bytes, None]:
        """The bytes of a ready attachment, checked before streaming: at most min(max_bytes when
        > 0, the recorded size), fetched with a ranged GET that stops at that limit."""
        if max_bytes < 0:
            raise invalid("max_bytes must not be negative")
        record = await self._owned(owner, attachment_id)
        if record.state != "ready":
            raise _failed(f"attachment {attachment_id} has not been uploaded")
        limit = min(max_bytes, record.size) if max_bytes > 0 else record.size
        if limit <= 0:
            return _empty()
        return self._storage.stream(record.object_key, limit=limit)

    async def delete(self, owner: Principal, attachment_id: str, *, request: bool = True) -> None:
        """Remove the bytes, then the record (a failure in between leaves a record a retry removes),
        then give the counted bytes back. With `request`, one request of the user's rate."""
        await self._quota.admit(owner, 0, request=request)
        record = await self._owned(owner, attachment_id)
        await self._quota.shielded(self._remove(record))
        log.info("deleted %s/%s", owner.tenant, attachment_id)

    async def _remove(self, record: AttachmentRecord) -> None:
        """Both keys of the bytes, the thread marker, the record itself, then its counted bytes
        (released only once the record is gone: a failure before releases nothing, and the record
        cannot be deleted again)."""
        await self._storage.remove(record.object_key)
        await self._storage.remove(upload_key(record.tenant, record.id))
        await self._records.unmark_thread(record)
        await self._records.delete(record)
        await self._quota.release([record])

    async def delete_thread(self, owner: Principal, thread_id: str) -> int:
        """Delete the caller's attachments bound to a thread; returns how many.

        Cost: one LIST of the thread's index markers plus one GET per attachment of the thread,
        whatever the size of the tenant. A marker whose record is gone (or now says another thread)
        is removed; one for another user's attachment is left alone. The agent service calls this
        within the user's request: no request of the user's rate is taken. Counted bytes are given
        back attachment by attachment, as each record is deleted.
        """
        thread_id = _thread_id(thread_id)
        ids = await self._records.thread_members(owner.tenant, thread_id)
        loaded = await _all(self._records.load(owner.tenant, attachment_id) for attachment_id in ids)
        deleted = 0
        for attachment_id, record in zip(ids, loaded, strict=True):
            if record is None or record.thread_id != thread_id:
                await self._storage.remove(thread_marker_key(owner.tenant, thread_id, attachment_id))
            elif record.owner == owner.user:
                await self._quota.shielded(self._remove(record))
                deleted += 1
        if deleted:
            log.info("deleted %d attachments of thread %s/%s", deleted, owner.tenant, thread_id)
        return deleted


async def _empty() -> AsyncGenerator[bytes, None]:
    return
    yield b""  # an async generator that yields nothing
