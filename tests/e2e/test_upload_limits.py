"""The upload byte limits through real processes: the edge, two upload service replicas and the
agent service sharing one database (a SQLite file, or a PostgreSQL database), on a real S3 server.

- a user's uploaded bytes per UTC day (`SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY`, 5000 bytes here)
  and a tenant's stored bytes (per-tenant overrides set through `LimitsStore`, as `switchboard
  limits set` does): 429 with Retry-After and a message naming the limit, nothing stored for the
  refused upload;
- a two-phase upload over the limit is refused when the message that uses it is sent (the agent
  service's threads.create), before the stream starts;
- the accounting (`LimitsStore.usage`) equals the sizes accepted, exactly;
- two upload replicas racing for a tenant's last bytes never store more than the limit.

Each test works in a tenant of its own; the edge balances the uploads over both replicas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from chatkit.types import Attachment, FileAttachment, ThreadCreatedEvent, ThreadItemDoneEvent, UserMessageItem
from minio import Minio
from pydantic import TypeAdapter

from services.common.auth import Principal
from services.common.config import Settings
from services.limits import LimitsStore, usage_rows_total
from tests.support.chatkit_wire import call, error_of, request, stream, user_input
from tests.support.postgres import shared_postgres
from tests.support.processes import Stack, running_stack

ATTACHMENT = TypeAdapter[Attachment](Attachment)
OPERATOR = Principal(tenant="ops", user="test", role="platform-admin")
PER_DAY = 5000
"""The stack's default `upload_bytes_per_day` (tenants without an override)."""


@dataclass
class Limited:
    stack: Stack
    limits: LimitsStore
    s3: Minio

    def keys(self, tenant: str) -> set[str]:
        """Every key of the tenant in the stack's bucket (bytes, records, thread markers)."""
        return {
            str(item.object_name)
            for item in self.s3.list_objects(self.stack.bucket, recursive=True)
            if f"/{tenant}/" in str(item.object_name)
        }

    async def usage(self, tenant: str, user: str | None = None) -> tuple[int, int]:
        """(uploaded bytes today, stored bytes now) as the shared database has them."""
        rows, stored = await self.limits.usage(tenant, user=user)
        return usage_rows_total(rows)["uploaded_bytes"], stored

    async def set(self, tenant: str, **values: int) -> None:
        await self.limits.set_limits(OPERATOR, tenant, values, via="test")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def limited(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Limited]:
    data_dir = tmp_path_factory.mktemp(f"upload-limits-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{data_dir / 'shared.sqlite3'}"
    else:
        database_url = shared_postgres().create_database("uploads")
    with running_stack(
        data_dir,
        database_url=database_url,
        upload_replicas=2,
        SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY=str(PER_DAY),
    ) as stack:
        limits = LimitsStore(Settings(SWITCHBOARD_DATABASE_URL=database_url), application_name="test")
        await limits.open()
        try:
            yield Limited(stack, limits, stack.s3.client())
        finally:
            await limits.close()


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    def accepted(self) -> FileAttachment:
        """The ChatKit attachment of an accepted direct upload."""
        assert self.status == 200, self.body
        attachment = ATTACHMENT.validate_python(self.body)
        assert isinstance(attachment, FileAttachment) and attachment.upload_descriptor is None
        return attachment

    def refused(self, limit: str) -> int:
        """Check a 429 whose message names `limit`; returns its Retry-After (seconds)."""
        assert self.status == 429, self.body
        code, message = error_of(self.body)
        assert code == "RESOURCE_EXHAUSTED" and f"limit reached ({limit})" in message, message
        retry_after = int(self.headers["Retry-After"])
        assert retry_after >= 1
        return retry_after


async def _upload(
    http: aiohttp.ClientSession, stack: Stack, size: int, tenant: str, user: str = "alice"
) -> Reply:
    """A direct upload of `size` bytes through the edge."""
    form = aiohttp.FormData()
    form.add_field("file", b"x" * size, filename="notes.txt", content_type="text/plain")
    async with http.post(
        f"{stack.edge_url}/chatkit/api/upload", data=form, headers=stack.headers(tenant=tenant, user=user)
    ) as reply:
        return Reply(reply.status, await reply.json(), dict(reply.headers))


async def _post(http: aiohttp.ClientSession, stack: Stack, tenant: str, body: dict[str, Any]) -> Reply:
    """A ChatKit request through the edge (its answer read whole)."""
    async with http.post(
        f"{stack.edge_url}/chatkit/api", json=body, headers=stack.headers(tenant=tenant)
    ) as reply:
        return Reply(reply.status, json.loads(await reply.read()), dict(reply.headers))


async def test_the_daily_upload_byte_limit_is_429_and_stores_nothing(
    http: aiohttp.ClientSession, limited: Limited
) -> None:
    stack, tenant = limited.stack, "t-day"
    (await _upload(http, stack, 2000, tenant)).accepted()
    (await _upload(http, stack, 2000, tenant)).accepted()
    keys = limited.keys(tenant)
    retry_after = (await _upload(http, stack, 2000, tenant)).refused("upload_bytes_per_day")
    assert retry_after <= 86_400  # the day starts over at midnight UTC
    assert limited.keys(tenant) == keys  # no object, no record for the refused upload
    assert await limited.usage(tenant) == (4000, 4000)

    # Another user of the tenant has a day of their own; the last 1000 bytes still fit alice's.
    (await _upload(http, stack, 2000, tenant, user="bob")).accepted()
    (await _upload(http, stack, 1000, tenant)).accepted()
    (await _upload(http, stack, 1, tenant)).refused("upload_bytes_per_day")
    assert await limited.usage(tenant, "alice") == (5000, 7000)
    assert await limited.usage(tenant, "bob") == (2000, 7000)


async def test_the_tenant_storage_limit_frees_up_when_an_attachment_is_deleted(
    http: aiohttp.ClientSession, limited: Limited
) -> None:
    stack, tenant = limited.stack, "t-stored"
    await limited.set(tenant, stored_bytes=3000, upload_bytes_per_day=0)  # 0: no daily limit
    first = (await _upload(http, stack, 1500, tenant)).accepted()
    (await _upload(http, stack, 1500, tenant, user="bob")).accepted()
    keys = limited.keys(tenant)
    for user in ("alice", "carol"):  # the tenant's storage is full for every user
        reply = await _upload(http, stack, 100, tenant, user=user)
        reply.refused("stored_bytes")
        assert "delete some first" in error_of(reply.body)[1]
    assert limited.keys(tenant) == keys

    deleted = await call(
        http,
        stack.edge_url,
        request("attachments.delete", attachment_id=first.id),
        stack.headers(tenant=tenant),
    )
    assert deleted == {}
    assert await limited.usage(tenant) == (3000, 1500)
    (await _upload(http, stack, 1500, tenant, user="carol")).accepted()
    assert await limited.usage(tenant) == (4500, 3000)
    (await _upload(http, stack, 1, tenant)).refused("stored_bytes")


async def _two_phase(http: aiohttp.ClientSession, stack: Stack, tenant: str, size: int) -> Attachment:
    """attachments.create through the edge, then the bytes PUT to the presigned URL."""
    created = ATTACHMENT.validate_python(
        await call(
            http,
            stack.edge_url,
            request("attachments.create", name="report.txt", size=size, mime_type="text/plain"),
            stack.headers(tenant=tenant),
        )
    )
    descriptor = created.upload_descriptor
    assert descriptor is not None and descriptor.method == "PUT"
    async with http.put(str(descriptor.url), data=b"y" * size, headers=descriptor.headers) as put:
        assert put.status == 200, await put.text()
    return created


async def test_a_two_phase_upload_over_the_limit_is_refused_when_the_message_is_sent(
    http: aiohttp.ClientSession, limited: Limited
) -> None:
    stack, tenant = limited.stack, "t-phase"
    await limited.set(tenant, upload_bytes_per_day=1000)
    too_big = request("attachments.create", name="big.txt", size=1001, mime_type="text/plain")
    (await _post(http, stack, tenant, too_big)).refused("upload_bytes_per_day")  # cannot fit
    first = await _two_phase(http, stack, tenant, 800)
    second = await _two_phase(http, stack, tenant, 800)  # fits on its own: nothing counted yet
    assert await limited.usage(tenant) == (0, 0)
    keys = limited.keys(tenant)

    both = request("threads.create", input={**user_input("Read both"), "attachments": [first.id, second.id]})
    # 1600 > 1000: refused before the stream started.
    (await _post(http, stack, tenant, both)).refused("upload_bytes_per_day")
    assert limited.keys(tenant) == keys  # no verified copy, no thread marker
    assert await limited.usage(tenant) == (0, 0)
    threads = await call(http, stack.edge_url, request("threads.list"), stack.headers(tenant=tenant))
    assert threads["data"] == []

    # The first one alone fits: the same pending attachment is sent, without uploading it again.
    events = await stream(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("Read this"), "attachments": [first.id]}),
        stack.headers(tenant=tenant),
    )
    assert isinstance(events[0], ThreadCreatedEvent)
    message = next(
        e.item for e in events if isinstance(e, ThreadItemDoneEvent) and isinstance(e.item, UserMessageItem)
    )
    assert [attachment.id for attachment in message.attachments] == [first.id]
    assert await limited.usage(tenant) == (800, 800)
    # Deleting the thread deletes its attachments and gives their bytes back.
    await call(
        http,
        stack.edge_url,
        request("threads.delete", thread_id=events[0].thread.id),
        stack.headers(tenant=tenant),
    )
    assert await limited.usage(tenant) == (800, 0)


async def test_the_accounting_equals_the_accepted_sizes(
    http: aiohttp.ClientSession, limited: Limited
) -> None:
    stack, tenant = limited.stack, "t-usage"
    await limited.set(tenant, upload_bytes_per_day=4000, stored_bytes=0)
    accepted: dict[str, int] = {"alice": 0, "bob": 0}
    for user, size in [
        ("alice", 1234),
        ("bob", 777),
        ("alice", 2000),
        ("alice", 999),
        ("bob", 3001),
        ("alice", 1),
    ]:
        reply = await _upload(http, stack, size, tenant, user=user)
        if accepted[user] + size <= 4000:
            reply.accepted()
            accepted[user] += size
        else:
            reply.refused("upload_bytes_per_day")
    attached = await _two_phase(http, stack, tenant, 321)
    await stream(
        http,
        stack.edge_url,
        request("threads.create", input={**user_input("Here"), "attachments": [attached.id]}),
        stack.headers(tenant=tenant),
    )
    accepted["alice"] += 321
    assert accepted == {"alice": 3556, "bob": 3778}

    rows, stored = await limited.limits.usage(tenant)
    assert {row.user: row.uploaded_bytes for row in rows if row.model == ""} == accepted
    assert usage_rows_total(rows)["uploaded_bytes"] == stored == sum(accepted.values())


async def test_two_replicas_racing_for_the_last_bytes_never_store_more_than_the_limit(
    http: aiohttp.ClientSession, limited: Limited
) -> None:
    stack, tenant = limited.stack, "t-race"
    await limited.set(tenant, stored_bytes=10_000, upload_bytes_per_day=0)
    before = {name: stack.services[name].log_text() for name in stack.upload_envs}
    answers = await asyncio.gather(
        *(_upload(http, stack, 1000, tenant, user=f"user{index}") for index in range(30))
    )
    accepted = [reply.accepted() for reply in answers if reply.status == 200]
    assert len(accepted) == 10, [reply.status for reply in answers]
    for reply in answers:
        if reply.status != 200:
            reply.refused("stored_bytes")
    assert await limited.usage(tenant) == (10_000, 10_000)
    objects = {key for key in limited.keys(tenant) if key.startswith("objects/")}
    assert objects == {f"objects/{tenant}/{attachment.id}" for attachment in accepted}
    # Both replicas took part in the race.
    for name, log in before.items():
        assert len(stack.services[name].log_text()) > len(log), f"{name} served none of the uploads"
