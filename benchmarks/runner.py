"""`python -m benchmarks` (`make bench`): every system, every concurrency, one run, one table.

Order of work:
1. the burst phase: start its systems (Switchboard's stack on SeaweedFS S3, its variant with two
   agent workers, Switchboard on PostgreSQL with one and with two agent replicas, the reference, the
   ceiling), each in its own process(es) on 127.0.0.1, so they are measured under the same conditions;
2. warm each one up, then take every process's idle RSS (the baseline of the growth figures);
3. for each concurrency and variant, run one cell per system planned there (the two-turn variant
   at 1 and 32 streams, the PostgreSQL systems the one-turn variant at 32 and 256 streams only, the
   agent workers at 32, which keeps `make bench` under 10 minutes), rotating the order of the
   systems from one cell group to the next, so slow drift of the machine (thermal, other tenants)
   does not always hit the same system;
4. the upload scenario (a 256 MiB file through the edge vs. a direct `put_object`, alternated);
5. with every system above stopped, the cost phase (the cost of observability, `Plan.cost_schedule`):
   `switchboard` and the variants it is compared with (`OBSERVED`: without metrics, with tracing,
   without limits) started again, fresh, on stacks of their own, so they have the same history; the
   same warm-up each, then `cost_rounds` rounds at 32 streams, one turn, one cell per system and
   round. The order is a Latin square: with k systems, every k consecutive rounds put each system
   once in each position (`--cost-rounds`, default k; `--cost-only`; `--no-variants` leaves it out);
6. with every system above stopped, the paced scenario (issue #17, `benchmarks/paced_run.py`):
   `switchboard`, `grpc-direct` and `reference` started again with the benchmark model paced at 50
   tokens/s, N streams of 300 tokens at once, N swept over 100, 250, 500 and 1,000 until a system is
   clearly past capacity; delivery lag per token and capacity (`--no-paced`, `--paced-only`);
7. the table (stdout), `benchmarks/results/latest.json` (every figure; the cost phase's cells in
   `cost`), `latest.md` (the same tables in Markdown, for docs/performance.md), `latest.png` (the
   chart) and `latest-paced.png` (the paced scenario's capacity chart).

The Switchboard variants are the `switchboard` system with more environment:
- `switchboard-no-metrics`: SWITCHBOARD_METRICS_ENABLED=false, the run without metrics;
- `switchboard-tracing`: metrics on and traces on (OTLP/HTTP, every trace kept) to a local sink
  that counts the spans and discards them;
- `switchboard-no-limits`: SWITCHBOARD_LIMITS_ENABLED=false, the run without the limits' checks;
- `switchboard-workers`: the agent service in two workers (a burst-phase system, not compared).
The report's "Cost of observability" compares the first three with `switchboard` (metrics and every
limit on, the default) from the cost phase's cells alone; `--no-variants` leaves the variants and
the cost phase out.

The PostgreSQL systems need the PostgreSQL server binaries (`apt-get install -y postgresql`);
`--no-pg` leaves them out.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

import psutil

from benchmarks import paced_report, report, uploads
from benchmarks.client import Client
from benchmarks.loadgen import run_cell
from benchmarks.metrics import MiB, ProcessWatch, cell_figures, cpu_seconds
from benchmarks.paced import (
    PACED_NS,
    PACED_REPLY_TOKENS,
    PACED_SYSTEMS,
    PACED_TOKENS_PER_S,
    PacedPlan,
    parse_ns,
)
from benchmarks.paced_run import measure_paced, paced_systems, start_paced_systems
from benchmarks.systems import (
    CEILING,
    GRPC_DIRECT,
    LABELS,
    OBSERVED,
    PG_REPLICAS,
    REFERENCE,
    STACK_VARIANTS,
    SWITCHBOARD,
    SYSTEMS,
    OtlpSink,
    Target,
    aiohttp_server,
    switchboard,
    switchboard_pg,
    switchboard_targets,
    switchboard_variant,
)
from switchboard.demo.benchmark import benchmark_text
from tests.support.postgres import PostgresUnavailable
from tests.support.processes import Stack

RESULTS: Final = Path(__file__).resolve().parent / "results"
DEFAULT_REPLY_TOKENS: Final = 64
CONCURRENCIES: Final = (1, 32, 256, 1000)
PG_CONCURRENCIES: Final = (32, 256)
STACK_VARIANT_CONCURRENCIES: Final = (32,)
TWO_TURN_CONCURRENCIES: Final = (1, 32)
UPLOAD_MAX_BYTES: Final = 300 * MiB
BURST_PHASE: Final = "burst"
"""The `phase` of a burst-phase record (a cost-phase record's is `report.COST_PHASE`)."""


@dataclass(frozen=True)
class Variant:
    name: str
    turns: int


ONE_TURN: Final = Variant("create", 1)
TWO_TURNS: Final = Variant("create+add", 2)


@dataclass(frozen=True)
class Group:
    """Burst-phase cells run one after another, one per system, at one concurrency and variant."""

    concurrency: int
    variant: Variant
    systems: tuple[str, ...]


def balanced_order(k: int) -> tuple[int, ...]:
    """The first row of the cost phase's Latin square of `k` systems: 0, 1, k-1, 2, k-2, ...
    (Williams). Round r adds r to every entry (mod k), so every k consecutive rounds put each system
    once in each position; for an even `k` each system also follows every other exactly once within
    the rounds (with the plain rotation 0, 1, 2, ... the same system would always follow the same
    one, e.g. the tracing stack, whose batch exporter may still be sending spans when its cell
    ends)."""
    order, low, high = [0], 1, k - 1
    while len(order) < k:
        if len(order) % 2:
            order.append(low)
            low += 1
        else:
            order.append(high)
            high -= 1
    return tuple(order)


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
    pg_concurrencies: tuple[int, ...] = PG_CONCURRENCIES
    """Where the PostgreSQL systems run: 32 (the column of the targets against the reference) and
    256 (the column of the scale-out target), to keep `make bench` under 10 minutes."""
    pg_variants: tuple[Variant, ...] = (ONE_TURN,)
    """The PostgreSQL systems run the one-turn variant only (the same reason)."""
    pg_warmup: int = 100
    """Warm-up conversations of the PostgreSQL systems, of the Switchboard variants and of every
    stack of the cost phase (they run a few cells, not seven)."""
    stack_variant_concurrencies: tuple[int, ...] = STACK_VARIANT_CONCURRENCIES
    """Where the Switchboard variants outside the cost of observability (`switchboard-workers`) run
    in the burst phase, one turn only: 32, the column of the targets against the reference. The
    compared variants (`OBSERVED`) run in the cost phase only."""
    cost_rounds: int | None = None
    """Rounds of the cost phase (`cost_schedule`): each compared system's cell at
    `report.COST_CONCURRENCY` streams, one turn, once per round; the cost of observability is the
    median over the rounds. None: as many rounds as compared systems (one block of the Latin
    square: each system once in each position)."""
    systems: tuple[str, ...] = SYSTEMS
    """The systems this run starts and measures."""
    two_turn_concurrencies: tuple[int, ...] | None = None
    """Where the two-turn variant runs (None: at every concurrency of `concurrencies`)."""
    burst: bool = True
    """Whether the burst phase (every cell above, and the upload scenario) runs at all."""
    cost: bool = True
    """Whether the cost phase runs (it does when at least two compared systems are selected)."""
    paced: PacedPlan | None = None
    """The paced scenario, run after the burst phase on stacks of its own (None: not run)."""

    def runs(self, system: str, concurrency: int, variant: Variant) -> bool:
        """Whether `system` has a cell at (`concurrency`, `variant`): a planned one, and in a single
        wave (`single_wave_one_turn`) only the one-turn variant."""
        if system not in self.burst_systems():
            return False
        if system in PG_REPLICAS:
            planned = concurrency in self.pg_concurrencies and variant in self.pg_variants
        elif system in STACK_VARIANTS:
            planned = concurrency in self.stack_variant_concurrencies and variant == ONE_TURN
        else:
            planned = concurrency in self.concurrencies and variant in self.variants
            if variant.turns > 1 and self.two_turn_concurrencies is not None:
                planned = planned and concurrency in self.two_turn_concurrencies
        single_wave = self.single_wave_one_turn and self.conversations[concurrency] <= concurrency
        return planned and (variant.turns == 1 or not single_wave)

    def burst_systems(self) -> tuple[str, ...]:
        """The selected systems the burst phase starts: all but the compared variants (`OBSERVED`
        other than `switchboard`), which run in the cost phase only."""
        return tuple(s for s in self.systems if s == SWITCHBOARD or s not in OBSERVED)

    def compared(self) -> tuple[str, ...]:
        """The selected systems the cost phase compares (`OBSERVED`, in its order)."""
        return tuple(s for s in OBSERVED if s in self.systems)

    @property
    def cost_warmup(self) -> int:
        """Two-turn warm-up conversations of each cost-phase stack (the variants' count)."""
        return min(self.pg_warmup, self.warmup)

    def warmup_of(self, system: str) -> int:
        """Two-turn warm-up conversations before `system`'s idle RSS is taken (burst phase)."""
        few_cells = system in PG_REPLICAS or system in STACK_VARIANTS
        return self.cost_warmup if few_cells else self.warmup

    def groups(self) -> list[tuple[int, Variant, tuple[str, ...]]]:
        """The cell groups in run order: (concurrency, variant, the systems that run it)."""
        groups: list[tuple[int, Variant, tuple[str, ...]]] = []
        concurrencies = dict.fromkeys(
            (*self.concurrencies, *self.pg_concurrencies, *self.stack_variant_concurrencies)
        )
        variants = dict.fromkeys((*self.variants, *self.pg_variants, ONE_TURN))
        for concurrency in concurrencies:
            for variant in variants:
                systems = tuple(s for s in self.systems if self.runs(s, concurrency, variant))
                if systems:
                    groups.append((concurrency, variant, systems))
        return groups

    def schedule(self) -> list[Group]:
        """The burst phase's groups (`groups()`), in run order."""
        return [Group(concurrency, variant, systems) for concurrency, variant, systems in self.groups()]

    def cost_schedule(self) -> list[tuple[str, ...]]:
        """The cost phase: one entry per round, the compared systems in the order they run (empty
        when the phase is off or fewer than two are selected). With k systems the rounds follow a
        Latin square (`balanced_order`): round r (from 0) runs the first row's systems shifted by r,
        so in every k consecutive rounds each system runs once in each position, and the drift of
        the machine within a round (about +-3 % conv/s by position) falls on each alike."""
        compared = self.compared()
        if not self.cost or len(compared) < 2:
            return []
        k = len(compared)
        rounds = k if self.cost_rounds is None else self.cost_rounds
        first = balanced_order(k)
        return [tuple(compared[(index + r) % k] for index in first) for r in range(rounds)]

    @classmethod
    def full(cls, reply_tokens: int) -> Plan:
        return cls(
            reply_tokens=reply_tokens,
            concurrencies=CONCURRENCIES,
            variants=(ONE_TURN, TWO_TURNS),
            single_wave_one_turn=True,
            conversations={1: 100, 32: 640, 256: 768, 1000: 1000},
            # 100 warm-up conversations (was 200) and no two-turn cells at 256 streams (the one-turn
            # cells there say the same, at half the time): the time the paced phase needs, so that
            # `make bench` stays under 10 minutes (docs/performance.md, "Paced streaming").
            warmup=100,
            upload_mib=256,
            upload_rounds=2,
            two_turn_concurrencies=TWO_TURN_CONCURRENCIES,
            paced=PacedPlan.full(),
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
            paced=PacedPlan.quick(),
        )


def raise_open_files_limit(wanted: int = 65_536) -> int:
    """Raise RLIMIT_NOFILE's soft limit (children inherit it) as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


async def warm_up(
    client: Client, targets: Mapping[str, Target], warmups: Mapping[str, int], log: Any
) -> dict[str, ProcessWatch]:
    """Warm every system up (`warmups[name]` two-turn conversations, 16 at a time), then take every
    process's idle RSS; the systems' watches."""
    watches = {name: ProcessWatch(target.pids, trees=target.trees) for name, target in targets.items()}
    for target in targets.values():
        warmup = warmups[target.name]
        log(f"warming up {target.name} ({warmup} conversations)")
        driver = await client.driver(target)
        warm = await run_cell(driver, concurrency=16, conversations=warmup, turns=2)
        await client.end_cell()
        if warm.errors:
            raise RuntimeError(f"{target.name} failed its warm-up: {warm.first_errors}")
    await asyncio.sleep(1.0)
    for watch in watches.values():
        watch.set_baseline()
    return watches


async def measure_record(
    client: Client,
    target: Target,
    watch: ProcessWatch,
    plan: Plan,
    log: Any,
    *,
    concurrency: int,
    variant: Variant,
    phase: str,
    **where: int,
) -> dict[str, Any]:
    """One cell of `target` and its record (`where`: the cost phase's round and position), its
    progress line logged."""
    started = time.perf_counter()
    figures = await measure_cell(
        client,
        target,
        watch,
        concurrency=concurrency,
        conversations=plan.conversations[concurrency],
        turns=variant.turns,
    )
    record = {
        "system": target.name,
        "label": LABELS[target.name],
        "variant": variant.name,
        "turns": variant.turns,
        "concurrency": concurrency,
        "phase": phase,
        **where,
        "reply_tokens": plan.reply_tokens,
        "processes": target.pids,
        "process_trees": list(target.trees),
        **figures,
    }
    log(report.progress_line(record, time.perf_counter() - started))
    await asyncio.sleep(0.3)
    return record


async def measure_all(
    targets: Mapping[str, Target], plan: Plan, log: Any, *, grpc_address: str | None = None
) -> list[dict[str, Any]]:
    """The burst phase: warm every system up, take the idle RSS, then run `plan.schedule()` (the
    systems' order rotating from one group to the next); every cell's record."""
    client = Client(benchmark_text(plan.reply_tokens), grpc_address)
    try:
        watches = await warm_up(client, targets, {name: plan.warmup_of(name) for name in targets}, log)
        records: list[dict[str, Any]] = []
        for index, group in enumerate(plan.schedule()):
            names = group.systems
            for name in (names[(index + i) % len(names)] for i in range(len(names))):
                records.append(
                    await measure_record(
                        client,
                        targets[name],
                        watches[name],
                        plan,
                        log,
                        concurrency=group.concurrency,
                        variant=group.variant,
                        phase=BURST_PHASE,
                    )
                )
        return records
    finally:
        await client.close()


async def measure_cost(targets: Mapping[str, Target], plan: Plan, log: Any) -> list[dict[str, Any]]:
    """The cost phase on its own fresh stacks (`targets`): the same warm-up for each
    (`plan.cost_warmup`), the idle RSS, then `plan.cost_schedule()`, one cell per system and round
    at `report.COST_CONCURRENCY` streams, one turn; every cell's record, with its round and its
    position in the round (both from 1)."""
    client = Client(benchmark_text(plan.reply_tokens))
    try:
        watches = await warm_up(client, targets, dict.fromkeys(targets, plan.cost_warmup), log)
        records: list[dict[str, Any]] = []
        for number, order in enumerate(plan.cost_schedule(), start=1):
            for position, name in enumerate(order, start=1):
                records.append(
                    await measure_record(
                        client,
                        targets[name],
                        watches[name],
                        plan,
                        log,
                        concurrency=report.COST_CONCURRENCY,
                        variant=ONE_TURN,
                        phase=report.COST_PHASE,
                        round=number,
                        position=position,
                    )
                )
        return records
    finally:
        await client.close()


@dataclass(frozen=True)
class Started:
    """The systems of a run, started: their targets in report order, the SQLite stack (the upload
    scenario's and gRPC direct's), if it runs, and the OTLP sinks of the traced variants."""

    targets: dict[str, Target]
    sqlite: Stack | None
    sinks: dict[str, OtlpSink]


def start_systems(
    names: Sequence[str], reply_tokens: int, work: Path, systems: ExitStack, log: Any
) -> Started:
    """Start the systems in `names` (stopped when `systems` closes)."""
    targets: dict[str, Target] = {}
    sinks: dict[str, OtlpSink] = {}
    sqlite = None
    if SWITCHBOARD in names or GRPC_DIRECT in names:
        log("starting Switchboard on SQLite (upload, agent, edge on SeaweedFS S3)")
        sqlite = systems.enter_context(switchboard(work / "switchboard", reply_tokens, UPLOAD_MAX_BYTES))
        targets.update({target.name: target for target in switchboard_targets(sqlite)})
    for name, stack_variant in STACK_VARIANTS.items():
        if name in names:
            env = " ".join(f"{key}={value}" for key, value in stack_variant.env.items())
            sink_note = " and an OTLP sink" if stack_variant.otlp_sink else ""
            log(f"starting {name}: Switchboard on SQLite with {env}{sink_note}")
            targets[name], sink = systems.enter_context(
                switchboard_variant(stack_variant, work / name, reply_tokens, UPLOAD_MAX_BYTES)
            )
            if sink is not None:
                sinks[name] = sink
    for name, replicas in PG_REPLICAS.items():
        if name in names:
            agents = "one agent replica" if replicas == 1 else f"{replicas} agent replicas"
            log(f"starting {name}: a PostgreSQL cluster of its own, {agents}, the edge")
            _, targets[name] = systems.enter_context(switchboard_pg(name, work / name, reply_tokens))
    for name, module in ((REFERENCE, "benchmarks.reference_server"), (CEILING, "benchmarks.ceiling_server")):
        if name in names:
            log(f"starting {name}")
            targets[name] = systems.enter_context(aiohttp_server(module, name, reply_tokens, work))
    return Started({name: targets[name] for name in SYSTEMS if name in names}, sqlite, sinks)


DOCS: Final = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def run(plan: Plan, out_dir: Path, *, chart: bool = True, update_docs: bool = False) -> dict[str, Any]:
    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.perf_counter()
    limit = raise_open_files_limit()
    log(f"RLIMIT_NOFILE soft limit {limit}")
    cells: list[dict[str, Any]] = []
    cost: list[dict[str, Any]] = []
    upload = None
    traces: dict[str, dict[str, Any]] = {}
    paced = None
    with tempfile.TemporaryDirectory(prefix="switchboard-bench-") as tmp:
        work = Path(tmp)
        burst = plan.burst_systems() if plan.burst else ()
        if burst:
            with ExitStack() as systems:
                running = start_systems(burst, plan.reply_tokens, work, systems, log)
                grpc_address = None if running.sqlite is None else running.sqlite.agent_address
                cells = asyncio.run(measure_all(running.targets, plan, log, grpc_address=grpc_address))
                if plan.upload_rounds and running.sqlite is not None:
                    upload = asyncio.run(
                        uploads.measure(
                            running.sqlite,
                            size_mib=plan.upload_mib,
                            rounds=plan.upload_rounds,
                            log=log,
                            work=work,
                        )
                    )
            # The systems have stopped (traced services flushed their spans): the sinks are final.
            traces.update(
                (name, sink_figures(sink, cells, warmup=plan.warmup_of(name), system=name))
                for name, sink in running.sinks.items()
            )
        schedule = plan.cost_schedule()
        if schedule:
            compared = plan.compared()
            log(
                f"cost phase: {', '.join(compared)} on fresh stacks, {len(schedule)} rounds at "
                f"{report.COST_CONCURRENCY} streams, one turn (a Latin square of the positions)"
            )
            # After the burst systems stopped: stacks of their own, with the same history.
            with ExitStack() as systems:
                running = start_systems(compared, plan.reply_tokens, work / "cost", systems, log)
                cost = asyncio.run(measure_cost(running.targets, plan, log))
            traces.update(
                (name, sink_figures(sink, cost, warmup=plan.cost_warmup, system=name))
                for name, sink in running.sinks.items()
            )
        names = () if plan.paced is None else paced_systems(plan.systems, plan.paced)
        if plan.paced is not None and names:
            # After the burst and cost systems stopped: the paced stacks have the machine to themselves.
            with ExitStack() as systems:
                targets, grpc_address = start_paced_systems(names, plan.paced, work, systems, log)
                sweeps = asyncio.run(measure_paced(targets, plan.paced, log, grpc_address=grpc_address))
            paced = paced_report.summary(sweeps, plan.paced)
    results = report.assemble(
        cells,
        upload,
        plan={**asdict(plan), "cost_schedule": [list(order) for order in plan.cost_schedule()]},
        wall_s=time.perf_counter() - started,
        cost=cost,
        traces=traces,
        paced=paced,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(results, out_dir / "latest.json")
    (out_dir / "latest.md").write_text(report.markdown(results))
    if update_docs and not report.update_docs(DOCS, report.markdown(results)):
        print(f"{DOCS} has no results markers; not updated", file=sys.stderr)
    if chart and cells:
        report.write_chart(results, out_dir / "latest.png")
    if chart and paced is not None:
        paced_report.write_chart(results, out_dir / "latest-paced.png")
    print(report.table(results))
    return results


def sink_figures(
    sink: OtlpSink, cells: Sequence[dict[str, Any]], *, system: str, warmup: int
) -> dict[str, Any]:
    """What `system`'s OTLP sink received over its stack's life (its final stats), per turn the
    system served there: its warm-up's two-turn conversations and every cell's of `cells` (the
    cells of the phase that started the stack: the cost phase's for the compared variants)."""
    turns = 2 * warmup + sum(c["conversations"] * c["turns"] for c in cells if c["system"] == system)
    final = sink.final or {}
    spans, cpu_s = final.get("spans"), final.get("cpu_s")
    return {
        **final,
        "turns": turns,
        "spans_per_turn": spans / turns if spans is not None and turns else None,
        "sink_cpu_ms_per_turn": 1000 * cpu_s / turns if cpu_s is not None and turns else None,
    }


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The plan the command line asks for (see `main`)."""
    plan = (Plan.quick if args.quick else Plan.full)(args.reply_tokens)
    if args.concurrency:
        sizes = {c: plan.conversations.get(c, max(c, 256)) for c in args.concurrency}
        concurrencies = tuple(args.concurrency)
        plan = replace(
            plan,
            concurrencies=concurrencies,
            pg_concurrencies=concurrencies,
            stack_variant_concurrencies=concurrencies,
            two_turn_concurrencies=None,
            conversations=sizes,
        )
    if args.one_turn:
        plan = replace(plan, variants=(ONE_TURN,), pg_variants=(ONE_TURN,))
    if args.no_upload:
        plan = replace(plan, upload_rounds=0)
    if args.cost_rounds is not None:
        if args.cost_rounds < 1:
            raise SystemExit("--cost-rounds: at least 1")
        plan = replace(plan, cost_rounds=args.cost_rounds)
    systems = tuple(args.system) if args.system else SYSTEMS
    if args.no_pg:
        systems = tuple(name for name in systems if name not in PG_REPLICAS)
    if args.no_variants:
        systems = tuple(name for name in systems if name not in STACK_VARIANTS)
        plan = replace(plan, cost=False)
    if not systems:
        raise SystemExit("no system left to measure")
    plan = replace(plan, systems=tuple(name for name in SYSTEMS if name in systems))
    if report.COST_CONCURRENCY not in plan.conversations:
        # --concurrency without the cost phase's column
        plan = replace(plan, cost=False)
    plan = cost_from_args(paced_from_args(plan, args), args)
    stranded = [name for name in plan.systems if name not in plan.burst_systems()]
    if args.system and plan.burst and stranded and not plan.cost_schedule():
        raise SystemExit(
            f"{', '.join(stranded)}: measured in the cost phase only, at {report.COST_CONCURRENCY} "
            f"streams, which compares at least two of {', '.join(OBSERVED)} (add --system {SWITCHBOARD})"
        )
    return plan


def cost_from_args(plan: Plan, args: argparse.Namespace) -> Plan:
    """`--cost-only`: the cost phase alone (no burst cells, no upload, no paced phase), of the
    compared systems `--system` selects (at least two)."""
    if not args.cost_only:
        return plan
    for flag, given in (
        ("--paced-only", args.paced_only),
        ("--paced", args.paced),
        ("--no-variants", args.no_variants),
    ):
        if given:
            raise SystemExit(f"--cost-only and {flag} contradict each other")
    if report.COST_CONCURRENCY not in plan.conversations:
        raise SystemExit(
            f"--cost-only: the cost phase runs at {report.COST_CONCURRENCY} streams, which "
            "--concurrency leaves out"
        )
    compared = plan.compared()
    if len(compared) < 2:
        raise SystemExit(
            f"--cost-only: the cost phase compares at least two of {', '.join(OBSERVED)}; "
            f"selected: {', '.join(compared) or 'none of them'}"
        )
    return replace(plan, burst=False, cost=True, paced=None)


def paced_from_args(plan: Plan, args: argparse.Namespace) -> Plan:
    """The paced part of the command line: `--paced/--no-paced`, `--paced-n`, `--paced-only`."""
    if args.paced_only and args.paced is False:
        raise SystemExit("--paced-only and --no-paced contradict each other")
    if args.paced is False:
        return replace(plan, paced=None)
    paced = plan.paced or PacedPlan.full()
    if args.paced_n is not None:
        paced = replace(paced, ns=args.paced_n)
    plan = replace(plan, paced=paced)
    if args.paced_only:
        if not paced_systems(plan.systems, paced):
            raise SystemExit(f"--paced-only: none of the paced systems ({', '.join(paced.systems)}) selected")
        plan = replace(plan, burst=False, cost=False)
    return plan


def _paced_ns(text: str) -> tuple[int, ...]:
    try:
        return parse_ns(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def arguments() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke run (not the published figures)")
    parser.add_argument(
        "--reply-tokens", type=int, default=DEFAULT_REPLY_TOKENS, help="text deltas per answer"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where latest.json and latest.png go")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="only this concurrency (repeatable), for every system, the PostgreSQL ones and the "
        f"Switchboard variants included (default: {', '.join(map(str, CONCURRENCIES))}; PostgreSQL "
        f"systems {', '.join(map(str, PG_CONCURRENCIES))}; variants "
        f"{', '.join(map(str, STACK_VARIANT_CONCURRENCIES))})",
    )
    parser.add_argument("--one-turn", action="store_true", help="only the one-turn variant")
    parser.add_argument("--no-upload", action="store_true", help="skip the upload scenario")
    parser.add_argument(
        "--system",
        action="append",
        choices=SYSTEMS,
        help="only this system (repeatable; default: all). The upload scenario runs with "
        f"{SWITCHBOARD} or {GRPC_DIRECT} (the SQLite stack); the cost phase with at least two of "
        f"{', '.join(OBSERVED)}",
    )
    parser.add_argument(
        "--no-pg",
        action="store_true",
        help=f"leave out {' and '.join(PG_REPLICAS)} (e.g. where PostgreSQL is not installed)",
    )
    parser.add_argument(
        "--no-variants",
        action="store_true",
        help=f"leave out the Switchboard variants ({', '.join(STACK_VARIANTS)}) and the cost phase",
    )
    parser.add_argument(
        "--cost-rounds",
        type=int,
        metavar="N",
        help=f"rounds of the cost phase ({SWITCHBOARD} and its compared variants at "
        f"{report.COST_CONCURRENCY} streams, one turn; default: one per compared system, "
        f"{len(OBSERVED)}). A multiple of the number of compared systems balances the positions: "
        "each system runs in each position equally often",
    )
    parser.add_argument(
        "--cost-only",
        action="store_true",
        help="only the cost phase (no burst cells, no upload, no paced scenario); --system narrows "
        "it (at least two of the compared systems)",
    )
    parser.add_argument(
        "--paced",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"the paced scenario after the burst phase ({', '.join(PACED_SYSTEMS)}; on by default): N "
        f"streams at once, each answer {PACED_REPLY_TOKENS} tokens at {PACED_TOKENS_PER_S:g} tokens/s "
        "(--quick: 60 tokens, N=20,50); delivery lag per token and capacity",
    )
    parser.add_argument(
        "--paced-n",
        type=_paced_ns,
        metavar="N,N,...",
        help=f"the paced sweep's stream counts (default: {','.join(map(str, PACED_NS))}; 2000 more "
        "takes a minute or more)",
    )
    parser.add_argument(
        "--paced-only",
        action="store_true",
        help="only the paced scenario (no burst cells, no upload); --system narrows it",
    )
    parser.add_argument(
        "--update-docs", action="store_true", help="also write the tables into docs/performance.md"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    plan = plan_from_args(args)
    try:
        run(plan, args.out, chart=not args.no_chart, update_docs=args.update_docs)
    except PostgresUnavailable as error:
        print(f"{error}\n\nOr leave the PostgreSQL systems out: --no-pg", file=sys.stderr)
        return 2
    return 0
