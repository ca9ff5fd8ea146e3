"""The per-thread run lease: at most one run per thread across every replica sharing the database.

A streaming operation (new message, retry, client tool output, form answer, widget action) takes the
lease on its thread before it writes anything and gives it back in a `finally`, on success, error
and cancellation alike. The lease is a row in `run_leases` (thread id, holder token, expiry by the
database's clock) taken with one atomic UPSERT that only succeeds when no unexpired row of another
holder exists, so it works the same on SQLite (one process) and PostgreSQL (many).

The row can also be written by a store call that does more in the same transaction (`start_thread`
creates the thread with its lease taken, `lease_thread` takes the lease and reads the thread): the
run then `holding(claim)`s the lease with that call instead of `hold()`ing it, and from there on
the lease is the same (heartbeat, release, fencing), one transaction per turn cheaper.

Why a lease with a TTL rather than a lock held by a connection (`pg_advisory_lock`): a run lasts
seconds to minutes, and pinning a pooled connection per running turn would size the pool by the
number of concurrent streams; a session lock also dies with a connection blip while the run goes on.
The row costs two short writes per turn plus one heartbeat per `ttl_s / 3`.

- Busy thread: a second request gets `ThreadBusy` (ABORTED, HTTP 409 at the edge) at once, or after
  waiting up to `wait_s` for the running turn to end (SWITCHBOARD_RUN_LEASE_WAIT_S).
- Crashed holder: its row expires after at most `ttl_s` (SWITCHBOARD_RUN_LEASE_TTL_S), then anyone
  can take the thread; nothing has to clean up.
- Heartbeat: a task renews the expiry every `ttl_s / 3` while the run streams. When a renewal finds
  the row gone or held by someone else (`renew_lease` False), the lease is LOST: `lost` is set, and
  if the run is waiting for the agents at that moment its task is cancelled so the model call stops
  at once; otherwise the conversation notices at its next check. A run that lost its lease writes
  nothing more and ends with a retryable error (`LeaseLost`). A renewal that fails (database away,
  too slow) is retried; if it succeeds late, after the expiry, nobody took the thread in between
  (the UPDATE names the holder), so the run goes on.
- Fencing: the run's writes carry `fence`, checked inside each write transaction (see
  `Store.write`). That, not the heartbeat, is what guarantees that two runs never interleave their
  writes: a run that has not noticed yet (a long pause, a partition from the database) cannot write
  into a thread another replica took over, and stops at its next write.

Trade-off: a replica that is paused (not crashed) for longer than the TTL may find its lease taken;
that run then stops rather than interleave with the new one (the client gets a retryable error).
Keep the TTL well above GC, CPU-starvation or network pauses (the default is 15 s) and short
enough that a crash frees threads quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from services.agent_service import metrics
from services.agent_service.store.base import Fence, LeaseLost, Store, ThreadBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPLICA: Final = f"{socket.gethostname()}:{os.getpid()}"
WAIT_POLL_S: Final = 0.2


class RunLease:
    """One run's claim on one thread. Use `async with lease.hold():` around the whole run."""

    def __init__(self, store: Store, thread_id: str, *, ttl_s: float, wait_s: float = 0.0) -> None:
        self.store = store
        self.thread_id = thread_id
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.holder = f"{_REPLICA}:{secrets.token_hex(6)}"
        """Unique per run: even two runs in one process never share a lease."""
        self.lost = False
        self.interruptible = False
        """Set by the conversation while the run awaits the agents: a lost lease then cancels it."""
        self._task: asyncio.Task[object] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._renewed_at = 0.0
        self._cancelled_run = False

    @property
    def fence(self) -> Fence:
        return Fence(self.thread_id, self.holder)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[RunLease]:
        """Acquire (or raise ThreadBusy), heartbeat while the body runs, release afterwards."""
        async with self.holding(self._acquire_once):
            yield self

    @contextlib.asynccontextmanager
    async def holding(self, claim: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
        """`hold()`, with the lease taken by `claim` and its result as the context value.

        `claim` is a store call that writes this lease's row (`self.holder`, `self.ttl_s`) in its
        transaction, or raises `ThreadBusy` and changes nothing (e.g. `Store.lease_thread`, which
        also reads the thread). Polled like `acquire` while busy, up to `wait_s`; any other error
        propagates at once. Once it returns, the lease is adopted: heartbeat, release and `fence`
        work exactly as after `acquire`."""
        result = await self._take(claim)
        try:
            yield result
        finally:
            await shielded(self.release())

    async def acquire(self) -> None:
        await self._take(self._acquire_once)

    async def _acquire_once(self) -> None:
        if not await self.store.acquire_lease(self.thread_id, self.holder, self.ttl_s):
            raise ThreadBusy(self.thread_id)

    async def _take(self, claim: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            try:
                result = await claim()
                break
            except ThreadBusy as busy:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    metrics.LEASE_CONFLICTS.inc()
                    busy.retry_after_s = self.ttl_s
                    raise
                await asyncio.sleep(min(WAIT_POLL_S, remaining))
        self._adopt()
        return result

    def _adopt(self) -> None:
        """The row is ours now (however it was written): start the heartbeat, arm `release`."""
        self._renewed_at = asyncio.get_running_loop().time()
        self._task = asyncio.current_task()
        self._heartbeat = asyncio.create_task(self._beat(), name=f"run-lease-{self.thread_id}")
        log.info("run lease taken on thread %s by %s", self.thread_id, self.holder)

    async def release(self) -> None:
        """Stop the heartbeat and delete the row if it is still ours (the DELETE names the holder,
        so a lease someone else took over is left alone). A failure to delete (database down) is
        logged: the row expires within the TTL anyway."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._task is None:
            return
        self._task = None
        try:
            await self.store.release_lease(self.thread_id, self.holder)
        except Exception as error:
            log.warning(
                "could not release the run lease on thread %s (%s); it expires in %.0f s",
                self.thread_id,
                error,
                self.ttl_s,
            )
        else:
            log.debug("run lease on thread %s released", self.thread_id)

    def check(self) -> None:
        """Raise LeaseLost if the lease was lost (the conversation calls this between steps)."""
        if self.lost:
            raise LeaseLost(self.thread_id)

    def absorb_cancel(self) -> bool:
        """After the heartbeat cancelled the run's task: undo that cancellation (so the run can end
        with an error event instead of dying) and return True; False for any other cancellation."""
        current = asyncio.current_task()
        if current is None or current is not self._task or not self._cancelled_run:
            return False
        self._cancelled_run = False
        current.uncancel()
        return True

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl_s / 3
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                # A renewal that answers late is still useful (see above); the timeout only keeps a
                # hung connection from stopping the heartbeat.
                async with asyncio.timeout(self.ttl_s):
                    held = await self.store.renew_lease(self.thread_id, self.holder, self.ttl_s)
            except Exception as error:
                log.warning(
                    "run lease heartbeat on thread %s failed (%s); retrying",
                    self.thread_id,
                    type(error).__name__ if isinstance(error, TimeoutError) else error,
                )
                delay = interval / 2
                continue
            if not held:
                self._lose()
                return
            late = loop.time() - self._renewed_at - self.ttl_s
            if late > 0:
                log.warning(
                    "run lease on thread %s was renewed %.1f s after it expired (nobody took it over)",
                    self.thread_id,
                    late,
                )
            self._renewed_at = loop.time()
            delay = interval

    def _lose(self) -> None:
        self.lost = True
        log.warning("run lease on thread %s lost: stopping the run", self.thread_id)
        if self.interruptible and self._task is not None and not self._task.done():
            self._cancelled_run = True
            self._task.cancel()


_SHIELDED: set[asyncio.Task[Any]] = set()


_SETTLE_S: Final = 0.05


def shielded(work: Coroutine[Any, Any, T]) -> Awaitable[T]:
    """`asyncio.shield(work)`, tracked: work that must finish even when its caller is cancelled (a
    cancelled turn's partial answer, a lease release) and that `drain_shielded` waits for, so the
    service closes its store only after it is done."""
    task = asyncio.ensure_future(work)
    _SHIELDED.add(task)
    task.add_done_callback(_SHIELDED.discard)
    return asyncio.shield(task)


async def drain_shielded(timeout_s: float) -> int:
    """Wait up to `timeout_s` for shielded work still running; returns how many did not finish.

    A cancelled handler starts its shielded steps one after another (the turn's save, then the
    lease's release once the save is done), so the set is watched until it stays empty for a
    moment, not only the work running when the drain began."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout_s, 0.001)
    while (remaining := deadline - loop.time()) > 0:
        if _SHIELDED:
            await asyncio.wait(set(_SHIELDED), timeout=remaining)
            continue
        await asyncio.sleep(min(_SETTLE_S, remaining))  # let handlers reach their next step
        if not _SHIELDED:
            break
    return len(_SHIELDED)
