"""The load generator: a fixed number of conversations at a fixed concurrency, measured.

`concurrency` workers share a counter of conversations; each takes the next one, runs its turns one
after the other (each turn read to the end of its stream) and takes another, so exactly
`concurrency` streams are open until the last conversations drain. With `conversations ==
concurrency` it is a single wave: every stream starts at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from benchmarks.workload import Driver, TurnResult


@dataclass
class CellRun:
    """The raw outcome of one cell (the figures are computed from it in `metrics.cell_figures`)."""

    conversations: int = 0
    errors: int = 0
    turns: int = 0
    text_bytes: int = 0
    deltas: int = 0
    ttfts_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    first_errors: list[str] = field(default_factory=list)
    keep_turns: bool = False
    """Keep every turn of the conversations that succeeded (`kept`), for figures computed after the
    cell (the paced scenario's delivery lag)."""
    kept: list[TurnResult] = field(default_factory=list)

    def record(self, results: list[TurnResult]) -> None:
        self.conversations += 1
        failed = next((r for r in results if not r.ok), None)
        if failed is not None:
            self.errors += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(str(failed.error))
            return
        if self.keep_turns:
            self.kept.extend(results)
        for result in results:
            self.turns += 1
            self.text_bytes += result.text_bytes
            self.deltas += result.deltas
            if result.ttft_s is not None:
                self.ttfts_s.append(result.ttft_s)


async def conversation(driver: Driver, turns: int) -> list[TurnResult]:
    """One conversation: a new thread, then `turns - 1` more user messages on it."""
    results: list[TurnResult] = []
    thread_id: str | None = None
    for _ in range(turns):
        result = await driver.turn(thread_id)
        results.append(result)
        if not result.ok:
            break
        thread_id = result.thread_id
        if thread_id is None:
            result.error = "no thread id"
            break
    return results


async def run_cell(
    driver: Driver, *, concurrency: int, conversations: int, turns: int, keep_turns: bool = False
) -> CellRun:
    """Run `conversations` conversations of `turns` turns with `concurrency` open at a time (with
    `keep_turns`, the successful conversations' turns are kept in the run)."""
    run = CellRun(keep_turns=keep_turns)
    remaining = conversations

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                results = await conversation(driver, turns)
            except Exception as error:  # a driver bug must not stop the cell: count it
                results = [TurnResult(error=f"{type(error).__name__}: {error}")]
            run.record(results)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, conversations))))
    run.wall_s = time.perf_counter() - started
    return run
