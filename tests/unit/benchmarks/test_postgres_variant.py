"""The PostgreSQL variant of the benchmark: the plan, process-tree accounting, the report rows and
the scale-out target (everything that does not need the full bench to run)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks.metrics import MiB, ProcessWatch, tree_cpu_seconds, tree_pss
from benchmarks.report import (
    SCALE_OUT_MIN_CPUS,
    SCALE_OUT_TARGET,
    evaluate_targets,
    markdown,
    postgres_note,
    scale_out_target,
    table,
    write_chart,
)
from benchmarks.runner import CONCURRENCIES, ONE_TURN, TWO_TURNS, Plan, arguments, main, plan_from_args
from benchmarks.systems import (
    CEILING,
    GRPC_DIRECT,
    LABELS,
    OBSERVED,
    PG_REPLICAS,
    REFERENCE,
    STACK_VARIANTS,
    SWITCHBOARD,
    SWITCHBOARD_PG,
    SWITCHBOARD_PG_2,
    SYSTEMS,
    postmaster_pid,
)

BASE_SYSTEMS = (SWITCHBOARD, GRPC_DIRECT, REFERENCE, CEILING)


def _cells(plan: Plan) -> set[tuple[str, int, str]]:
    return {(s, c, v.name) for c, v, systems in plan.groups() for s in systems}


def test_the_full_plan_adds_the_postgres_systems_at_32_and_256_one_turn_and_keeps_the_rest() -> None:
    plan = Plan.full(64)
    cells = _cells(plan)
    assert {cell for cell in cells if cell[0] in PG_REPLICAS} == {
        (system, concurrency, "create") for system in PG_REPLICAS for concurrency in (32, 256)
    }
    # the four other systems: one turn at every concurrency, two turns at 1 and 32 only (the wave
    # and 256 run one turn: the time of the paced phase)
    # (the Switchboard variants: tests/unit/benchmarks/test_observability_cost.py)
    expected = {
        (system, concurrency, variant.name)
        for system in BASE_SYSTEMS
        for concurrency in CONCURRENCIES
        for variant in (ONE_TURN, TWO_TURNS)
        if variant.turns == 1 or concurrency in (1, 32)
    }
    assert {cell for cell in cells if cell[0] in BASE_SYSTEMS} == expected
    # groups run in the old order; the PostgreSQL rows join the groups they share
    assert [(c, v.name) for c, v, _ in plan.groups()] == [
        (1, "create"),
        (1, "create+add"),
        (32, "create"),
        (32, "create+add"),
        (256, "create"),
        (1000, "create"),
    ]
    # every system but the compared variants, which run in the cost phase
    assert plan.groups()[2][2] == tuple(s for s in SYSTEMS if s == SWITCHBOARD or s not in OBSERVED)
    assert plan.warmup_of(SWITCHBOARD_PG) == 100 and plan.warmup_of(SWITCHBOARD) == 100


def test_the_quick_plan_runs_the_postgres_systems_too() -> None:
    plan = Plan.quick(64)
    assert {cell for cell in _cells(plan) if cell[0] == SWITCHBOARD_PG_2} == {
        (SWITCHBOARD_PG_2, 32, "create"),
        (SWITCHBOARD_PG_2, 256, "create"),
    }
    assert plan.warmup_of(SWITCHBOARD_PG) == plan.warmup == 50


def _args(*argv: str) -> Plan:
    return plan_from_args(arguments().parse_args(argv))


def test_the_command_line_selects_systems_and_concurrencies() -> None:
    one_column = _args("--concurrency", "64", "--one-turn")
    # every system but the compared variants (they run in the cost phase, at 32 streams only)
    assert _cells(one_column) == {(system, 64, "create") for system in SYSTEMS if system not in OBSERVED[1:]}
    assert one_column.conversations == {64: 256}
    # a concurrency asked for runs both variants, 256 included (the full plan runs one turn there)
    assert (SWITCHBOARD, 256, "create+add") in _cells(_args("--concurrency", "256"))
    without = _args("--no-pg")
    assert without.systems == (SWITCHBOARD, *STACK_VARIANTS, GRPC_DIRECT, REFERENCE, CEILING)
    assert all(s not in PG_REPLICAS for s, _, _ in _cells(without))
    only = _args("--system", SWITCHBOARD_PG_2, "--system", SWITCHBOARD)
    assert only.systems == (SWITCHBOARD, SWITCHBOARD_PG_2)  # report order, whatever the flags' order
    with pytest.raises(SystemExit, match="no system left"):
        _args("--system", SWITCHBOARD_PG, "--no-pg")


def test_the_help_describes_the_postgres_systems(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--no-pg" in text and "--system" in text and "PostgreSQL" in text
    assert SWITCHBOARD_PG_2 in text


def test_the_postmaster_pid_is_the_first_line_of_postmaster_pid(tmp_path: Path) -> None:
    class Cluster:
        data = tmp_path

    (tmp_path / "postmaster.pid").write_text("4242\n/var/lib/pg\n1700000000\n5432\n")
    assert postmaster_pid(Cluster()) == 4242  # type: ignore[arg-type]


_BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n{rest}"


async def test_a_process_tree_counts_the_cpu_of_children_alive_and_exited() -> None:
    watch = ProcessWatch({"tree": os.getpid(), "flat": os.getpid()}, trees=("tree",), tree_interval_s=0.01)
    watch.set_baseline()
    watch.start()
    # one child burns 0.3 s of CPU and exits (reaped here) ...
    exited = await asyncio.create_subprocess_exec(sys.executable, "-c", _BURN.format(s=0.3, rest=""))
    assert await exited.wait() == 0
    # ... another burns 0.3 s and is still alive when the watch stops
    alive = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BURN.format(s=0.3, rest="print('done', flush=True)\ntime.sleep(30)"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert alive.stdout is not None and await alive.stdout.readline() == b"done\n"
        await watch.stop()
        used = watch.cpu_used()
        assert used["tree"] >= used["flat"] + 0.55  # both children, not just this process
        assert used["flat"] < 0.5
        assert watch.peak_rss["tree"] > 0
    finally:
        alive.kill()
        await alive.wait()


def test_tree_readings_only_grow_when_a_child_exits() -> None:
    me = psutil.Process()
    child = subprocess.Popen([sys.executable, "-c", _BURN.format(s=0.2, rest="time.sleep(0.2)")])
    time.sleep(0.1)
    before = tree_cpu_seconds(me)
    child.wait()  # reaped: its CPU moves into this process's children_* times
    after = tree_cpu_seconds(me)
    assert after >= before
    assert tree_pss(me) > 10 * MiB


def _record(system: str, concurrency: int, conv_s: float, **extra: Any) -> dict[str, Any]:
    """A cell of 40 ms server and 3 ms client CPU per conversation."""
    processes = extra.get("processes", {"edge": 1})
    return {
        "system": system,
        "label": LABELS[system],
        "variant": "create",
        "turns": 1,
        "concurrency": concurrency,
        "conversations": 768,
        "errors": 0,
        "conversations_per_s": conv_s,
        "text_bytes_per_s": 16_000.0,
        "deltas_per_turn": 13.0,
        "ttft_p50_ms": 3000.0,
        "ttft_p99_ms": 5000.0,
        "cpu_s_per_conversation": 0.040,
        "client_cpu_s_per_conversation": 0.003,
        "peak_rss_mib": {name: 100.0 for name in processes},
        "rss_growth_per_stream_kib": {name: 30.0 for name in processes},
    }


PG_1 = {"edge": 1, "agent": 2, "postgres": 3}
PG_2 = {"edge": 1, "agent": 2, "agent-2": 4, "postgres": 3}


def _scaling_records(one: float, two: float) -> list[dict[str, Any]]:
    return [
        _record(SWITCHBOARD_PG, 256, one, processes=PG_1),
        _record(SWITCHBOARD_PG_2, 256, two, processes=PG_2),
    ]


def test_two_replicas_vs_one_is_informational_on_a_small_machine() -> None:
    target = scale_out_target(_scaling_records(40.0, 48.0), cpus=2)
    assert target["target"] == SCALE_OUT_TARGET == "two replicas vs one (PostgreSQL, 256 concurrent)"
    assert target["status"] == "INFO"  # neither PASS nor MISS on 2 CPUs
    assert target["value"] == (
        "1.20x (48 vs 40 conv/s) on 2 CPUs (busy: 1.7 with 1 replica, 2.1 with 2); "
        f"not meaningful below {SCALE_OUT_MIN_CPUS} CPUs"
    )
    assert target["requirement"] == f">= 1.6x on >= {SCALE_OUT_MIN_CPUS} CPUs"


@pytest.mark.parametrize(("two", "status"), [(64.0, "PASS"), (63.0, "MISS")])
def test_two_replicas_vs_one_passes_at_1_6x_with_enough_cores(two: float, status: str) -> None:
    target = scale_out_target(_scaling_records(40.0, two), cpus=SCALE_OUT_MIN_CPUS)
    assert target["status"] == status
    assert target["value"] == f"{two / 40:.2f}x ({two:.0f} vs 40 conv/s) on {SCALE_OUT_MIN_CPUS} CPUs"


def test_two_replicas_vs_one_is_na_without_both_cells() -> None:
    records = [_record(SWITCHBOARD_PG, 256, 40.0, processes=PG_1), _record(SWITCHBOARD_PG_2, 32, 50.0)]
    assert scale_out_target(records, cpus=8)["status"] == "n/a"
    statuses = {t["target"]: t["status"] for t in evaluate_targets([], None, cpus=8)}
    assert statuses[SCALE_OUT_TARGET] == "n/a"


def _results(records: list[dict[str, Any]], cpus: int = 2) -> dict[str, Any]:
    return {
        "machine": {"cpus": cpus, "python": "3.11", "cpu": "test", "postgresql": "PostgreSQL 15.18"},
        "plan": {"reply_tokens": 64},
        "generated_at": "now",
        "records": records,
        "upload": None,
        "targets": evaluate_targets(records, None, cpus=cpus),
        "wall_s": 1.0,
    }


def test_the_report_shows_the_postgres_rows_beside_sqlite() -> None:
    records = [
        _record(CEILING, 256, 1000.0),
        *_scaling_records(40.0, 48.0),
        _record(SWITCHBOARD, 256, 40.0, processes={"edge": 1, "agent": 2, "upload": 5}),
        _record(REFERENCE, 256, 60.0),
    ]
    results = _results(records)
    text = table(results)
    rows = [line.split()[0] for line in text.splitlines() if line.endswith(("/30.0", "30.0 |"))]
    assert rows == [SWITCHBOARD, SWITCHBOARD_PG, SWITCHBOARD_PG_2, REFERENCE, CEILING]
    assert "edge 100/30.0 agent 100/30.0 agent-2 100/30.0 postgres 100/30.0" in text
    assert "INFO  two replicas vs one (PostgreSQL, 256 concurrent): 1.20x (48 vs 40 conv/s) on 2 CPUs" in text
    assert "switchboard-pg: edge + 1 agent replica, switchboard-pg-2: edge + 2 agent replicas" in text
    assert "run on PostgreSQL 15.18" in text
    md = markdown(results)
    md_rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines() if "| create | 256 |" in line]
    assert md_rows == [SWITCHBOARD, SWITCHBOARD_PG, SWITCHBOARD_PG_2, REFERENCE, CEILING]
    assert "| two replicas vs one (PostgreSQL, 256 concurrent) | **INFO** | 1.20x" in md
    assert "postgres 100, " not in md and "agent-2 100, postgres 100 |" in md


def test_the_postgres_note_is_only_there_with_postgres_rows() -> None:
    assert postgres_note(_results([_record(SWITCHBOARD, 32, 40.0)])) is None
    note = postgres_note(_results(_scaling_records(40.0, 48.0)))
    assert note is not None and "the postmaster and every backend" in note and "PSS" in note


def test_the_chart_draws_the_postgres_systems(tmp_path: Path) -> None:
    records = [
        *_scaling_records(40.0, 48.0),
        _record(SWITCHBOARD, 256, 40.0),
        _record(SWITCHBOARD, 32, 41.0),
        _record(SWITCHBOARD_PG, 32, 38.0, processes=PG_1),
    ]
    chart = tmp_path / "latest.png"
    write_chart(_results(records), chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
