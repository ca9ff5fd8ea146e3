"""The paced scenario (issue #17): N streams at once, every answer paced like a real provider's.

Every answer is `reply_tokens` tokens streamed by the benchmark model at `tokens_per_s`
(`SWITCHBOARD_LOCAL_TOKENS_PER_S`, `switchboard.demo.benchmark.TokenSchedule`): 300 tokens at 50
tokens/s is 6 s per stream. A cell is one system and one N: N conversations of one `threads.create`
each, all started at once, every stream read to its end. N is swept upwards (`PacedPlan.ns`); a
system whose cell is clearly past capacity (`stop_reason`: an error, a p99 lag past
`PacedPlan.stop_p99_lag_ms`, or a p99 time to first delta longer than an answer lasts) runs no
larger N. What a cell measures (`paced_figures`):

- **delivery lag per token.** The client cannot see the model's clock, so each stream's schedule is
  anchored at its most punctual token: token k is due at offset + k / R, where the offset is the
  smallest arrival(j) − j / R of the stream (the delay the stream's most punctual token had), and
  its lag is its arrival minus that: how much later than the stream's best a token came, never
  negative. A delta may carry several tokens (Switchboard coalesces the
  deltas that are ready together): the tokens of a delta are found from the text it completes
  (`token_ends`), and each gets the delta's arrival (`token_arrivals`). p50, p99 and max are over
  every token of every stream of the cell. Start-up delay (before the first delta) is not lag: it is
  in the time to first delta (TTFT, from just before the request is sent), reported beside it;
- **CPU per delivered token** of the system's server processes, and of the load generator;
- **events per turn on the wire** (SSE `data:` frames or gRPC messages) and text deltas per turn;
- **RSS growth per open stream**: (peak RSS in the cell − idle RSS after warm-up) / N, per process;
- **errors**: the burst workload's checks (`benchmarks.workload.TurnResult.check`);
- **peak streams in flight**: the most streams that were between their first and their last text
  delta at the same moment (`streaming_peak`). Start-up delay staggers the streams, so fewer than N
  may ever have streamed side by side: this says how many did.

A system's **capacity** is the largest N of its sweep whose cell has a p99 lag under
`PacedPlan.capacity_p99_lag_ms` (250 ms) and no error (`capacity`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from benchmarks.loadgen import CellRun
from benchmarks.metrics import KiB, MiB, growth_per_stream, percentile
from benchmarks.systems import GRPC_DIRECT, REFERENCE, SWITCHBOARD
from benchmarks.workload import TurnResult
from switchboard.demo.benchmark import benchmark_deltas

PACED_SYSTEMS: Final = (SWITCHBOARD, GRPC_DIRECT, REFERENCE)
"""The systems of the paced scenario, in the order of the report."""
PACED_NS: Final = (100, 250, 500, 1000)
PACED_REPLY_TOKENS: Final = 300
PACED_TOKENS_PER_S: Final = 50.0
CAPACITY_P99_LAG_MS: Final = 250.0
STOP_P99_LAG_MS: Final = 2000.0
STOP_TTFT_ANSWERS: Final = 1.0


@dataclass(frozen=True)
class PacedPlan:
    """What the paced phase runs; `full()` is `make bench`'s, `quick()` the smoke run's."""

    ns: tuple[int, ...] = PACED_NS
    """The concurrent streams of each cell, swept in this order (ascending)."""
    reply_tokens: int = PACED_REPLY_TOKENS
    tokens_per_s: float = PACED_TOKENS_PER_S
    warmup: int = 20
    """Streams of the one paced wave each system gets before its idle RSS is taken (the systems
    warm up side by side: one answer's time in all)."""
    capacity_p99_lag_ms: float = CAPACITY_P99_LAG_MS
    stop_p99_lag_ms: float = STOP_P99_LAG_MS
    """A cell whose p99 lag exceeds this (or with any error) ends its system's sweep."""
    stop_ttft_answers: float = STOP_TTFT_ANSWERS
    """A cell whose p99 time to first delta exceeds this many answers' durations (`answer_s`) ends
    its system's sweep too: its streams queue for longer than an answer lasts, so they no longer run
    side by side, and a larger N only takes longer (it starts every stream at once)."""
    systems: tuple[str, ...] = PACED_SYSTEMS

    def __post_init__(self) -> None:
        if not self.ns or any(n < 1 for n in self.ns) or list(self.ns) != sorted(set(self.ns)):
            raise ValueError("the paced sweep needs distinct, ascending, positive stream counts")

    @property
    def answer_s(self) -> float:
        """How long one answer takes to stream on time: its last token is due (tokens − 1) / R."""
        return (self.reply_tokens - 1) / self.tokens_per_s

    @classmethod
    def full(cls) -> PacedPlan:
        return cls()

    @classmethod
    def quick(cls) -> PacedPlan:
        return cls(ns=(20, 50), reply_tokens=60, warmup=10)


def parse_ns(text: str) -> tuple[int, ...]:
    """`--paced-n 100,250,500`: the sweep, sorted (ValueError if not positive whole numbers)."""
    try:
        ns = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"not a comma-separated list of stream counts: {text!r}") from None
    if not ns or ns[0] < 1:
        raise ValueError(f"stream counts must be positive: {text!r}")
    return tuple(ns)


# --------------------------------------------------------------------------- delivery lag


def token_ends(reply_tokens: int) -> tuple[int, ...]:
    """Where each token of a benchmark answer ends in its text (the offset just past it)."""
    return tuple(itertools.accumulate(len(delta) for delta in benchmark_deltas(reply_tokens)))


def token_arrivals(texts: Sequence[str], times: Sequence[float], ends: Sequence[int]) -> list[float]:
    """When each token arrived: the arrival of the delta that completed it (a delta carrying several
    tokens gives each of them its arrival). Tokens never completed have no entry."""
    arrivals: list[float] = []
    length = 0
    for text, arrived in zip(texts, times, strict=True):
        length += len(text)
        while len(arrivals) < len(ends) and ends[len(arrivals)] <= length:
            arrivals.append(arrived)
    return arrivals


def token_lags(arrivals: Sequence[float], tokens_per_s: float) -> list[float]:
    """Seconds each token arrived after it was due, the schedule anchored at the stream's most
    punctual token: lag_k = arrival_k − k / R − min_j(arrival_j − j / R), so 0 for that token and
    never negative. (Anchoring at the first token instead would make every token after a late first
    one look early, and a system with a slow first token look better than one without.)"""
    if not arrivals:
        return []
    delays = [arrived - index / tokens_per_s for index, arrived in enumerate(arrivals)]
    offset = min(delays)
    return [delay - offset for delay in delays]


def turn_lags(turn: TurnResult, ends: Sequence[int], tokens_per_s: float) -> list[float]:
    """The delivery lag of every token of one stream."""
    return token_lags(token_arrivals(turn.delta_texts, turn.delta_times, ends), tokens_per_s)


def streaming_peak(turns: Iterable[TurnResult]) -> int:
    """The most streams that were between their first and last text delta at once (a stream whose
    last delta arrives as another's first counts with it)."""
    edges: list[tuple[float, int]] = []
    for turn in turns:
        if turn.delta_times:
            edges += [(turn.delta_times[0], 1), (turn.delta_times[-1], -1)]
    peak = current = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], -edge[1])):  # starts before ends
        current += step
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------- a cell's figures


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def paced_figures(
    run: CellRun,
    plan: PacedPlan,
    *,
    n: int,
    cpu_by_process: Mapping[str, float],
    client_cpu_s: float,
    baseline_rss: Mapping[str, int],
    peak_rss: Mapping[str, int],
) -> dict[str, Any]:
    """The figures of one paced cell (see the module docstring) from its run, whose successful turns
    were kept (`run_cell(..., keep_turns=True)`)."""
    ends = token_ends(plan.reply_tokens)
    lags: list[float] = []
    events = deltas = 0
    for turn in run.kept:
        lags += turn_lags(turn, ends, plan.tokens_per_s)
        events += turn.events
        deltas += turn.deltas
    turns = len(run.kept)
    tokens = len(lags)
    server_cpu_s = sum(cpu_by_process.values())
    return {
        "n": n,
        "conversations": run.conversations,
        "errors": run.errors,
        "first_errors": run.first_errors,
        "wall_s": run.wall_s,
        "tokens": tokens,
        "lag_p50_ms": _ms(percentile(lags, 50)),
        "lag_p99_ms": _ms(percentile(lags, 99)),
        "lag_max_ms": _ms(max(lags, default=None)),
        "ttft_p50_ms": _ms(percentile(run.ttfts_s, 50)),
        "ttft_p99_ms": _ms(percentile(run.ttfts_s, 99)),
        "streaming_peak": streaming_peak(run.kept),
        "events_per_turn": events / turns if turns else None,
        "deltas_per_turn": deltas / turns if turns else None,
        "cpu_us_per_token": 1e6 * server_cpu_s / tokens if tokens else None,
        "cpu_s_by_process": dict(cpu_by_process),
        "client_cpu_us_per_token": 1e6 * client_cpu_s / tokens if tokens else None,
        "client_cpu_share": client_cpu_s / run.wall_s if run.wall_s > 0 else None,
        "peak_rss_mib": {name: value / MiB for name, value in peak_rss.items()},
        "rss_growth_per_stream_kib": {
            name: growth_per_stream(baseline_rss[name], peak_rss[name], n) / KiB for name in peak_rss
        },
    }


# --------------------------------------------------------------------------- the sweep


def within(record: Mapping[str, Any], p99_lag_ms: float) -> bool:
    """Whether a paced cell has no error and a p99 lag under `p99_lag_ms`."""
    lag = record["lag_p99_ms"]
    return record["errors"] == 0 and lag is not None and lag < p99_lag_ms


def stop_reason(record: Mapping[str, Any], plan: PacedPlan) -> str | None:
    """Why a system's sweep ends after this cell (None: it goes on): errors, a p99 lag past
    `plan.stop_p99_lag_ms`, or a p99 TTFT past `plan.stop_ttft_answers` answers' durations. Each
    means clearly past capacity: a larger N only takes longer to say so."""
    n = record["n"]
    if record["errors"]:
        return f"{record['errors']} errors at N={n}"
    lag = record["lag_p99_ms"]
    if lag is None or lag > plan.stop_p99_lag_ms:
        shown = "-" if lag is None else f"{lag / 1000:.1f} s"
        return f"p99 lag {shown} > {plan.stop_p99_lag_ms / 1000:g} s at N={n}"
    ttft, ttft_limit_s = record["ttft_p99_ms"], plan.stop_ttft_answers * plan.answer_s
    if ttft is not None and ttft > 1000 * ttft_limit_s:
        return f"p99 TTFT {ttft / 1000:.1f} s > {ttft_limit_s:.1f} s, an answer's duration, at N={n}"
    return None


def capacity(records: Iterable[Mapping[str, Any]], p99_lag_ms: float = CAPACITY_P99_LAG_MS) -> int | None:
    """The largest N among a system's cells with a p99 lag under `p99_lag_ms` and no error; None when
    no cell qualifies (the capacity is below the smallest N swept)."""
    return max((record["n"] for record in records if within(record, p99_lag_ms)), default=None)


@dataclass
class Sweep:
    """A system's progress through the sweep: its cells, and why it stopped early (if it did)."""

    system: str
    records: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None

    def add(self, record: dict[str, Any], plan: PacedPlan) -> None:
        self.records.append(record)
        self.stopped = stop_reason(record, plan)

    def skipped(self, plan: PacedPlan) -> tuple[int, ...]:
        """The Ns of the plan it did not run."""
        ran = {record["n"] for record in self.records}
        return tuple(n for n in plan.ns if n not in ran)
