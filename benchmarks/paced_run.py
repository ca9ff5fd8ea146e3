"""The paced phase of `python -m benchmarks` (issue #17): its systems, warm-up and sweep.

It runs after the burst phase's systems have stopped, on stacks of its own started with the pace
(so the two phases never share memory or CPU, and no burst system runs with a paced model):

- `switchboard` and `grpc-direct`: one stack, the agent service and the edge on SQLite, started with
  `SWITCHBOARD_LOCAL_REPLY_TOKENS` and `SWITCHBOARD_LOCAL_TOKENS_PER_S`
  (`benchmarks.systems.paced_switchboard`; no upload service, the workload sends no attachments);
- `reference`: `python -m benchmarks.reference_server --reply-tokens N --tokens-per-s R`, the same
  benchmark model on the same schedule.

Every system gets one paced wave of `PacedPlan.warmup` streams, all systems side by side (one
answer's time), then each process's idle RSS is taken. The sweep runs the Ns in ascending order; at
each N one cell per system still sweeping, their order rotating from one N to the next. A system whose
cell has errors, a p99 lag past `PacedPlan.stop_p99_lag_ms` or a p99 time to first delta longer than
an answer lasts runs no larger N (`benchmarks.paced.stop_reason`), and the report says so.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import psutil

from benchmarks.client import Client
from benchmarks.loadgen import run_cell
from benchmarks.metrics import ProcessWatch, cpu_seconds
from benchmarks.paced import PACED_SYSTEMS, PacedPlan, Sweep, paced_figures
from benchmarks.systems import (
    GRPC_DIRECT,
    LABELS,
    REFERENCE,
    SWITCHBOARD,
    Target,
    aiohttp_server,
    paced_switchboard,
    paced_targets,
)
from switchboard.demo.benchmark import benchmark_text

SETTLE_S: Final = 0.5
"""A pause between cells, so one cell's stragglers (a server finishing its writes) do not start the
next one's clock."""

Log = Callable[[str], None]


def paced_systems(systems: Sequence[str], plan: PacedPlan) -> tuple[str, ...]:
    """The systems of the run that the paced phase measures, in report order."""
    return tuple(name for name in PACED_SYSTEMS if name in systems and name in plan.systems)


def start_paced_systems(
    names: Sequence[str], plan: PacedPlan, work: Path, running: ExitStack, log: Log
) -> tuple[dict[str, Target], str | None]:
    """Start the paced systems in `names` (stopped when `running` closes); their targets in report
    order, and the agent's gRPC address (None without the Switchboard stack)."""
    targets: dict[str, Target] = {}
    grpc_address = None
    pace = f"{plan.reply_tokens} tokens at {plan.tokens_per_s:g} tokens/s"
    if SWITCHBOARD in names or GRPC_DIRECT in names:
        log(f"starting paced Switchboard on SQLite (agent, edge; {pace})")
        stack = running.enter_context(
            paced_switchboard(work / "paced-switchboard", plan.reply_tokens, plan.tokens_per_s)
        )
        targets.update({target.name: target for target in paced_targets(stack)})
        grpc_address = stack.agent_address
    if REFERENCE in names:
        log(f"starting the paced reference ({pace})")
        targets[REFERENCE] = running.enter_context(
            aiohttp_server(
                "benchmarks.reference_server", REFERENCE, plan.reply_tokens, work, plan.tokens_per_s
            )
        )
    return {name: targets[name] for name in PACED_SYSTEMS if name in names}, grpc_address


async def _warm_up(target: Target, plan: PacedPlan, grpc_address: str | None) -> None:
    """One paced wave of `plan.warmup` streams on a client of its own (the systems warm up at once)."""
    client = Client(benchmark_text(plan.reply_tokens), grpc_address)
    try:
        driver = await client.driver(target)
        run = await run_cell(driver, concurrency=plan.warmup, conversations=plan.warmup, turns=1)
    finally:
        await client.close()
    if run.errors:
        raise RuntimeError(f"{target.name} failed its paced warm-up: {run.first_errors}")


async def measure_paced_cell(
    client: Client, target: Target, watch: ProcessWatch, *, n: int, plan: PacedPlan
) -> dict[str, Any]:
    """One cell: `n` conversations of one turn, all started at once, each read to its end."""
    driver = await client.driver(target)
    gc.collect()
    me = psutil.Process()
    client_before = cpu_seconds(me.cpu_times())
    watch.start()
    run = await run_cell(driver, concurrency=n, conversations=n, turns=1, keep_turns=True)
    await watch.stop()
    client_cpu_s = cpu_seconds(me.cpu_times()) - client_before
    await client.end_cell()
    # The lag arithmetic runs after the clocks stopped: it is analysis, not load generation.
    return paced_figures(
        run,
        plan,
        n=n,
        cpu_by_process=watch.cpu_used(),
        client_cpu_s=client_cpu_s,
        baseline_rss=watch.baseline_rss,
        peak_rss=watch.peak_rss,
    )


def paced_progress_line(record: Mapping[str, Any], elapsed_s: float) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    cpu = record["cpu_us_per_token"]
    return (
        f"paced {record['system']:<12} N={record['n']:<5} lag p50 {ms(record['lag_p50_ms'])} "
        f"p99 {ms(record['lag_p99_ms'])} max {ms(record['lag_max_ms'])} ms  ttft p99 "
        f"{ms(record['ttft_p99_ms'])} ms  in flight {record['streaming_peak']}  "
        f"cpu {'-' if cpu is None else f'{cpu:.0f}'} µs/token  "
        f"events/turn {record['events_per_turn'] or 0:.0f}  errors {record['errors']}  ({elapsed_s:.1f} s)"
    )


async def measure_paced(
    targets: Mapping[str, Target], plan: PacedPlan, log: Log, *, grpc_address: str | None
) -> list[Sweep]:
    """Warm the paced systems up, take their idle RSS, then sweep `plan.ns` (see the module
    docstring); every system's sweep, in report order."""
    loop = asyncio.get_running_loop()
    log(f"paced warm-up: {plan.warmup} streams on each of {', '.join(targets)}, side by side")
    await asyncio.gather(*(_warm_up(target, plan, grpc_address) for target in targets.values()))
    watches = {name: ProcessWatch(target.pids, trees=target.trees) for name, target in targets.items()}
    await asyncio.sleep(1.0)
    for watch in watches.values():
        watch.set_baseline()
    sweeps = {name: Sweep(name) for name in targets}
    client = Client(benchmark_text(plan.reply_tokens), grpc_address)
    try:
        for index, n in enumerate(plan.ns):
            active = [name for name in targets if sweeps[name].stopped is None]
            for name in (active[(index + i) % len(active)] for i in range(len(active))):
                target = targets[name]
                started = loop.time()
                figures = await measure_paced_cell(client, target, watches[name], n=n, plan=plan)
                record = {
                    "system": name,
                    "label": LABELS[name],
                    "reply_tokens": plan.reply_tokens,
                    "tokens_per_s": plan.tokens_per_s,
                    "processes": target.pids,
                    **figures,
                }
                sweeps[name].add(record, plan)
                log(paced_progress_line(record, loop.time() - started))
                if sweeps[name].stopped is not None:
                    log(f"paced {name}: clearly past capacity ({sweeps[name].stopped}); no larger N")
                await asyncio.sleep(SETTLE_S)
    finally:
        await client.close()
    return list(sweeps.values())
