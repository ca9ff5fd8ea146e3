"""The benchmark's arithmetic: percentiles, growth per stream, cell figures, targets, the reader."""

from __future__ import annotations

import os
from typing import Any

import pytest

from benchmarks.loadgen import CellRun, run_cell
from benchmarks.metrics import KiB, MiB, ProcessWatch, cell_figures, growth_per_stream, percentile
from benchmarks.report import evaluate_targets, table
from benchmarks.workload import SseTurnReader, TurnResult


def test_percentiles_interpolate_linearly_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # unsorted input
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(v) for v in range(1, 101)], 99) == pytest.approx(99.01)
    assert percentile([float(v) for v in range(1, 101)], 50) == pytest.approx(50.5)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_rss_growth_is_per_open_stream_and_never_negative() -> None:
    assert growth_per_stream(100 * MiB, 100 * MiB + 1000 * 50 * KiB, 1000) == 50 * KiB
    assert growth_per_stream(200 * MiB, 150 * MiB, 32) == 0.0
    with pytest.raises(ValueError, match="at least one open stream"):
        growth_per_stream(0, 1, 0)


def test_cell_figures() -> None:
    figures = cell_figures(
        conversations=100,
        errors=2,
        wall_s=4.0,
        text_bytes=40_000,
        deltas=6_400,
        turns=100,
        ttfts_s=[0.010] * 98 + [0.5, 1.0],
        cpu_by_process={"edge": 0.49, "agent": 0.49},
        baseline_rss={"edge": 100 * MiB, "agent": 200 * MiB},
        peak_rss={"edge": 103 * MiB, "agent": 200 * MiB},
        concurrency=32,
    )
    assert figures.conversations_per_s == 98 / 4.0  # failed conversations do not count
    assert figures.text_bytes_per_s == 10_000
    assert figures.deltas_per_turn == 64
    assert figures.ttft_p50_ms == pytest.approx(10.0)
    assert figures.ttft_p99_ms == pytest.approx(505.0)  # between the 99th and 100th of 100 values
    assert figures.cpu_s_per_conversation == pytest.approx(0.01)
    assert figures.peak_rss_mib == {"edge": 103.0, "agent": 200.0}
    assert figures.rss_growth_per_stream_kib == {"edge": 3 * 1024 / 32, "agent": 0.0}


async def test_a_process_watch_reads_cpu_and_peak_rss() -> None:
    watch = ProcessWatch({"me": os.getpid()}, interval_s=0.001)
    watch.set_baseline()
    watch.start()
    block = bytearray(32 * MiB)  # touched: resident
    for i in range(0, len(block), 4096):
        block[i] = 1
    sum(range(200_000))
    await watch.stop()
    assert watch.peak_rss["me"] >= watch.baseline_rss["me"] + 30 * MiB
    assert watch.cpu_used()["me"] > 0
    del block


class _Driver:
    def __init__(self, fail_every: int = 0) -> None:
        self.calls: list[str | None] = []
        self.fail_every = fail_every
        self.open = 0
        self.most_open = 0

    async def turn(self, thread_id: str | None) -> TurnResult:
        import asyncio

        self.calls.append(thread_id)
        number = len(self.calls)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        await asyncio.sleep(0.001)
        self.open -= 1
        result = TurnResult(thread_id=thread_id or f"thr_{number}")
        result.delta("hello", now=1.25, started=1.0)
        if self.fail_every and number % self.fail_every == 0:
            result.error = "boom"
        return result


async def test_the_load_generator_keeps_the_concurrency_and_counts_everything() -> None:
    driver = _Driver()
    run = await run_cell(driver, concurrency=8, conversations=50, turns=2)
    assert run.conversations == 50 and run.errors == 0 and run.turns == 100
    assert driver.most_open == 8
    assert run.text_bytes == 500 and run.ttfts_s == [0.25] * 100
    # a second turn goes to the thread the first one created
    assert driver.calls.count(None) == 50 and len(driver.calls) == 100
    failing = await run_cell(_Driver(fail_every=3), concurrency=4, conversations=30, turns=1)
    assert failing.errors == 10 and failing.first_errors[:1] == ["boom"]


def test_a_turn_is_only_ok_when_the_answer_is_complete_and_exact() -> None:
    def reader_for(*frames: bytes) -> TurnResult:
        reader = SseTurnReader(started=0.0)
        reader.feed(b"".join(frames), now=0.5)
        return reader.close()

    created = b'data: {"type":"thread.created","thread":{"id":"thr_1"}}\n\n'
    delta = b'data: {"type":"thread.item.updated","item_id":"m","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"%s"}}\n\n'  # noqa: E501
    done = b'data: {"type":"thread.item.done","item":{"id":"m","type":"assistant_message","content":[{"text":"%s"}]}}\n\n'  # noqa: E501
    good = reader_for(created, delta % b"hi", delta % b" there", done % b"hi there")
    good.check("hi there")
    assert good.ok and good.thread_id == "thr_1" and good.ttft_s == 0.5
    short = reader_for(created, delta % b"hi", done % b"hi there")
    short.check("hi there")
    assert short.error == "the deltas do not add up to the final text"
    other = reader_for(created, delta % b"yo", done % b"yo")
    other.check("hi there")
    assert other.error == "unexpected answer"
    failed = reader_for(created, b'data: {"type":"error","code":"stream.error","allow_retry":true}\n\n')
    failed.check("hi")
    assert failed.error is not None and failed.error.startswith("error event")
    cut = reader_for(created, b'data: {"type":"thread.item')
    assert cut.error == "the stream ended inside a frame"


def _record(system: str, concurrency: int, conv_s: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {
        "system": system,
        "label": system,
        "variant": "create",
        "turns": 1,
        "concurrency": concurrency,
        "conversations": 100,
        "errors": extra.get("errors", 0),
        "conversations_per_s": conv_s,
        "text_bytes_per_s": 1000.0,
        "deltas_per_turn": 64.0,
        "ttft_p50_ms": p99 / 2,
        "ttft_p99_ms": p99,
        "cpu_s_per_conversation": 0.01,
        "peak_rss_mib": {"edge": 100.0},
        "rss_growth_per_stream_kib": extra.get("growth", {"edge": 10.0}),
    }


def test_targets_pass_and_miss_on_the_right_cells() -> None:
    records = [
        _record("switchboard", 32, 150.0, 90.0),
        _record("reference", 32, 100.0, 100.0),
        _record("grpc-direct", 32, 200.0, 50.0),
        _record("switchboard", 1000, 80.0, 900.0, growth={"edge": 40.0, "agent": 120.0}),
        _record("grpc-direct", 1000, 90.0, 900.0, errors=3),
    ]
    upload = {
        "file_mib": 256,
        "ratio": 0.69,
        "edge_mib_per_s": 69.0,
        "direct_mib_per_s": 100.0,
        "peak_rss_growth_mib": {"edge": 10.0, "upload": 30.0},
    }
    status = {t["target"]: t["status"] for t in evaluate_targets(records, upload)}
    assert status["throughput vs reference (32 concurrent, create)"] == "PASS"  # exactly 1.5x
    assert status["p99 TTFT vs reference (32 concurrent, create)"] == "PASS"
    assert status["edge vs gRPC direct (32 concurrent, create)"] == "MISS"  # 0.75x
    assert status["1,000 concurrent streams, Switchboard (edge, SSE)"] == "PASS"
    assert status["1,000 concurrent streams, Switchboard gRPC direct"] == "MISS"
    assert status["RSS growth per open stream at 1,000, Switchboard (edge, SSE)"] == "MISS"
    assert status["upload 256 MiB: edge vs direct put_object"] == "MISS"
    assert status["upload 256 MiB: peak RSS growth"] == "PASS"
    results = {
        "machine": {"cpus": 2, "python": "3.11"},
        "plan": {"reply_tokens": 64},
        "generated_at": "now",
        "records": records,
        "upload": {**upload, "content_type": "text/csv", "rounds": 2},
        "targets": evaluate_targets(records, upload),
        "wall_s": 1.0,
    }
    text = table(results)
    assert "MISS  edge vs gRPC direct (32 concurrent, create): 0.75x" in text


def test_an_empty_cell_run_has_no_figures() -> None:
    run = CellRun()
    run.record([TurnResult(error="x")])
    assert run.conversations == 1 and run.errors == 1 and run.ttfts_s == []


def test_the_docs_results_block_is_replaced_between_its_markers(tmp_path: Any) -> None:
    from benchmarks.report import DOCS_BEGIN, DOCS_END, update_docs

    doc = tmp_path / "performance.md"
    doc.write_text(f"# Title\n\n{DOCS_BEGIN}\nold table\n{DOCS_END}\n\nanalysis\n")
    assert update_docs(doc, "| new | table |\n")
    assert doc.read_text() == f"# Title\n\n{DOCS_BEGIN}\n| new | table |\n{DOCS_END}\n\nanalysis\n"
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not update_docs(plain, "x") and plain.read_text() == "no markers\n"


def test_the_cpu_workers_and_postgresql_targets() -> None:
    records = [
        {**_record("switchboard", 32, 100.0, 300.0), "cpu_s_per_conversation": 0.0150},
        {**_record("reference", 32, 70.0, 300.0), "cpu_s_per_conversation": 0.0140},
        _record("switchboard-workers", 32, 106.0, 290.0),
        _record("switchboard-pg", 32, 89.0, 400.0),
    ]
    targets = {t["target"]: t for t in evaluate_targets(records, None)}
    cpu = targets["server CPU per conversation vs reference (32 concurrent, create)"]
    assert cpu["status"] == "MISS" and cpu["value"].startswith("1.07x (15.00 vs 14.00 ms)")
    label = "Switchboard, 2 agent workers"
    assert targets[f"throughput vs reference, {label} (32 concurrent, create)"]["status"] == "PASS"
    assert targets[f"p99 TTFT vs reference, {label} (32 concurrent, create)"]["status"] == "PASS"
    assert targets["PostgreSQL (1 agent) vs SQLite (32 concurrent, create)"]["status"] == "MISS"  # 0.89x
