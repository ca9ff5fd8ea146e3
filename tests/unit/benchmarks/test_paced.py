"""The paced scenario (issue #17): delivery lag per token (coalesced deltas included), capacity and
the stop rule, the plan and its command line, the report's table, targets and chart, and real
servers (the reference in-process and as a process, Switchboard's paced stack) streaming on time."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from benchmarks import paced_report, report
from benchmarks.client import Client
from benchmarks.loadgen import CellRun, run_cell
from benchmarks.metrics import MiB
from benchmarks.paced import (
    PacedPlan,
    Sweep,
    capacity,
    paced_figures,
    parse_ns,
    stop_reason,
    streaming_peak,
    token_arrivals,
    token_ends,
    token_lags,
    turn_lags,
)
from benchmarks.paced_run import measure_paced, paced_systems
from benchmarks.reference_server import create_app
from benchmarks.runner import Plan, arguments, plan_from_args, run
from benchmarks.systems import (
    CEILING,
    GRPC_DIRECT,
    REFERENCE,
    SWITCHBOARD,
    SYSTEMS,
    Target,
    aiohttp_server,
    paced_switchboard,
    paced_targets,
)
from benchmarks.workload import HttpDriver, TurnResult
from switchboard.demo.benchmark import benchmark_deltas, benchmark_text

# --------------------------------------------------------------------------- delivery lag


def _turn(deltas: list[str], times: list[float], started: float = 0.0) -> TurnResult:
    turn = TurnResult()
    for text, at in zip(deltas, times, strict=True):
        turn.delta(text, at, started)
    return turn


def test_token_ends_are_the_offsets_just_past_each_word() -> None:
    assert token_ends(4) == (5, 11, 17, 21)  # "lorem", " ipsum", " dolor", " sit"
    assert len(token_ends(300)) == 300 and token_ends(300)[-1] == len(benchmark_text(300))


def test_a_coalesced_delta_gives_each_of_its_tokens_its_arrival() -> None:
    ends = token_ends(6)
    # One token, then three coalesced in one event, then two.
    deltas = ["lorem", " ipsum dolor sit", " amet consectetur"]
    assert "".join(deltas) == benchmark_text(6)
    assert token_arrivals(deltas, [1.0, 1.5, 2.0], ends) == [1.0, 1.5, 1.5, 1.5, 2.0, 2.0]
    # A delta that ends inside a word completes the word only with the next one.
    split = ["lor", "em ip", "sum dolor sit amet consectetur"]
    assert token_arrivals(split, [1.0, 2.0, 3.0], ends) == [2.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    # A stream cut short: only the tokens it completed.
    assert token_arrivals(["lorem", " ipsum"], [1.0, 2.0], ends) == [1.0, 2.0]


def test_the_lag_is_anchored_at_the_streams_most_punctual_token() -> None:
    assert token_lags([], 50.0) == []
    on_time = [10.0 + k / 50 for k in range(5)]
    assert token_lags(on_time, 50.0) == pytest.approx([0.0] * 5)
    # Tokens 2 to 4 came in one batch 100 ms after token 2 was due: 100, 80 and 60 ms late.
    late = [10.0, 10.02, 10.14, 10.14, 10.14]
    assert token_lags(late, 50.0) == pytest.approx([0.0, 0.0, 0.1, 0.08, 0.06])
    # One delta that carries three tokens: the last was on time, the earlier ones 40 and 20 ms late.
    assert token_lags([5.0, 5.0, 5.0], 50.0) == pytest.approx([0.04, 0.02, 0.0])
    # A first token 35 ms late and the rest on time: only the first one lags.
    assert token_lags([1.035, 1.02, 1.04], 50.0) == pytest.approx([0.035, 0.0, 0.0])


def test_turn_lags_read_the_turns_deltas() -> None:
    turn = _turn(["lorem", " ipsum", " dolor sit"], [3.0, 3.02, 3.1])
    assert turn_lags(turn, token_ends(4), 50.0) == pytest.approx([0.0, 0.0, 0.06, 0.04])
    assert turn.delta_texts == ["lorem", " ipsum", " dolor sit"] and turn.delta_times == [3.0, 3.02, 3.1]


def test_a_cells_figures() -> None:
    plan = PacedPlan(ns=(2,), reply_tokens=4, tokens_per_s=50.0)
    run = CellRun(keep_turns=True, conversations=3, errors=1, wall_s=2.0, ttfts_s=[0.1, 0.3])
    on_time = _turn(list(benchmark_deltas(4)), [1.0, 1.02, 1.04, 1.06])
    batched = _turn(["lorem", " ipsum dolor sit"], [2.0, 2.5])  # lags 0, 0.48, 0.46, 0.44
    on_time.events, batched.events = 12, 10
    run.kept += [on_time, batched]
    figures = paced_figures(
        run,
        plan,
        n=2,
        cpu_by_process={"edge": 0.004, "agent": 0.004},
        client_cpu_s=0.5,
        baseline_rss={"edge": 100 * MiB, "agent": 100 * MiB},
        peak_rss={"edge": 101 * MiB, "agent": 100 * MiB},
    )
    assert figures["tokens"] == 8 and figures["errors"] == 1 and figures["conversations"] == 3
    assert figures["lag_p50_ms"] == pytest.approx(0.0, abs=1e-6)
    assert figures["lag_max_ms"] == pytest.approx(480.0)
    assert 440 < figures["lag_p99_ms"] < 480
    assert figures["ttft_p50_ms"] == pytest.approx(200.0)
    assert figures["events_per_turn"] == 11 and figures["deltas_per_turn"] == 3
    assert figures["streaming_peak"] == 1  # 1.0-1.06, then 2.0-2.5: never side by side
    assert figures["cpu_us_per_token"] == pytest.approx(1000.0)  # 8 ms of server CPU, 8 tokens
    assert figures["client_cpu_us_per_token"] == pytest.approx(62_500.0)
    assert figures["client_cpu_share"] == pytest.approx(0.25)
    assert figures["rss_growth_per_stream_kib"] == {"edge": 512.0, "agent": 0.0}


def test_the_streams_in_flight_are_those_between_their_first_and_last_delta() -> None:
    assert streaming_peak([]) == 0
    a = _turn(["lorem", " ipsum"], [1.0, 3.0])
    b = _turn(["lorem", " ipsum"], [2.0, 4.0])
    c = _turn(["lorem", " ipsum"], [3.0, 5.0])  # starts as a ends: counted with it
    d = _turn(["lorem", " ipsum"], [6.0, 7.0])
    assert streaming_peak([a, b, c, d]) == 3
    assert streaming_peak([a, d]) == 1


# --------------------------------------------------------------------------- capacity and the sweep


def _cell(system: str, n: int, lag_p99_ms: float | None, errors: int = 0, **more: Any) -> dict[str, Any]:
    return {
        "system": system,
        "n": n,
        "conversations": n,
        "errors": errors,
        "wall_s": 6.5,
        "tokens": 300 * (n - errors),
        "lag_p50_ms": None if lag_p99_ms is None else lag_p99_ms / 4,
        "lag_p99_ms": lag_p99_ms,
        "lag_max_ms": None if lag_p99_ms is None else lag_p99_ms * 1.5,
        "ttft_p50_ms": 20.0,
        "ttft_p99_ms": 80.0,
        "streaming_peak": n,
        "events_per_turn": 307.0,
        "deltas_per_turn": 300.0,
        "cpu_us_per_token": 120.0,
        "client_cpu_us_per_token": 30.0,
        "client_cpu_share": 0.3,
        "peak_rss_mib": {"edge": 150.0},
        "rss_growth_per_stream_kib": {"edge": 40.0},
        **more,
    }


def test_capacity_is_the_largest_n_with_a_p99_lag_under_250_ms_and_no_error() -> None:
    assert capacity([_cell(SWITCHBOARD, 100, 20.0), _cell(SWITCHBOARD, 250, 240.0)]) == 250
    assert capacity([_cell(SWITCHBOARD, 100, 20.0), _cell(SWITCHBOARD, 250, 250.0)]) == 100
    assert capacity([_cell(SWITCHBOARD, 100, 20.0), _cell(SWITCHBOARD, 250, 30.0, errors=1)]) == 100
    assert capacity([_cell(REFERENCE, 100, 900.0)]) is None  # below the smallest N
    assert capacity([_cell(REFERENCE, 100, None)]) is None
    assert capacity([]) is None


def test_a_sweep_stops_after_errors_or_a_p99_lag_past_2_s() -> None:
    plan = PacedPlan()
    assert stop_reason(_cell(SWITCHBOARD, 250, 1999.0), plan) is None
    assert stop_reason(_cell(SWITCHBOARD, 500, 3400.0), plan) == "p99 lag 3.4 s > 2 s at N=500"
    assert stop_reason(_cell(SWITCHBOARD, 500, 10.0, errors=3), plan) == "3 errors at N=500"
    # Streams that wait longer to start than an answer lasts (5.98 s) no longer run side by side.
    assert stop_reason(_cell(SWITCHBOARD, 250, 100.0, ttft_p99_ms=5900.0), plan) is None
    assert (
        stop_reason(_cell(SWITCHBOARD, 250, 100.0, ttft_p99_ms=8900.0), plan)
        == "p99 TTFT 8.9 s > 6.0 s, an answer's duration, at N=250"
    )
    sweep = Sweep(REFERENCE)
    sweep.add(_cell(REFERENCE, 100, 100.0), plan)
    assert sweep.stopped is None
    sweep.add(_cell(REFERENCE, 250, 2500.0), plan)
    assert sweep.stopped is not None and sweep.skipped(plan) == (500, 1000)


def test_the_paced_plans() -> None:
    full = PacedPlan.full()
    assert (full.ns, full.reply_tokens, full.tokens_per_s) == ((100, 250, 500, 1000), 300, 50.0)
    assert full.answer_s == pytest.approx(5.98)
    assert full.systems == (SWITCHBOARD, GRPC_DIRECT, REFERENCE)
    quick = PacedPlan.quick()
    assert (quick.ns, quick.reply_tokens) == ((20, 50), 60)
    with pytest.raises(ValueError, match="ascending"):
        PacedPlan(ns=(250, 100))
    with pytest.raises(ValueError, match="ascending"):
        PacedPlan(ns=())
    assert parse_ns("1000, 100,250") == (100, 250, 1000)
    for bad in ("", "0,100", "a,b"):
        with pytest.raises(ValueError, match="stream counts"):
            parse_ns(bad)


def _args(*argv: str) -> Plan:
    return plan_from_args(arguments().parse_args(argv))


def test_the_command_line_runs_the_paced_phase_by_default_and_can_run_it_alone() -> None:
    default = _args()
    assert default.paced == PacedPlan.full() and default.burst
    assert paced_systems(default.systems, PacedPlan.full()) == (SWITCHBOARD, GRPC_DIRECT, REFERENCE)
    assert _args("--quick").paced == PacedPlan.quick()
    assert _args("--no-paced").paced is None
    more = _args("--paced-n", "100,250,500,1000,2000")
    assert more.paced is not None and more.paced.ns == (100, 250, 500, 1000, 2000)
    alone = _args("--paced-only", "--system", REFERENCE, "--paced-n", "50")
    assert not alone.burst and not alone.cost and alone.systems == (REFERENCE,)
    assert alone.paced is not None and alone.paced.ns == (50,)
    assert paced_systems(alone.systems, alone.paced) == (REFERENCE,)
    with pytest.raises(SystemExit, match="contradict"):
        _args("--paced-only", "--no-paced")
    with pytest.raises(SystemExit, match="none of the paced systems"):
        _args("--paced-only", "--system", CEILING)
    with pytest.raises(SystemExit):
        _args("--paced-n", "0")


def test_the_help_describes_the_paced_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        arguments().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--paced-only" in text and "--paced-n" in text and "--no-paced" in text
    assert "300 tokens at 50 tokens/s" in text


# --------------------------------------------------------------------------- the report


def _summary(cells: list[dict[str, Any]], plan: PacedPlan | None = None) -> dict[str, Any]:
    plan = plan or PacedPlan()
    sweeps: dict[str, Sweep] = {}
    for cell in cells:
        sweeps.setdefault(cell["system"], Sweep(cell["system"])).add(cell, plan)
    ordered = [sweeps[name] for name in (SWITCHBOARD, GRPC_DIRECT, REFERENCE) if name in sweeps]
    return paced_report.summary(ordered, plan)


def _statuses(paced: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {t["target"]: (t["status"], t["value"]) for t in paced_report.targets(paced)}


def test_the_targets_when_both_hold_some_n() -> None:
    paced = _summary(
        [
            _cell(SWITCHBOARD, 100, 20.0),
            _cell(SWITCHBOARD, 250, 60.0),
            _cell(SWITCHBOARD, 500, 1500.0),
            _cell(SWITCHBOARD, 1000, 2600.0),
            _cell(REFERENCE, 100, 150.0),
            _cell(REFERENCE, 250, 2100.0),
        ]
    )
    assert paced["systems"][SWITCHBOARD] == {
        "label": "Switchboard (edge, SSE)",
        "capacity": 250,
        "stopped": "p99 lag 2.6 s > 2 s at N=1000",
        "skipped": [],
    }
    assert paced["systems"][REFERENCE]["skipped"] == [500, 1000]
    statuses = _statuses(paced)
    assert statuses[paced_report.CAPACITY_TARGET] == ("PASS", "2.50x (N=250 vs N=100)")
    assert statuses[paced_report.LAG_TARGET] == ("PASS", "20.0 vs 150.0 ms at N=100")
    assert statuses[paced_report.ERRORS_TARGET] == ("PASS", "0 errors in 350 conversations (N <= 250)")
    even = _summary([_cell(SWITCHBOARD, 100, 200.0), _cell(REFERENCE, 100, 150.0)])
    assert _statuses(even)[paced_report.CAPACITY_TARGET][0] == "MISS"  # 1.0x
    assert _statuses(even)[paced_report.LAG_TARGET] == ("MISS", "200.0 vs 150.0 ms at N=100")


def test_errors_below_switchboards_capacity_miss_the_errors_target() -> None:
    # The sweep stops at a cell with errors, so only results put together otherwise (a report of
    # hand-made or older results) can have one below the capacity; the target still checks.
    records = [_cell(SWITCHBOARD, 100, 20.0, errors=1), _cell(SWITCHBOARD, 250, 60.0)]
    paced = {"plan": {"ns": [100, 250]}, "records": records, "systems": {SWITCHBOARD: {"capacity": 250}}}
    assert paced_report.errors_target(paced)["status"] == "MISS"
    assert capacity(records) == 250  # the largest N that holds, whatever came below it
    stopped = _summary([_cell(SWITCHBOARD, 100, 20.0, errors=1), _cell(REFERENCE, 100, 50.0)])
    assert stopped["systems"][SWITCHBOARD]["capacity"] is None
    assert stopped["systems"][SWITCHBOARD]["stopped"] == "1 errors at N=100"
    status, value = _statuses(stopped)[paced_report.ERRORS_TARGET]
    assert status == "INFO" and value == "no capacity in the sweep; 1 errors in 100 conversations"


def test_a_reference_below_the_smallest_n_bounds_the_ratio_from_below() -> None:
    clear = _summary(
        [_cell(SWITCHBOARD, 100, 20.0), _cell(SWITCHBOARD, 250, 90.0), _cell(REFERENCE, 100, 2500.0)]
    )
    status, value = _statuses(clear)[paced_report.CAPACITY_TARGET]
    assert status == "PASS" and value.startswith("> 2.5x") and "below the smallest N swept, 100" in value
    status, value = _statuses(clear)[paced_report.LAG_TARGET]
    assert status == "INFO" and "20.0 vs 2500.0 ms at N=100" in value and "holds no N" in value
    unclear = _summary(
        [_cell(SWITCHBOARD, 100, 20.0), _cell(SWITCHBOARD, 250, 900.0), _cell(REFERENCE, 100, 900.0)]
    )
    status, value = _statuses(unclear)[paced_report.CAPACITY_TARGET]
    assert status == "INFO" and value.startswith("> 1.0x") and "a smaller N would tell" in value
    neither = _summary([_cell(SWITCHBOARD, 100, 900.0), _cell(REFERENCE, 100, 900.0)])
    status, value = _statuses(neither)[paced_report.CAPACITY_TARGET]
    assert status == "INFO" and "neither holds the smallest N" in value
    behind = _summary([_cell(SWITCHBOARD, 100, 900.0), _cell(REFERENCE, 100, 90.0)])
    assert _statuses(behind)[paced_report.CAPACITY_TARGET][0] == "MISS"


def test_switchboard_stopped_before_the_references_capacity_misses_the_lag_target() -> None:
    paced = _summary(
        [
            _cell(SWITCHBOARD, 100, 20.0),
            _cell(SWITCHBOARD, 250, 2500.0),
            _cell(REFERENCE, 100, 50.0),
            _cell(REFERENCE, 250, 100.0),
            _cell(REFERENCE, 500, 200.0),
        ]
    )
    status, value = _statuses(paced)[paced_report.LAG_TARGET]
    assert status == "MISS" and value.startswith("Switchboard stopped before N=500")


def test_without_the_reference_the_comparisons_are_not_applicable() -> None:
    paced = _summary([_cell(SWITCHBOARD, 100, 20.0)])
    statuses = _statuses(paced)
    assert statuses[paced_report.CAPACITY_TARGET][0] == "n/a"
    assert statuses[paced_report.LAG_TARGET][0] == "n/a"
    assert statuses[paced_report.ERRORS_TARGET][0] == "PASS"


def _results(paced: dict[str, Any]) -> dict[str, Any]:
    return report.assemble([], None, plan={"reply_tokens": 64}, wall_s=100.0, paced=paced)


def test_the_report_has_the_paced_table_notes_and_targets(tmp_path: Path) -> None:
    cells = [
        _cell(SWITCHBOARD, 100, 20.0),
        _cell(GRPC_DIRECT, 100, 25.0),
        _cell(REFERENCE, 100, 150.0, client_cpu_share=0.95),
        _cell(SWITCHBOARD, 250, 60.0),
        _cell(GRPC_DIRECT, 250, 70.0),
        _cell(REFERENCE, 250, 2100.0),
    ]
    results = _results(_summary(cells, PacedPlan(ns=(100, 250))))
    assert [t["target"] for t in results["targets"][-3:]] == [
        paced_report.CAPACITY_TARGET,
        paced_report.LAG_TARGET,
        paced_report.ERRORS_TARGET,
    ]
    md = report.markdown(results)
    assert "### Paced streaming" in md and "300 tokens at 50 tokens/s (6.0 s on time)" in md
    rows = [
        line.split(" | ")[:2] for line in md.splitlines() if line.startswith("| ") and " | 250 | " in line
    ]
    assert rows == [["| switchboard", "250"], ["| grpc-direct", "250"], ["| reference", "250"]]
    assert (
        "| reference | 100 | 37.5 | 150.0 | 225.0 | 20.0 | 80.0 | 100 | 120 | 30 | 95 % | 307.0 | 300.0 | 0 |"
        in md
    )
    assert "- Capacity: switchboard N=250, grpc-direct N=250, reference N=100." in md
    assert "reference stopped sweeping, clearly past capacity (p99 lag 2.1 s > 2 s at N=250)." in md
    assert "The load generator used 90 % of a core or more in reference N=100 (95 %)" in md
    assert "| paced capacity vs reference | **PASS** | 2.50x (N=250 vs N=100) | >= 1.5x |" in md
    assert "| system | variant | streams |" not in md  # no burst cells in this run
    text = report.table(results)
    assert "Paced streaming:" in text and "PASS  paced capacity vs reference: 2.50x" in text
    chart = tmp_path / "latest-paced.png"
    paced_report.write_chart(results, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_paced_table_lands_in_the_docs_results_block(tmp_path: Path) -> None:
    docs = tmp_path / "performance.md"
    docs.write_text(f"# Performance\n\n{report.DOCS_BEGIN}\nold\n{report.DOCS_END}\n\nafter\n")
    results = _results(_summary([_cell(SWITCHBOARD, 100, 20.0), _cell(REFERENCE, 100, 50.0)]))
    assert report.update_docs(docs, report.markdown(results))
    text = docs.read_text()
    block = text[text.index(report.DOCS_BEGIN) : text.index(report.DOCS_END)]
    assert "### Paced streaming" in block and "old" not in block and text.endswith("after\n")


# --------------------------------------------------------------------------- real servers


async def _http_turn(base_url: str, tokens: int) -> TurnResult:
    async with aiohttp.ClientSession() as session:
        return await HttpDriver(session, base_url, {}, benchmark_text(tokens)).turn(None)


async def _warm(base_url: str, tokens: int) -> None:
    """A first turn: a server's first agent run imports and builds enough to block its event loop for
    longer than a short answer takes (the paced model then catches up in one burst)."""
    assert (await _http_turn(base_url, tokens)).ok


@pytest.fixture
async def paced_reference() -> AsyncIterator[str]:
    server = TestServer(create_app(20, tokens_per_s=100.0))
    await server.start_server()
    try:
        url = str(server.make_url("")).rstrip("/")
        await _warm(url, 20)
        yield url
    finally:
        await server.close()


async def test_the_reference_server_paces_when_asked(paced_reference: str) -> None:
    turn = await _http_turn(paced_reference, 20)
    assert turn.ok, turn.error
    # 20 tokens at 100/s: the last is due 190 ms after the first, one SSE frame per token.
    assert turn.deltas == 20 and turn.events == 27
    assert turn.delta_times[-1] - turn.delta_times[0] >= 0.18
    lags = turn_lags(turn, token_ends(20), 100.0)
    assert len(lags) == 20 and max(lags) < 0.1


async def test_the_unpaced_reference_does_not_wait() -> None:
    server = TestServer(create_app(20))
    await server.start_server()
    try:
        await _warm(str(server.make_url("")).rstrip("/"), 20)
        turn = await _http_turn(str(server.make_url("")).rstrip("/"), 20)
    finally:
        await server.close()
    assert turn.ok and turn.delta_times[-1] - turn.delta_times[0] < 0.15


async def test_the_paced_phase_sweeps_a_system(paced_reference: str) -> None:
    plan = PacedPlan(ns=(2, 5), reply_tokens=20, tokens_per_s=100.0, warmup=2, systems=(REFERENCE,))
    # The in-process server is this process: its CPU and memory are the "reference" role's.
    target = Target(REFERENCE, "http", paced_reference, {REFERENCE: os.getpid()})
    lines: list[str] = []
    [sweep] = await measure_paced({REFERENCE: target}, plan, lines.append, grpc_address=None)
    assert [r["n"] for r in sweep.records] == [2, 5] and sweep.stopped is None
    for record in sweep.records:
        assert record["errors"] == 0 and record["tokens"] == 20 * record["n"]
        assert record["lag_p99_ms"] < 150 and record["events_per_turn"] == 27
        assert record["cpu_us_per_token"] > 0 and record["processes"] == {REFERENCE: os.getpid()}
        assert record["wall_s"] >= 0.19
    assert any(line.startswith("paced reference    N=5") for line in lines)


async def test_the_reference_process_paces_with_the_runners_flag(tmp_path: Path) -> None:
    with aiohttp_server("benchmarks.reference_server", REFERENCE, 20, tmp_path, 100.0) as target:
        await _warm(target.address, 20)
        turn = await _http_turn(target.address, 20)
    assert turn.ok, turn.error
    assert turn.delta_times[-1] - turn.delta_times[0] >= 0.18


async def test_the_paced_switchboard_stack_streams_on_time_through_the_edge_and_over_grpc(
    tmp_path: Path,
) -> None:
    with paced_switchboard(tmp_path / "stack", 20, 100.0) as stack:
        edge, direct = paced_targets(stack)
        assert set(edge.pids) == {"edge", "agent"} and set(direct.pids) == {"agent"}
        client = Client(benchmark_text(20), stack.agent_address)
        try:
            warm = await run_cell(await client.driver(edge), concurrency=1, conversations=1, turns=1)
            assert warm.errors == 0, warm.first_errors  # the agent's first run blocks it a while
            for target in (edge, direct):
                run = await run_cell(
                    await client.driver(target), concurrency=3, conversations=3, turns=1, keep_turns=True
                )
                assert run.errors == 0, run.first_errors
                for turn in run.kept:
                    assert turn.delta_times[-1] - turn.delta_times[0] >= 0.18  # 19 tokens after the first
                    lags = turn_lags(turn, token_ends(20), 100.0)
                    assert len(lags) == 20 and max(lags) < 0.15
                await client.end_cell()
        finally:
            await client.close()


def test_every_paced_system_is_a_system() -> None:
    assert set(PacedPlan().systems) <= set(SYSTEMS)


def test_a_run_of_the_paced_phase_alone_writes_its_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = PacedPlan(ns=(2, 4), reply_tokens=10, tokens_per_s=100.0, warmup=2)
    plan = replace(Plan.quick(64), burst=False, cost=False, paced=tiny)
    results = run(plan, tmp_path)
    assert results["records"] == [] and results["upload"] is None
    paced = results["paced"]
    # the records are in report order (by system), each system's Ns ascending
    assert [(r["system"], r["n"]) for r in paced["records"]] == [
        (system, n) for system in (SWITCHBOARD, GRPC_DIRECT, REFERENCE) for n in (2, 4)
    ]
    assert all(r["errors"] == 0 and r["tokens"] == 10 * r["n"] for r in paced["records"])
    assert set(next(r for r in paced["records"] if r["system"] == SWITCHBOARD)["processes"]) == {
        "edge",
        "agent",
    }
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved["paced"]["plan"]["ns"] == [2, 4] and saved["plan"]["paced"]["tokens_per_s"] == 100.0
    assert "### Paced streaming" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "latest-paced.png").exists() and not (tmp_path / "latest.png").exists()
    assert "Paced streaming:" in capsys.readouterr().out
