"""`SWITCHBOARD_AGENT_WORKERS`: one agent service in N processes on one address, supervised.

One Python process uses one core. With `SWITCHBOARD_AGENT_WORKERS=N` (N > 1) `switchboard agent`
becomes a small supervisor of N worker processes; each runs the agent service exactly as a single
process does (`server.serve`) and listens on the same address with SO_REUSEPORT, so the kernel
spreads new connections over the workers. Each worker is a replica on the same store, as pods are:
the per-thread run lease keeps one run per thread, whichever worker serves it. With N = 1 none of
this module runs.

Process model: workers are started with multiprocessing's 'spawn' context, each a fresh interpreter
(nothing of the supervisor is inherited: no gRPC object, event loop or open database, so gRPC's
fork rules do not arise), given the settings as the supervisor has them (flags included). The
supervisor never imports the agent service (the Agents SDK, the store and an app cost some 100 MB
and 2 s): it binds the address, serves the merged metrics and watches its workers.

Start: worker 1 starts alone and opens the store as the service always does (the SQLite store
creates or migrates its schema then, PostgreSQL's is checked) and starts the app; workers 2 to N
start once it has, so they never race to create or migrate the schema. No worker listens before
all are prepared: then they listen together, so the connections clients open first (an edge opens
`SWITCHBOARD_AGENT_CONNECTIONS` at start) spread over all of them instead of all landing on
worker 1. A failed start (a schema older or newer than the code, an unreachable database, an app
that cannot load) ends the supervisor with that worker's exit status and message, as the single
process ends (2: fix the
configuration; 1: try again).

Address: the supervisor binds the listen address first, with SO_REUSEPORT and without listening
(such a socket gets no connections), and holds it until it exits: port 0 becomes one concrete port
that every worker uses, an address that another program holds fails at once, and the port stays
reserved while workers restart. (Linux spreads connections over SO_REUSEPORT listeners; other
systems accept the shared port but may not balance.)

Running: a worker that dies (a crash, the OOM killer, `kill -9`) is started again after a backoff
(0.5 s, doubling up to 30 s while it keeps dying within a minute of its start), with a log line; the
others serve meanwhile. A worker whose supervisor is gone drains and exits by itself.

Stop: SIGTERM and SIGINT are forwarded to every worker; each drains as the single process does
(NOT_SERVING at once, calls in flight finish within `SWITCHBOARD_SHUTDOWN_GRACE_S`, cancelled turns
are saved). The supervisor exits when all have stopped: 0 when each stopped cleanly. A worker still
running `STOP_MARGIN_S` after the grace is killed.

Metrics: one scrape shows the whole service. The supervisor sets `PROMETHEUS_MULTIPROC_DIR` to a
fresh private directory before the workers start, so they keep their metrics in prometheus_client's
multiprocess files (workers serve no metrics port); the supervisor serves the files merged
(`MultiProcessCollector`) on `SWITCHBOARD_AGENT_METRICS_LISTEN`, marks dead workers (their live
gauges go, their counts stay) and removes the directory when it exits. prometheus_client's
`process_*` and `python_*` metrics are not exported in this mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from types import FrameType
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prometheus_multiprocess

from services.common import metrics
from services.common.config import Settings
from services.common.logs import configure_logging

log = logging.getLogger(__name__)

MULTIPROC_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
BACKOFF_FIRST_S: Final = 0.5
"""Pause before the first restart of a worker that died."""
BACKOFF_MAX_S: Final = 30.0
STABLE_S: Final = 60.0
"""A worker that ran this long before it died is restarted after BACKOFF_FIRST_S again."""
STOP_MARGIN_S: Final = 15.0
"""After SIGTERM, how long beyond the grace a worker may take (the health notice, the saves of
cancelled turns, closing the store) before it is killed."""
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
PREPARED: Final = "prepared"
"""A worker's first message on its pipe (the second is its port, once it serves)."""


def reserve(listen: str) -> tuple[str, socket.socket]:
    """Bind `listen` (`host:port`, `[v6]:port`) with SO_REUSEPORT without listening.

    Returns the address with the concrete port (port 0 is chosen here) and the socket, which the
    caller holds while the workers listen on the same address. ValueError: not `host:port`;
    OSError: cannot bind (the address is held by another program, or not this machine's).
    """
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(
            f"SWITCHBOARD_AGENT_LISTEN: {listen!r} is not host:port "
            "(SWITCHBOARD_AGENT_WORKERS > 1 shares a TCP port between the workers)"
        )
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    family, kind, proto, _, address = socket.getaddrinfo(
        bare or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    held = socket.socket(family, kind, proto)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind(address)
    except OSError:
        held.close()
        raise
    return f"{host}:{held.getsockname()[1]}", held


def backoff_s(failures: int) -> float:
    """The pause before restarting a worker that died `failures` times in a row within STABLE_S."""
    return float(min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1)))


def describe(exitcode: int | None) -> str:
    """`exit status 1`, `killed by SIGKILL`."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


def supervise(settings: Settings) -> int:
    """Run the agent service as `settings.agent_workers` workers until SIGTERM/SIGINT; the exit
    status (see the module docstring)."""
    count = settings.agent_workers
    try:
        listen, held = reserve(settings.agent_listen)
    except ValueError as error:
        log.error("cannot start: %s", error)
        return 2
    except OSError as error:
        log.error("cannot start: cannot listen on %s: %s", settings.agent_listen, error)
        return 1
    with held:
        metrics.setup_metrics(settings.metrics_enabled)
        shared = metrics.enabled() and bool(settings.agent_metrics_listen.strip())
        directory = tempfile.mkdtemp(prefix="switchboard-agent-metrics-") if shared else None
        scrape: metrics.MetricsServer | None = None
        try:
            if directory is not None:
                registry = CollectorRegistry()
                prometheus_multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
                try:
                    scrape = metrics.start_metrics_server(
                        settings.agent_metrics_listen,
                        setting="SWITCHBOARD_AGENT_METRICS_LISTEN",
                        registry=registry,
                    )
                except (ValueError, OSError) as error:
                    log.error("cannot start: metrics on %s: %s", settings.agent_metrics_listen, error)
                    return 2
                # Inherited by the workers (spawned), before they import prometheus_client.
                os.environ[MULTIPROC_DIR_VARIABLE] = directory
            log.info(
                "agent service supervisor (pid %d): %d workers on %s (SO_REUSEPORT)%s",
                os.getpid(),
                count,
                listen,
                f", metrics of all of them on {settings.agent_metrics_listen}" if scrape else "",
            )
            workers = settings.model_copy(
                update={"agent_listen": listen, "agent_metrics_listen": "", "agent_workers": 1}
            )
            return Supervisor(workers, count, directory).run()
        finally:
            if scrape is not None:
                scrape.stop()
            if directory is not None:
                os.environ.pop(MULTIPROC_DIR_VARIABLE, None)
                shutil.rmtree(directory, ignore_errors=True)


@dataclass
class _Slot:
    """One worker's place: the process in it now, and its restarts."""

    index: int
    process: BaseProcess | None = None
    ready: Connection | None = None
    """The reading end of the pipe on which the worker reports that it serves."""
    started_at: float = 0.0
    prepared: bool = False
    """It has opened the store and started the app, and waits for `go` to listen."""
    serving: bool = False
    failures: int = 0
    """Deaths in a row, each within STABLE_S of its start."""
    restart_at: float | None = None


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, count: int, metrics_dir: str | None) -> None:
        self._settings = settings
        self._count = count
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(index) for index in range(1, count + 1)]
        self._up = False
        """Whether a worker has served: from then on a worker that dies is restarted."""
        self._signals: list[int] = []
        self._stopping = False
        self._deadline: float | None = None
        self._status = 0
        self._wake_read, self._wake_write = os.pipe()
        self._go = self._context.Event()
        """Set once every worker is prepared: they start listening together (then a restarted
        worker listens as soon as it is prepared)."""

    # ----------------------------------------------------------------- the loop

    def run(self) -> int:
        os.set_blocking(self._wake_write, False)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in STOP_SIGNALS}
        try:
            self._start(self._slots[0])
            while self._live() or (not self._stopping and self._due()):
                self._step()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for slot in self._slots:
                if slot.ready is not None:
                    slot.ready.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
        log.info("agent service stopped (%s)", describe(self._status))
        return self._status

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"\0")

    def _live(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.process is not None]

    def _due(self) -> list[_Slot]:
        return [slot for slot in self._slots if slot.restart_at is not None]

    def _step(self) -> None:
        now = time.monotonic()
        moments = [slot.restart_at for slot in self._due() if slot.restart_at is not None]
        if self._deadline is not None:
            moments.append(self._deadline)
        timeout = max(0.0, min(moments) - now) if moments else None
        waiting: list[Connection | int] = [self._wake_read]
        for slot in self._live():
            if slot.process is not None:
                waiting.append(slot.process.sentinel)
            if slot.ready is not None:
                waiting.append(slot.ready)
        woken = wait(waiting, timeout)
        if self._wake_read in woken:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_read, 512)
        while self._signals:
            self._stop(self._signals.pop(0))
        for slot in self._live():
            if slot.ready is not None and slot.ready in woken:
                self._on_ready(slot)
        for slot in self._live():
            if slot.process is not None and not slot.process.is_alive():
                self._reap(slot)
        now = time.monotonic()
        for slot in self._due():
            if slot.restart_at is not None and slot.restart_at <= now:
                self._start(slot)
        if self._deadline is not None and now >= self._deadline:
            self._kill_stragglers()

    # ----------------------------------------------------------------- workers

    def _start(self, slot: _Slot) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(self._settings, slot.index, self._count, writer, self._go),
            name=f"switchboard-agent-worker-{slot.index}",
        )
        process.start()
        writer.close()  # the worker holds the other copy: its death closes the pipe
        slot.process, slot.ready = process, reader
        slot.started_at, slot.prepared, slot.serving, slot.restart_at = time.monotonic(), False, False, None
        log.info("agent worker %d started (pid %s)", slot.index, process.pid)

    def _on_ready(self, slot: _Slot) -> None:
        ready = slot.ready
        if ready is None:
            return
        try:
            message = ready.recv()
        except (EOFError, OSError):  # it died before it served: _reap sees to it
            message = None
        if message == PREPARED:
            first = not any(each.prepared for each in self._slots)
            slot.prepared = True
            if first and not self._stopping:
                for other in self._slots[1:]:
                    self._start(other)
            if all(each.prepared for each in self._slots):
                self._go.set()
            return
        slot.serving = message is not None
        ready.close()
        slot.ready = None
        if not slot.serving:
            return
        self._up = True
        if all(each.serving for each in self._slots):
            log.info(
                "agent service ready: %d workers serving on %s", self._count, self._settings.agent_listen
            )

    def _reap(self, slot: _Slot) -> None:
        process = slot.process
        if process is None:
            return
        process.join()
        code, pid = process.exitcode, process.pid
        lived = time.monotonic() - slot.started_at
        if self._metrics_dir is not None and pid is not None:
            prometheus_multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        if slot.ready is not None:
            slot.ready.close()
            slot.ready = None
        slot.process, slot.serving = None, False
        if self._stopping:
            clean = code == 0 or (code is not None and -code in STOP_SIGNALS)
            (log.info if clean else log.error)(
                "agent worker %d (pid %s) stopped: %s", slot.index, pid, describe(code)
            )
            if not clean and self._status == 0:
                self._status = 1
            return
        if not self._up:
            # The service never started: end as the single process would have, with its status.
            log.error("agent worker %d (pid %s) could not start: %s", slot.index, pid, describe(code))
            self._status = code if code is not None and code > 0 else 1
            self._stop(signal.SIGTERM)
            return
        slot.failures = 1 if lived >= STABLE_S else slot.failures + 1
        delay = backoff_s(slot.failures)
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "agent worker %d (pid %s) died (%s) after %.1f s; restarting it in %.1f s",
            slot.index,
            pid,
            describe(code),
            lived,
            delay,
        )

    def _stop(self, signum: int) -> None:
        """Forward `signum` to every worker (again, for a second signal) and restart none."""
        if not self._stopping:
            self._stopping = True
            self._deadline = time.monotonic() + self._settings.shutdown_grace_s + STOP_MARGIN_S
            log.info(
                "agent service stopping (%s): %d workers drain for up to %.0f s",
                signal.Signals(signum).name,
                len(self._live()),
                self._settings.shutdown_grace_s,
            )
        for slot in self._slots:
            slot.restart_at = None
            if slot.process is not None and slot.process.pid is not None and slot.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signum)

    def _kill_stragglers(self) -> None:
        for slot in self._live():
            if slot.process is not None and slot.process.is_alive():
                log.error(
                    "agent worker %d (pid %s) did not stop in time: killing it", slot.index, slot.process.pid
                )
                slot.process.kill()
                self._status = self._status or 1
        self._deadline = None


# --------------------------------------------------------------------------- in the worker


def run_worker(settings: Settings, index: int, count: int, ready: Connection, go: EventType) -> None:
    """A worker process's main function (spawned by the supervisor): the agent service, as
    `switchboard agent` runs it with one worker, on the supervisor's address with SO_REUSEPORT."""
    configure_logging(settings.log_level, settings.log_format, worker=index)
    if os.environ.get(MULTIPROC_DIR_VARIABLE) and not metrics.multiprocess():
        log.warning(
            "prometheus_client was loaded before %s was set: metrics are not shared", MULTIPROC_DIR_VARIABLE
        )
    asyncio.run(_serve_worker(settings, index, count, ready, go))


async def _serve_worker(settings: Settings, index: int, count: int, ready: Connection, go: EventType) -> None:
    from services.agent_service.server import Worker, serve

    loop = asyncio.get_running_loop()
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None

    def orphaned() -> None:
        if sentinel is not None:
            loop.remove_reader(sentinel)
        log.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    async def prepared() -> None:
        with contextlib.suppress(OSError):
            ready.send(PREPARED)
        await asyncio.to_thread(go.wait)

    def serving(port: int) -> None:
        with contextlib.suppress(OSError):
            ready.send(port)
        ready.close()

    if sentinel is not None:
        loop.add_reader(sentinel, orphaned)
    try:
        await serve(settings, worker=Worker(index, count, serving, prepared))
    finally:
        if sentinel is not None:
            loop.remove_reader(sentinel)


__all__ = ["Supervisor", "backoff_s", "describe", "reserve", "run_worker", "supervise"]
