"""The upload scenario: one large file through the edge vs. a direct `put_object`, same S3 server.

- **edge**: `POST /chatkit/api/upload` (multipart field `file`, `text/csv`), streamed by the edge
  into the upload service's client-streaming RPC and from there into an S3 multipart upload;
- **direct**: the `minio` SDK's `put_object` of the same file (5 MiB parts, as the upload service
  uses) from the benchmark process to the same S3 server (SeaweedFS, as the tests use).

Rounds alternate (direct, edge, direct, edge…) after a 12 MiB warm-up of each path; each object is
deleted right after its round, so the S3 server does not grow. The figures: MiB/s of each
path (best round), their ratio (edge / direct), and the peak RSS growth of the edge and the upload
service during the edge rounds (sampled every 10 ms, from their RSS just before the round).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
from minio import Minio

from benchmarks.metrics import MiB, ProcessWatch
from tests.support.processes import Stack

UPLOAD_PATH: Final = "/chatkit/api/upload"
PART_BYTES: Final = 5 * MiB
WARMUP_MIB: Final = 12
RSS_SAMPLE_S: Final = 0.01


def write_csv(path: Path, size_mib: int) -> int:
    """A CSV file of exactly `size_mib` MiB of ASCII rows; returns its size in bytes."""
    row = b"".join(
        b"%06d,benchmark,row of text for the upload scenario,%06d\n" % (i, i * 7) for i in range(64)
    )
    block = (row * (MiB // len(row) + 1))[:MiB]
    with path.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(block)
    return size_mib * MiB


async def _through_edge(session: aiohttp.ClientSession, stack: Stack, path: Path) -> str:
    with path.open("rb") as handle:
        form = aiohttp.FormData()
        form.add_field("file", handle, filename=path.name, content_type="text/csv")
        async with session.post(
            f"{stack.edge_url}{UPLOAD_PATH}", data=form, headers=stack.headers()
        ) as reply:
            body = await reply.json()
            if reply.status != 200:
                raise RuntimeError(f"upload through the edge failed: HTTP {reply.status} {body}")
    return f"objects/acme/{body['id']}"


def _direct(client: Minio, bucket: str, key: str, path: Path) -> None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        client.put_object(bucket, key, handle, length=size, content_type="text/csv", part_size=PART_BYTES)


async def measure(
    stack: Stack, *, size_mib: int, rounds: int, log: Callable[[str], None], work: Path
) -> dict[str, Any]:
    bucket = stack.env["MINIO_BUCKET"]
    client = stack.s3.client()
    big, small = work / "upload-big.csv", work / "upload-warmup.csv"
    size = write_csv(big, size_mib)
    write_csv(small, WARMUP_MIB)
    pids = {name: stack.services[name].process.pid for name in ("edge", "upload")}
    direct_s: list[float] = []
    edge_s: list[float] = []
    growth: dict[str, list[float]] = {name: [] for name in pids}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        log(f"upload scenario: warm-up ({WARMUP_MIB} MiB each way)")
        await asyncio.to_thread(_direct, client, bucket, "bench/warmup", small)
        client.remove_object(bucket, "bench/warmup")
        client.remove_object(bucket, await _through_edge(session, stack, small))
        for number in range(rounds):
            started = time.perf_counter()
            await asyncio.to_thread(_direct, client, bucket, f"bench/direct-{number}", big)
            direct_s.append(time.perf_counter() - started)
            client.remove_object(bucket, f"bench/direct-{number}")

            watch = ProcessWatch(pids, interval_s=RSS_SAMPLE_S)
            watch.set_baseline()
            watch.start()
            started = time.perf_counter()
            key = await _through_edge(session, stack, big)
            edge_s.append(time.perf_counter() - started)
            await watch.stop()
            client.remove_object(bucket, key)
            for name in pids:
                growth[name].append((watch.peak_rss[name] - watch.baseline_rss[name]) / MiB)
            log(
                f"upload round {number + 1}/{rounds}: direct {size_mib / direct_s[-1]:.0f} MiB/s, "
                f"edge {size_mib / edge_s[-1]:.0f} MiB/s"
            )
    direct_mib_s = size_mib / min(direct_s)
    edge_mib_s = size_mib / min(edge_s)
    return {
        "file_mib": size_mib,
        "file_bytes": size,
        "content_type": "text/csv",
        "rounds": rounds,
        "direct_s": direct_s,
        "edge_s": edge_s,
        "direct_mib_per_s": direct_mib_s,
        "edge_mib_per_s": edge_mib_s,
        "ratio": edge_mib_s / direct_mib_s,
        "peak_rss_growth_mib": {name: max(values) for name, values in growth.items()},
        "processes": pids,
    }
