"""The sweep: removes what no attachment will ever use, and completes the thread index.

What goes (`SWITCHBOARD_UPLOAD_PENDING_TTL_S`, 24 h by default, is "stale"):
- attachments never attached to a thread whose record is older than the TTL: two-phase uploads
  never used by a message (pending) and direct uploads never sent (ready but unbound, including a
  truncated one whose caller went away): their bytes (both keys), then the record;
- `uploads/…` keys without a record (a PUT after attachments.delete) at once, and those of an
  attachment already checked (a second PUT with a still valid URL) at once: nothing reads them;
- `objects/…` keys without a record, older than the TTL (younger ones may be a direct upload
  whose record is being written);
- thread index markers whose record is gone, older than the TTL.
A record older than the TTL that is bound to a thread but has no index marker (attached before
the index existed) gets its marker. A removed attachment whose bytes were counted (a direct upload
never sent) gives them back to its tenant's stored bytes once its record is gone (`quota`).

Cost: one LIST of every key of the bucket (1000 keys per request) plus one GET per candidate
record: records older than the TTL without a thread marker, and records with an `uploads/` key.
Bound attachments cost nothing beyond the LIST. Keys are listed before records, so an upload key
PUT between the two listings always has its record (records are created before their URLs).

Runs every `SWITCHBOARD_UPLOAD_SWEEP_INTERVAL_S` in each upload service replica (replicas sweeping
at once do the same idempotent deletes), and on demand with `switchboard sweep [--dry-run]`.
A bucket lifecycle rule (set when the service starts, where the store supports one) expires
`uploads/` keys after the TTL in whole days and aborts multipart uploads unfinished after a day.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from services.upload_service.quota import UploadQuota
from services.upload_service.records import (
    ATTACHMENT_ID,
    OBJECTS_PREFIX,
    RECORDS_PREFIX,
    THREADS_PREFIX,
    UPLOADS_PREFIX,
    AttachmentRecord,
    RecordStore,
    upload_key,
)
from services.upload_service.storage import ListedObject, ObjectStorage, abort_multipart_rule, expiry_rule
from switchboard.app import SwitchboardError

log = logging.getLogger(__name__)

UPLOADS_RULE_ID: Final = "switchboard-stale-uploads"
MULTIPART_RULE_ID: Final = "switchboard-abort-multipart"
_LOAD_CONCURRENCY: Final = 16

Key = tuple[str, str]  # (tenant, attachment id)


@dataclass
class SweepReport:
    removed: list[str] = field(default_factory=list)
    """Every key removed (or, in a dry run, that would be)."""
    indexed: list[str] = field(default_factory=list)
    """Thread index markers written for attachments bound before the index existed."""


def _attachment(key: str, prefix: str) -> Key | None:
    """(tenant, id) of `prefix/{tenant}/{id}` (or `{id}.json` for records), None otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != prefix:
        return None
    name = parts[2].removesuffix(".json") if prefix == RECORDS_PREFIX else parts[2]
    return (parts[1], name) if ATTACHMENT_ID.fullmatch(name) else None


def _marker(key: str) -> Key | None:
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != THREADS_PREFIX or not ATTACHMENT_ID.fullmatch(parts[3]):
        return None
    return parts[1], parts[3]


async def lifecycle(storage: ObjectStorage, pending_ttl_s: int) -> bool:
    """Ask the store to expire `uploads/` after the TTL (whole days, at least one) and to abort
    multipart uploads left unfinished for a day; False when it refuses (logged)."""
    days = max(1, math.ceil(pending_ttl_s / 86_400))
    return await storage.set_lifecycle_rules(
        [expiry_rule(UPLOADS_RULE_ID, f"{UPLOADS_PREFIX}/", days), abort_multipart_rule(MULTIPART_RULE_ID, 1)]
    )


async def _removed_then_released(
    removal: Awaitable[None], quota: UploadQuota, record: AttachmentRecord
) -> None:
    """`removal` (the record last), then the record's counted bytes back."""
    await removal
    await quota.release([record])


async def sweep(
    storage: ObjectStorage,
    *,
    pending_ttl_s: int,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    dry_run: bool = False,
    quota: UploadQuota | None = None,
) -> SweepReport:
    """One sweep of the whole bucket (see the module docstring); `quota` gets the counted bytes of
    removed attachments back (without it, they stay counted)."""
    report = SweepReport()
    records = RecordStore(storage)
    uploads = await storage.list_objects(f"{UPLOADS_PREFIX}/")
    objects = await storage.list_objects(f"{OBJECTS_PREFIX}/")
    markers = await storage.list_objects(f"{THREADS_PREFIX}/")
    listed = await storage.list_objects(f"{RECORDS_PREFIX}/")
    cutoff = now() - timedelta(seconds=pending_ttl_s)

    record_age = {
        key: item.last_modified for item in listed if (key := _attachment(item.key, RECORDS_PREFIX))
    }
    marked = {key for item in markers if (key := _marker(item.key))}
    uploaded = {key: item for item in uploads if (key := _attachment(item.key, UPLOADS_PREFIX))}
    candidates = {key for key, modified in record_age.items() if modified < cutoff and key not in marked}
    candidates |= uploaded.keys() & record_age.keys()

    gate = asyncio.Semaphore(_LOAD_CONCURRENCY)

    async def load(key: Key) -> AttachmentRecord | None:
        async with gate:
            return await records.load(*key)

    ordered = sorted(candidates)
    loaded = dict(zip(ordered, await asyncio.gather(*(load(key) for key in ordered)), strict=True))
    gone: set[Key] = set()
    existing = {item.key for item in (*uploads, *objects)}

    async def remove(*keys: str) -> None:
        report.removed.extend(keys)
        if not dry_run:
            for key in keys:
                await storage.remove(key)

    for key, record in loaded.items():
        if record is None:
            continue
        stale = record.thread_id is None and record_age[key] < cutoff
        if stale:
            # Bytes first, record last: an interrupted sweep leaves a record the next one finds.
            present = [k for k in (record.object_key, upload_key(*key)) if k in existing]
            removal = remove(*present, f"{RECORDS_PREFIX}/{key[0]}/{key[1]}.json")
            if quota is None or dry_run:
                await removal
            else:  # the removal and the release finish together, even when the sweep is cancelled
                await quota.shielded(_removed_then_released(removal, quota, record))
            gone.add(key)
            continue
        if record.thread_id is not None and key not in marked and record_age[key] < cutoff:
            report.indexed.append(record.id)
            if not dry_run:
                await records.mark_thread(record)
        if record.state == "ready" and key in uploaded:
            await remove(uploaded[key].key)  # a PUT after the check: nothing reads it

    def orphaned(item: ListedObject, key: Key | None, *, young_ok: bool) -> bool:
        if key is None or key in gone or key in record_age:
            return False
        return young_ok or item.last_modified < cutoff

    for item in uploads:
        if orphaned(item, _attachment(item.key, UPLOADS_PREFIX), young_ok=True):
            await remove(item.key)
    for item in objects:
        if orphaned(item, _attachment(item.key, OBJECTS_PREFIX), young_ok=False):
            await remove(item.key)
    for item in markers:
        if orphaned(item, _marker(item.key), young_ok=False):
            await remove(item.key)
    return report


async def sweep_periodically(
    storage: ObjectStorage,
    *,
    interval_s: float,
    pending_ttl_s: int,
    ready: asyncio.Event,
    quota: UploadQuota | None = None,
) -> None:
    """Sweep every `interval_s` once the bucket is ready; failures are logged and retried next time."""
    await ready.wait()
    while True:
        await asyncio.sleep(interval_s)
        try:
            report = await sweep(storage, pending_ttl_s=pending_ttl_s, quota=quota)
        except SwitchboardError as error:
            log.warning("sweep of bucket %s failed (%s); next try in %g s", storage.bucket, error, interval_s)
            continue
        if report.removed or report.indexed:
            log.info(
                "sweep of bucket %s: removed %d keys, indexed %d attachments",
                storage.bucket,
                len(report.removed),
                len(report.indexed),
            )
