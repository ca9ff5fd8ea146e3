"""The arithmetic of the benchmark: percentiles, CPU and memory of server processes, per-cell figures.

Definitions (docs/performance.md repeats them):

- **percentiles**: linear interpolation between the closest ranks (numpy's default `linear`
  method): p50 of [1, 2, 3, 4] is 2.5, p99 of 1..100 is 99.01;
- **CPU seconds per conversation**: the sum over every process of a system of
  `user + system` CPU time (psutil `cpu_times`, children not included) after the cell minus
  before it, divided by the conversations completed. A *process tree* (a role named in
  `ProcessWatch.trees`: the PostgreSQL server, whose postmaster forks a backend per connection)
  counts the CPU of the process and of all its descendants, living or exited (`tree_cpu_seconds`);
- **peak RSS**: the largest resident set size sampled (every `SAMPLE_INTERVAL_S`) during the cell,
  per process. For a process tree it is the sum of the PSS (proportional set size) of the process
  and its descendants, so memory they share (PostgreSQL's shared buffers) counts once, sampled
  every `TREE_SAMPLE_INTERVAL_S` off the event loop (reading smaps costs ~0.3 ms a process);
- **RSS growth per open stream**: (peak RSS during the cell − the process's idle RSS after the
  system's warm-up) / the number of streams the client kept open (the cell's concurrency). It is
  conservative: memory a process kept from an earlier, smaller cell is charged to this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import psutil

SAMPLE_INTERVAL_S: Final = 0.05
TREE_SAMPLE_INTERVAL_S: Final = 0.5
KiB: Final = 1024
MiB: Final = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0 ≤ q ≤ 100) by linear interpolation; None for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def growth_per_stream(baseline_rss: int, peak_rss: int, open_streams: int) -> float:
    """Bytes of RSS growth per open stream (never negative; 0 streams is an error)."""
    if open_streams < 1:
        raise ValueError("at least one open stream")
    return max(peak_rss - baseline_rss, 0) / open_streams


def cpu_seconds(times: Sequence[float]) -> float:
    """user + system seconds of a `cpu_times()` reading."""
    return float(times[0]) + float(times[1])


def _own_and_reaped(process: psutil.Process) -> float:
    """user + system of the process plus what its exited children used (once it reaped them)."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def tree_cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of a process and every descendant, living or exited.

    A descendant that exits and is reaped moves its whole CPU time into its parent's
    `children_user`/`children_system`, so the sum over the living tree of "own + reaped" only ever
    grows, and the difference of two readings is what the tree used in between (a descendant seen
    alive by the first reading and reaped by the second is counted exactly once). Processes that
    vanish while the tree is read are skipped.
    """
    total = _own_and_reaped(process)
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += _own_and_reaped(child)
    return total


def tree_pss(process: psutil.Process) -> int:
    """Bytes of PSS of a process and its descendants (RSS where PSS is not readable)."""
    total = 0
    for member in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            try:
                total += member.memory_full_info().pss
            except psutil.AccessDenied:
                total += member.memory_info().rss
    return total


@dataclass
class ProcessWatch:
    """Samples the RSS of named processes and reads their CPU time, around a measured interval.

    Roles named in `trees` are process trees: their CPU includes every descendant's (see
    `tree_cpu_seconds`) and their memory is the PSS sum of the tree (see `tree_pss`), sampled every
    `tree_interval_s`.
    """

    pids: Mapping[str, int]
    interval_s: float = SAMPLE_INTERVAL_S
    trees: Collection[str] = ()
    tree_interval_s: float = TREE_SAMPLE_INTERVAL_S
    baseline_rss: dict[str, int] = field(default_factory=dict)
    peak_rss: dict[str, int] = field(default_factory=dict)
    _cpu_start: dict[str, float] = field(default_factory=dict)
    _cpu_end: dict[str, float] = field(default_factory=dict)
    _processes: dict[str, psutil.Process] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.trees) - set(self.pids)
        if unknown:
            raise ValueError(f"process trees without a pid: {sorted(unknown)}")
        self._processes = {name: psutil.Process(pid) for name, pid in self.pids.items()}

    def _flat_rss(self) -> dict[str, int]:
        return {
            name: process.memory_info().rss
            for name, process in self._processes.items()
            if name not in self.trees
        }

    def _tree_rss(self) -> dict[str, int]:
        return {name: tree_pss(self._processes[name]) for name in self.trees}

    def rss(self) -> dict[str, int]:
        """Every role's resident memory now (PSS sum for a process tree), in `pids` order."""
        values = {**self._flat_rss(), **self._tree_rss()}
        return {name: values[name] for name in self.pids}

    def _cpu(self) -> dict[str, float]:
        return {
            name: tree_cpu_seconds(process) if name in self.trees else cpu_seconds(process.cpu_times())
            for name, process in self._processes.items()
        }

    def set_baseline(self) -> None:
        """The idle RSS the growth figures are measured from (after warm-up)."""
        self.baseline_rss = self.rss()

    def _keep_peaks(self, values: Mapping[str, int]) -> None:
        for name, value in values.items():
            if value > self.peak_rss.get(name, 0):
                self.peak_rss[name] = value

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        next_tree = loop.time() + self.tree_interval_s
        while True:
            self._keep_peaks(self._flat_rss())
            if self.trees and loop.time() >= next_tree:
                self._keep_peaks(await asyncio.to_thread(self._tree_rss))
                next_tree = loop.time() + self.tree_interval_s
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self.peak_rss = self.rss()
        self._cpu_start = self._cpu()
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._keep_peaks(self.rss())
        self._cpu_end = self._cpu()

    def cpu_used(self) -> dict[str, float]:
        """CPU seconds per process between `start` and `stop`."""
        return {name: self._cpu_end[name] - self._cpu_start[name] for name in self._processes}


@dataclass(frozen=True, slots=True)
class CellFigures:
    """What one (system, variant, concurrency) cell measured; see the module docstring."""

    conversations: int
    errors: int
    wall_s: float
    conversations_per_s: float
    text_bytes_per_s: float
    deltas_per_turn: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    cpu_s_per_conversation: float | None
    cpu_s_by_process: dict[str, float]
    peak_rss_mib: dict[str, float]
    rss_growth_per_stream_kib: dict[str, float]


def cell_figures(
    *,
    conversations: int,
    errors: int,
    wall_s: float,
    text_bytes: int,
    deltas: int,
    turns: int,
    ttfts_s: Sequence[float],
    cpu_by_process: Mapping[str, float],
    baseline_rss: Mapping[str, int],
    peak_rss: Mapping[str, int],
    concurrency: int,
) -> CellFigures:
    completed = conversations - errors
    p50, p99 = percentile(ttfts_s, 50), percentile(ttfts_s, 99)
    return CellFigures(
        conversations=conversations,
        errors=errors,
        wall_s=wall_s,
        conversations_per_s=completed / wall_s if wall_s > 0 else 0.0,
        text_bytes_per_s=text_bytes / wall_s if wall_s > 0 else 0.0,
        deltas_per_turn=deltas / turns if turns else 0.0,
        ttft_p50_ms=None if p50 is None else p50 * 1000,
        ttft_p99_ms=None if p99 is None else p99 * 1000,
        cpu_s_per_conversation=sum(cpu_by_process.values()) / completed if completed else None,
        cpu_s_by_process=dict(cpu_by_process),
        peak_rss_mib={name: value / MiB for name, value in peak_rss.items()},
        rss_growth_per_stream_kib={
            name: growth_per_stream(baseline_rss[name], peak_rss[name], concurrency) / KiB
            for name in peak_rss
        },
    )
