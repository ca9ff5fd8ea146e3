"""Fair direct uploads through the real edge and upload service: a per-user limit answered 429 with
Retry-After, slow-loris uploads cut (408) without blocking anyone else, slots freed on disconnect.

A slow-loris client is a raw socket that sends the request head and the start of the multipart
body, then stalls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support.processes import Stack, running_stack

CHUNK_TIMEOUT_S = 4.0
PER_USER = 4
BOUNDARY = "slowlorisboundary"


@pytest.fixture(scope="module")
def fair_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("fair"),
        SWITCHBOARD_UPLOAD_CHUNK_TIMEOUT_S=str(CHUNK_TIMEOUT_S),
        SWITCHBOARD_UPLOAD_MAX_PER_USER=str(PER_USER),
    ) as stack:
        yield stack


class SlowLoris:
    """An upload that sends a few bytes of its file, then nothing."""

    def __init__(self, stack: Stack, user: str) -> None:
        self.stack, self.user = stack, user
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def start(self) -> SlowLoris:
        url = urlsplit(self.stack.edge_url)
        assert url.hostname and url.port
        self.reader, self.writer = await asyncio.open_connection(url.hostname, url.port)
        preamble = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        length = len(preamble) + 1_000_000 + len(f"\r\n--{BOUNDARY}--\r\n")
        head = (
            f"POST /chatkit/api/upload HTTP/1.1\r\nHost: {url.netloc}\r\n"
            f"Authorization: Bearer {self.stack.token(user=self.user)}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
        self.writer.write(head + preamble + b"a slow start ")
        await self.writer.drain()
        return self

    async def status(self, timeout_s: float) -> int:
        assert self.reader is not None
        line = await asyncio.wait_for(self.reader.readline(), timeout_s)
        return int(line.split()[1])

    def close(self) -> None:
        assert self.writer is not None
        self.writer.transport.abort()  # the client goes away without a word


async def _upload(http: aiohttp.ClientSession, stack: Stack, user: str) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("file", b"quick and small\n", filename="quick.txt", content_type="text/plain")
    async with http.post(
        f"{stack.edge_url}/chatkit/api/upload", data=form, headers=stack.headers(user=user)
    ) as reply:
        await reply.read()
        return reply


async def _held(stack: Stack, user: str, count: int) -> list[SlowLoris]:
    held = [await SlowLoris(stack, user).start() for _ in range(count)]
    await asyncio.sleep(0.5)  # the edge has opened their Upload calls
    return held


async def test_a_slow_loris_is_cut_without_blocking_others_and_the_fifth_upload_is_429(
    http: aiohttp.ClientSession, fair_stack: Stack
) -> None:
    started = time.monotonic()
    slow = await _held(fair_stack, "alice", PER_USER)

    fifth = await _upload(http, fair_stack, "alice")
    assert fifth.status == 429
    assert fifth.headers["Retry-After"].isdigit()
    # Another user is not held up by alice's stalled uploads.
    other = await _upload(http, fair_stack, "bob")
    assert other.status == 200
    assert time.monotonic() - started < CHUNK_TIMEOUT_S

    statuses = await asyncio.gather(*(s.status(CHUNK_TIMEOUT_S * 3) for s in slow))
    assert statuses == [408] * PER_USER
    for s in slow:
        s.close()
    # Their slots are back.
    assert (await _upload(http, fair_stack, "alice")).status == 200


async def test_an_aborted_upload_frees_its_slot_at_once(
    http: aiohttp.ClientSession, fair_stack: Stack
) -> None:
    slow = await _held(fair_stack, "carol", PER_USER)
    assert (await _upload(http, fair_stack, "carol")).status == 429
    slow[0].close()
    closed = time.monotonic()
    while (reply := await _upload(http, fair_stack, "carol")).status == 429:
        assert time.monotonic() - closed < CHUNK_TIMEOUT_S / 2, "the slot was not released"
        await asyncio.sleep(0.05)
    assert reply.status == 200
    for s in slow[1:]:
        s.close()
