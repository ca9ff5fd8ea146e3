"""`python -m benchmarks` (`make bench`): every system, every concurrency, one run, one table.

Order of work:
1. start all systems (Switchboard's stack on moto S3, the reference, the ceiling), each in its own
   process(es) on 127.0.0.1, so they are measured under the same conditions;
2. warm each one up, then take every process's idle RSS (the baseline of the growth figures);
3. for each concurrency and variant, run one cell per system, rotating the order of the systems
   from one cell group to the next, so slow drift of the machine (thermal, other tenants) does not
   always hit the same system;
4. the upload scenario (a 256 MiB file through the edge vs. a direct `put_object`, alternated);
5. the table (stdout), `benchmarks/results/latest.json` (every figure), `latest.md` (the same
   tables in Markdown, for docs/performance.md) and `latest.png` (the chart).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import aiohttp
import psutil
from grpc import aio

from benchmarks import report, uploads
from benchmarks.loadgen import run_cell
from benchmarks.metrics import MiB, ProcessWatch, cell_figures, cpu_seconds
from benchmarks.systems import (
    CEILING,
    LABELS,
    REFERENCE,
    SYSTEMS,
    Target,
    aiohttp_server,
    switchboard,
    switchboard_targets,
)
from benchmarks.workload import TURN_TIMEOUT_S, Driver, GrpcDriver, HttpDriver
from services.agent_service.models.local import benchmark_text
from tests.support.processes import Stack

RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_REPLY_TOKENS: Final = 64
CONCURRENCIES: Final = (1, 32, 256, 1000)
UPLOAD_MAX_BYTES: Final = 300 * MiB
_GRPC_OPTIONS: Final = [("grpc.max_receive_message_length", 16 * MiB)]


@dataclass(frozen=True)
class Variant:
    name: str
    turns: int


ONE_TURN: Final = Variant("create", 1)
TWO_TURNS: Final = Variant("create+add", 2)


@dataclass(frozen=True)
class Plan:
    """How much work each cell does; `full()` is what `make bench` runs (under 10 minutes)."""

    reply_tokens: int
    concurrencies: tuple[int, ...]
    variants: tuple[Variant, ...]
    single_wave_one_turn: bool
    """Cells whose concurrency equals their conversations (the 1,000 wave) run the one-turn variant
    only: they are there to show the streams are held (0 errors), and keep the run short."""
    conversations: dict[int, int]
    """Conversations per cell, by concurrency (a cell of 1,000 is a single wave)."""
    warmup: int
    upload_mib: int
    upload_rounds: int

    def variants_at(self, concurrency: int) -> tuple[Variant, ...]:
        if self.single_wave_one_turn and self.conversations[concurrency] <= concurrency:
            return tuple(v for v in self.variants if v.turns == 1)
        return self.variants

    @classmethod
    def full(cls, reply_tokens: int) -> Plan:
        return cls(
            reply_tokens=reply_tokens,
            concurrencies=CONCURRENCIES,
            variants=(ONE_TURN, TWO_TURNS),
            single_wave_one_turn=True,
            conversations={1: 100, 32: 640, 256: 768, 1000: 1000},
            warmup=200,
            upload_mib=256,
            upload_rounds=2,
        )

    @classmethod
    def quick(cls, reply_tokens: int) -> Plan:
        return cls(
            reply_tokens=reply_tokens,
            concurrencies=(1, 32, 256),
            variants=(ONE_TURN,),
            single_wave_one_turn=True,
            conversations={1: 20, 32: 128, 256: 256},
            warmup=50,
            upload_mib=32,
            upload_rounds=1,
        )


def raise_open_files_limit(wanted: int = 65_536) -> int:
    """Raise RLIMIT_NOFILE's soft limit (children inherit it) as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Client:
    """The load generator's connections: a fresh HTTP session per cell, one gRPC channel per run."""

    def __init__(self, stack: Stack, expected_text: str) -> None:
        self._stack = stack
        self._expected = expected_text
        self._headers = stack.headers()
        self._channel = aio.insecure_channel(stack.agent_address, options=_GRPC_OPTIONS)
        self._session: aiohttp.ClientSession | None = None

    async def driver(self, target: Target) -> Driver:
        if target.protocol == "grpc":
            return GrpcDriver(self._channel, self._stack.token(), self._expected)
        await self.end_cell()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=TURN_TIMEOUT_S),
        )
        return HttpDriver(self._session, target.address, self._headers, self._expected)

    async def end_cell(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def close(self) -> None:
        await self.end_cell()
        await self._channel.close()


async def measure_cell(
    client: Client, target: Target, watch: ProcessWatch, *, concurrency: int, conversations: int, turns: int
) -> dict[str, Any]:
    driver = await client.driver(target)
    gc.collect()
    me = psutil.Process()
    client_before = cpu_seconds(me.cpu_times())
    watch.start()
    run = await run_cell(driver, concurrency=concurrency, conversations=conversations, turns=turns)
    await watch.stop()
    client_cpu_s = cpu_seconds(me.cpu_times()) - client_before
    await client.end_cell()
    figures = cell_figures(
        conversations=run.conversations,
        errors=run.errors,
        wall_s=run.wall_s,
        text_bytes=run.text_bytes,
        deltas=run.deltas,
        turns=run.turns,
        ttfts_s=run.ttfts_s,
        cpu_by_process=watch.cpu_used(),
        baseline_rss=watch.baseline_rss,
        peak_rss=watch.peak_rss,
        concurrency=concurrency,
    )
    completed = run.conversations - run.errors
    return {
        "first_errors": run.first_errors,
        **asdict(figures),
        # The load generator shares the machine: its own CPU per conversation, for context.
        "client_cpu_s_per_conversation": client_cpu_s / completed if completed else None,
    }


async def measure_all(targets: Sequence[Target], stack: Stack, plan: Plan, log: Any) -> list[dict[str, Any]]:
    client = Client(stack, benchmark_text(plan.reply_tokens))
    watches = {target.name: ProcessWatch(target.pids) for target in targets}
    try:
        for target in targets:
            log(f"warming up {target.name} ({plan.warmup} conversations)")
            driver = await client.driver(target)
            warm = await run_cell(driver, concurrency=16, conversations=plan.warmup, turns=2)
            await client.end_cell()
            if warm.errors:
                raise RuntimeError(f"{target.name} failed its warm-up: {warm.first_errors}")
        await asyncio.sleep(1.0)
        for watch in watches.values():
            watch.set_baseline()
        records: list[dict[str, Any]] = []
        group = 0
        for concurrency in plan.concurrencies:
            for variant in plan.variants_at(concurrency):
                order = [targets[(group + i) % len(targets)] for i in range(len(targets))]
                group += 1
                for target in order:
                    conversations = plan.conversations[concurrency]
                    started = time.perf_counter()
                    figures = await measure_cell(
                        client,
                        target,
                        watches[target.name],
                        concurrency=concurrency,
                        conversations=conversations,
                        turns=variant.turns,
                    )
                    records.append(
                        {
                            "system": target.name,
                            "label": LABELS[target.name],
                            "variant": variant.name,
                            "turns": variant.turns,
                            "concurrency": concurrency,
                            "reply_tokens": plan.reply_tokens,
                            "processes": target.pids,
                            **figures,
                        }
                    )
                    log(report.progress_line(records[-1], time.perf_counter() - started))
                    await asyncio.sleep(0.3)
        return records
    finally:
        await client.close()


DOCS: Final = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def run(plan: Plan, out_dir: Path, *, chart: bool = True, update_docs: bool = False) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    limit = raise_open_files_limit()
    log(f"RLIMIT_NOFILE soft limit {limit}")
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp, ExitStack() as systems:
        work = Path(tmp)
        log("starting Switchboard (upload, agent, edge on moto S3), the reference and the ceiling")
        stack = systems.enter_context(switchboard(work / "switchboard", plan.reply_tokens, UPLOAD_MAX_BYTES))
        reference = systems.enter_context(
            aiohttp_server("benchmarks.reference_server", REFERENCE, plan.reply_tokens, work)
        )
        ceiling = systems.enter_context(
            aiohttp_server("benchmarks.ceiling_server", CEILING, plan.reply_tokens, work)
        )
        edge, direct = switchboard_targets(stack)
        by_name = {target.name: target for target in (edge, direct, reference, ceiling)}
        targets = [by_name[name] for name in SYSTEMS]
        records = asyncio.run(measure_all(targets, stack, plan, log))
        upload = None
        if plan.upload_rounds:
            upload = asyncio.run(
                uploads.measure(
                    stack, size_mib=plan.upload_mib, rounds=plan.upload_rounds, log=log, work=work
                )
            )
    results = report.assemble(records, upload, plan=asdict(plan), wall_s=time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(results, out_dir / "latest.json")
    (out_dir / "latest.md").write_text(report.markdown(results))
    if update_docs and not report.update_docs(DOCS, report.markdown(results)):
        print(f"{DOCS} has no results markers; not updated", file=sys.stderr)
    if chart:
        report.write_chart(results, out_dir / "latest.png")
    print(report.table(results))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (not the published figures)")
    parser.add_argument(
        "--reply-tokens", type=int, default=DEFAULT_REPLY_TOKENS, help="text deltas per answer"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument("--concurrency", type=int, action="append", help="only this concurrency (repeatable)")
    parser.add_argument("--one-turn", action="store_true", help="only the one-turn variant")
    parser.add_argument("--no-upload", action="store_true", help="skip the upload scenario")
    parser.add_argument(
        "--update-docs", action="store_true", help="also write the tables into docs/performance.md"
    )
    args = parser.parse_args(argv)
    plan = (Plan.quick if args.quick else Plan.full)(args.reply_tokens)
    if args.concurrency:
        sizes = {c: plan.conversations.get(c, max(c, 256)) for c in args.concurrency}
        plan = replace(plan, concurrencies=tuple(args.concurrency), conversations=sizes)
    if args.one_turn:
        plan = replace(plan, variants=(ONE_TURN,))
    if args.no_upload:
        plan = replace(plan, upload_rounds=0)
    run(plan, args.out, chart=not args.no_chart, update_docs=args.update_docs)
    return 0
