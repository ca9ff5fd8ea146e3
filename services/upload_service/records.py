"""Attachment records, kept in the bucket next to the bytes so that the service holds no state.

Layout (one bucket, `MINIO_BUCKET`):

    uploads/{tenant}/{attachment_id}         a two-phase upload's bytes as the client PUT them,
                                             unchecked; the only keys presigned PUT URLs are made for
    objects/{tenant}/{attachment_id}         the checked bytes, Content-Type = the verified MIME type;
                                             written by the service only, never changed afterwards
    records/{tenant}/{attachment_id}.json    the record (an AttachmentRecord as JSON)
    threads/{tenant}/{thread}/{attachment_id}
                                             an empty marker per attachment bound to a thread (the
                                             thread id percent-encoded), so deleting a thread lists
                                             its attachments instead of every record of the tenant

Immutability. A presigned PUT URL stays valid for its whole lifetime and S3 cannot limit what is
PUT with it, so the bytes a client uploads are never the bytes the service trusts: AttachToThread
copies `uploads/…` to `objects/…` on the server side, checks the copy (which no URL can write),
records its size and deletes the upload key. Every later read and preview is of `objects/…`; a
second PUT with the old URL only creates a new `uploads/…` object that nothing reads and the sweep
removes. Direct uploads stream (checked) straight into `objects/…`.

Keys are built from the tenant (a short identifier checked by the auth layer: letters, digits and
`._@:-`, starting with a letter or digit) and the attachment id (`atc_` + 32 hex digits, minted here),
never from the user's file name. Any replica can serve any request: every RPC reads the record it
needs. The tenant prefix keeps one tenant's data together (listing, lifecycle rules, exports).

A record is "pending" from `CreateAttachment` until `AttachToThread` has verified the uploaded
object, and "ready" once the bytes are known good (a direct upload is ready at once). Records are
written whole (last writer wins): two concurrent AttachToThread calls for the same attachment and
different threads could both succeed; ChatKit attaches an attachment once, with its message, so this
is accepted rather than paying for conditional writes.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime
from typing import Final, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, ValidationError

from services.upload_service.storage import ObjectStorage

log = logging.getLogger(__name__)

OBJECTS_PREFIX: Final = "objects"
UPLOADS_PREFIX: Final = "uploads"
RECORDS_PREFIX: Final = "records"
THREADS_PREFIX: Final = "threads"
ATTACHMENT_ID: Final = re.compile(r"^atc_[0-9a-f]{32}$")
_RECORD_TYPE: Final = "application/json"
# Record loads in flight at once when a whole tenant is scanned.
_SCAN_CONCURRENCY: Final = 16

State = Literal["pending", "ready"]


def object_key(tenant: str, attachment_id: str) -> str:
    return f"{OBJECTS_PREFIX}/{tenant}/{attachment_id}"


def upload_key(tenant: str, attachment_id: str) -> str:
    return f"{UPLOADS_PREFIX}/{tenant}/{attachment_id}"


def record_key(tenant: str, attachment_id: str) -> str:
    return f"{RECORDS_PREFIX}/{tenant}/{attachment_id}.json"


def thread_prefix(tenant: str, thread_id: str) -> str:
    """The prefix of a thread's index markers (a thread id may contain `/`: it is percent-encoded)."""
    return f"{THREADS_PREFIX}/{tenant}/{quote(thread_id, safe='')}/"


def thread_marker_key(tenant: str, thread_id: str, attachment_id: str) -> str:
    return thread_prefix(tenant, thread_id) + attachment_id


class AttachmentRecord(BaseModel):
    """What the service knows about one attachment (never exposed as is)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = 1
    id: str
    tenant: str
    owner: str
    name: str
    """The name as the user gave it (truncated), shown by ChatKit."""
    storage_name: str
    """The sanitised name, for logs and download headers."""
    mime_type: str
    size: int
    """Declared size while pending; the size of the checked object at `object_key` once ready.
    Every read is bounded by it."""
    object_key: str
    """Where the checked bytes are (or will be, while pending): never a presigned PUT's target."""
    state: State
    thread_id: str | None = None
    created_at: datetime
    sha256: str | None = None
    """Hex SHA-256 of the bytes, when known (direct uploads)."""
    counted: bool = False
    """The bytes count against the owner's uploaded bytes and the tenant's stored bytes (see
    `quota`): deleting the attachment gives them back. False while pending, and for attachments
    stored before the limits existed or by a service without them."""


class RecordStore:
    """Loads and saves AttachmentRecords in object storage (see the module docstring)."""

    def __init__(self, storage: ObjectStorage) -> None:
        self._storage = storage

    async def load(self, tenant: str, attachment_id: str) -> AttachmentRecord | None:
        """The record, or None when there is none (or it is unreadable, logged as missing)."""
        data = await self._storage.get_bytes(record_key(tenant, attachment_id))
        if data is None:
            return None
        try:
            record = AttachmentRecord.model_validate_json(data)
        except ValidationError as error:
            log.warning("unreadable attachment record %s/%s: %s", tenant, attachment_id, error)
            return None
        return record if record.tenant == tenant and record.id == attachment_id else None

    async def save(self, record: AttachmentRecord) -> None:
        await self._storage.put_bytes(
            record_key(record.tenant, record.id),
            record.model_dump_json().encode(),
            content_type=_RECORD_TYPE,
        )

    async def delete(self, record: AttachmentRecord) -> None:
        await self._storage.remove(record_key(record.tenant, record.id))

    async def mark_thread(self, record: AttachmentRecord) -> None:
        """Add the record to its thread's index (before the record itself says it is bound)."""
        assert record.thread_id is not None, "only bound records are indexed"
        await self._storage.put_bytes(
            thread_marker_key(record.tenant, record.thread_id, record.id), b"", content_type=_RECORD_TYPE
        )

    async def unmark_thread(self, record: AttachmentRecord) -> None:
        if record.thread_id is not None:
            await self._storage.remove(thread_marker_key(record.tenant, record.thread_id, record.id))

    async def thread_members(self, tenant: str, thread_id: str) -> list[str]:
        """The ids indexed under a thread: one LIST, whatever the size of the tenant."""
        prefix = thread_prefix(tenant, thread_id)
        names = [key[len(prefix) :] for key in await self._storage.list_keys(prefix)]
        return [name for name in names if ATTACHMENT_ID.fullmatch(name)]

    async def scan(self, tenant: str) -> list[AttachmentRecord]:
        """Every record of a tenant: one LIST plus one GET per record (O(tenant's attachments))."""
        ids = []
        prefix = f"{RECORDS_PREFIX}/{tenant}/"
        for key in await self._storage.list_keys(prefix):
            name = key[len(prefix) :].removesuffix(".json")
            if ATTACHMENT_ID.fullmatch(name):
                ids.append(name)
        gate = asyncio.Semaphore(_SCAN_CONCURRENCY)

        async def load(attachment_id: str) -> AttachmentRecord | None:
            async with gate:
                return await self.load(tenant, attachment_id)

        loaded = await asyncio.gather(*(load(attachment_id) for attachment_id in ids))
        return [record for record in loaded if record is not None]
