"""`SWITCHBOARD_AGENT_WORKERS=2`: one agent service as two worker processes on one port, with real
processes. Tests run in file order on one stack: conversations through the edge reach both workers
and one scrape counts them all, a worker killed with SIGKILL is restarted while the other serves,
then SIGTERM to the supervisor drains streams on both workers. The last tests start agent services
of their own (a start that fails, bad values).

The kernel gives each new connection to one worker (SO_REUSEPORT), so the edge keeps
`SWITCHBOARD_AGENT_CONNECTIONS=16` connections to the agent address and its calls take them in
turn: all 16 landing on one worker has odds of 2 in 65,536. Direct gRPC callers below use a
connection per channel (`grpc.use_local_subchannel_pool`).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import psutil
import pytest
from chatkit.types import ErrorEvent
from grpc import aio

from switchboard.v1 import chat_pb2, chat_pb2_grpc, events_pb2, thread_pb2
from tests.support.chatkit_wire import assistant_text, parse_sse, request, stream, user_input
from tests.support.processes import ROOT, SECRET, Service, Stack, free_port, running_stack, wait_log
from tests.support.prometheus import scrape, value

WORKERS = 2
CONNECTIONS = 16
GRACE_S = 5.0
LONG_QUESTION = "Please explain in detail how I can reset my password after a login error"


@pytest.fixture(scope="module")
def workers_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("workers"),
        SWITCHBOARD_AGENT_WORKERS=str(WORKERS),
        uploads=False,
        SWITCHBOARD_AGENT_CONNECTIONS=str(CONNECTIONS),
        SWITCHBOARD_LOCAL_TOKEN_DELAY_MS="10",
        SWITCHBOARD_SHUTDOWN_GRACE_S=str(GRACE_S),
    ) as stack:
        yield stack


def worker_pids(agent: Service) -> dict[int, int]:
    """Worker index -> pid of its latest process, from the supervisor's log."""
    started = re.findall(r"agent worker (\d+) started \(pid (\d+)\)", agent.log_text())
    return {int(index): int(pid) for index, pid in started}


def runs_by_pid(agent: Service, threads: set[str]) -> dict[int, int]:
    """How many runs of `threads` each process ran (a run lease's holder is host:pid:token)."""
    runs: dict[int, int] = {}
    for thread, pid in re.findall(r"run lease taken on thread (thr_\w+) by [^:\s]+:(\d+):", agent.log_text()):
        if thread in threads:
            runs[int(pid)] = runs.get(int(pid), 0) + 1
    return runs


async def converse(http: aiohttp.ClientSession, stack: Stack, count: int, user: str = "alice") -> set[str]:
    """`count` one-turn conversations through the edge at once; their thread ids (none failed)."""

    async def one(index: int) -> str:
        events = await stream(
            http,
            stack.edge_url,
            request("threads.create", input=user_input(f"Hello number {index}")),
            stack.headers(user=user),
        )
        assert not [event for event in events if isinstance(event, ErrorEvent)], events
        assert assistant_text(events)
        return events[0].thread.id  # type: ignore[union-attr]

    return set(await asyncio.gather(*(one(index) for index in range(count))))


def _streams(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> tuple[float, float]:
    """(CreateThread streams timed, streaming calls handled OK: the edge streams through `Stream`)."""
    return (
        value(samples, "switchboard_agent_stream_duration_seconds_count", operation="CreateThread"),
        value(samples, "switchboard_grpc_server_handled_total", grpc_method="Stream", grpc_code="OK"),
    )


async def test_both_workers_serve_and_one_scrape_counts_them_all(
    http: aiohttp.ClientSession, workers_stack: Stack
) -> None:
    agent = workers_stack.services["agent"]
    pids = worker_pids(agent)
    assert sorted(pids) == [1, 2]
    for index, pid in pids.items():
        assert f"worker {index} of {WORKERS} (pid {pid})" in agent.log_text()
    metrics_url = workers_stack.metrics_url("agent")

    # The edge's channels connect on their first turn; once each has, both workers hold some.
    deadline = time.monotonic() + 20
    warm: set[str] = set()
    while len(runs_by_pid(agent, warm)) < WORKERS:
        warm |= await converse(http, workers_stack, 1)
        assert time.monotonic() < deadline, f"the edge reached {runs_by_pid(agent, warm)} only"
    before = _streams(scrape(metrics_url))
    threads = await converse(http, workers_stack, 40)  # one batch: the edge's connections take turns
    runs = runs_by_pid(agent, threads)
    assert set(runs) == set(pids.values()), "the runs were made by the two workers"
    assert sum(runs.values()) == len(threads)
    after = _streams(scrape(metrics_url))
    made = len(threads)
    assert (after[0] - before[0], after[1] - before[1]) == (made, made), (
        "one scrape of the supervisor counts every worker's streams"
    )
    samples = scrape(metrics_url)
    assert not [labels for (name, labels) in samples if dict(labels).get("pid")], "gauges are summed"
    assert value(samples, "switchboard_agent_streams_in_flight") == 0
    print(f"\n{made} conversations, runs per worker pid: {runs}")


async def test_a_worker_killed_with_sigkill_is_restarted_and_the_other_keeps_serving(
    http: aiohttp.ClientSession, workers_stack: Stack
) -> None:
    agent = workers_stack.services["agent"]
    victim = worker_pids(agent)[2]
    metrics_url = workers_stack.metrics_url("agent")
    counted = _streams(scrape(metrics_url))
    offset = len(agent.log_text())

    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    # Worker 1 serves meanwhile. If the edge's connection was the victim's, its calls fail (503)
    # until it has reconnected, to worker 1: within its reconnect backoff (0.5 s).
    body = request("threads.create", input=user_input("hello"))
    while True:
        async with http.post(
            f"{workers_stack.edge_url}/chatkit/api", json=body, headers=workers_stack.headers()
        ) as reply:
            await reply.read()
            if reply.status == 200:
                break
            assert reply.status == 503
        assert time.monotonic() - killed < 3, "the edge did not reach the other worker"
        await asyncio.sleep(0.1)
    recovered = time.monotonic() - killed
    assert f"worker 2 of {WORKERS}" not in agent.log_text()[offset:], "served while worker 2 was down"
    await converse(http, workers_stack, 10)
    tail = wait_log(agent, "agent worker 2 started (pid", timeout=15, after=offset)
    assert re.search(
        rf"agent worker 2 \(pid {victim}\) died \(killed by SIGKILL\) after [\d.]+ s; restarting", tail
    )
    tail = wait_log(agent, "agent service ready: ", timeout=30, after=offset)
    restarted = worker_pids(agent)[2]
    assert restarted != victim and psutil.pid_exists(restarted)
    assert f"worker 2 of {WORKERS} (pid {restarted})" in tail
    back = time.monotonic() - killed
    print(f"\nkill -9: served again after {recovered:.1f} s, worker 2 back after {back:.1f} s")

    threads = await converse(http, workers_stack, 20)
    after = _streams(scrape(metrics_url))
    assert after[0] >= counted[0] + 31, "the dead worker's counts stay in the totals"
    assert agent.process.poll() is None
    assert sum(runs_by_pid(agent, threads).values()) == 20


def _grpc_input(text: str) -> chat_pb2.UserMessageInput:
    return chat_pb2.UserMessageInput(
        content=[thread_pb2.UserMessageContent(input_text=thread_pb2.UserMessageTextContent(text=text))],
        inference_options=thread_pb2.InferenceOptions(),
    )


async def test_sigterm_to_the_supervisor_drains_every_worker(
    http: aiohttp.ClientSession, workers_stack: Stack
) -> None:
    agent = workers_stack.services["agent"]
    pids = set(worker_pids(agent).values())
    supervisor = psutil.Process(agent.process.pid)
    family = {supervisor.pid, *(child.pid for child in supervisor.children(recursive=True))}
    assert pids <= family
    metadata = (("authorization", f"Bearer {workers_stack.token()}"),)

    # Streams on both workers: each channel is a connection of its own (a subchannel pool of its
    # own: gRPC shares one connection between equal channels otherwise), which the kernel gives to
    # either worker.
    channels: list[aio.Channel] = []
    calls: list[aio.UnaryStreamCall[chat_pb2.CreateThreadRequest, events_pb2.ThreadStreamEvent]] = []
    threads: list[str] = []
    deadline = time.monotonic() + 20
    while len(runs_by_pid(agent, set(threads))) < WORKERS or len(calls) < 4:
        assert time.monotonic() < deadline, "streams never ran on both workers"
        channel = aio.insecure_channel(
            workers_stack.agent_address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        channels.append(channel)
        call = chat_pb2_grpc.ChatServiceStub(channel).CreateThread(
            chat_pb2.CreateThreadRequest(input=_grpc_input(LONG_QUESTION)), metadata=metadata, timeout=30
        )
        calls.append(call)
        first = await call.read()
        assert isinstance(first, events_pb2.ThreadStreamEvent)
        threads.append(first.thread_created.thread.id)
        await asyncio.sleep(0.05)  # the run lease is logged as the stream starts
    for call in calls:  # every one is streaming text
        while True:
            event = await call.read()
            assert isinstance(event, events_pb2.ThreadStreamEvent), "a stream ended early"
            if event.WhichOneof("kind") == "thread_item_updated":
                break

    # And one through the edge.
    async with http.post(
        f"{workers_stack.edge_url}/chatkit/api",
        json=request("threads.create", input=user_input(LONG_QUESTION)),
        headers=workers_stack.headers(),
    ) as response:
        assert response.status == 200
        through_edge = b""
        while b"text_delta" not in through_edge:
            through_edge += await response.content.readany()

        agent.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        through_edge += await response.read()
    events = parse_sse(through_edge)
    assert not [event for event in events if isinstance(event, ErrorEvent)], events
    assert assistant_text(events)
    finished = 1
    for call in calls:
        kinds = []
        while (event := await call.read()) is not aio.EOF:
            assert isinstance(event, events_pb2.ThreadStreamEvent)
            kinds.append(event.WhichOneof("kind"))
        assert "thread_item_done" in kinds, "the stream ran to its end"
        assert await call.code() == grpc.StatusCode.OK
        finished += 1
    for channel in channels:
        await channel.close()
    assert agent.process.wait(timeout=GRACE_S + 10) == 0
    drained = time.monotonic() - signalled
    assert drained < GRACE_S + 5
    log = agent.log_text()
    for index, pid in worker_pids(agent).items():
        assert f"agent worker {index} (pid {pid}) stopped: exit status 0" in log
    assert log.count("agent service shutting down: NOT_SERVING") >= WORKERS
    assert "agent service stopped (exit status 0)" in log
    await asyncio.sleep(0.5)
    assert not [pid for pid in family if _running(pid)], "every process of the service has exited"
    print(f"\nSIGTERM: {finished} streams on {WORKERS} workers drained in {drained:.1f} s")


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------- own processes


def _agent_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SWITCHBOARD_", "LLM_"))}
    env.update(
        {
            "SWITCHBOARD_DATA_DIR": str(data_dir),
            "SWITCHBOARD_JWT_SECRET": SECRET,
            "SWITCHBOARD_AGENT_LISTEN": "127.0.0.1:0",
            "SWITCHBOARD_AGENT_METRICS_LISTEN": "",
            "LLM_PROVIDER": "local",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


def test_a_schema_the_code_does_not_know_stops_the_supervisor_with_status_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "switchboard.sqlite3") as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('9999')")
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "agent"],
        env=_agent_env(
            data_dir,
            SWITCHBOARD_AGENT_WORKERS="2",
            SWITCHBOARD_AGENT_METRICS_LISTEN=f"127.0.0.1:{free_port()}",
            TMPDIR=str(tmp_path),
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "schema revision 9999, which this version of Switchboard does not know" in output
    assert "agent worker 1 (pid" in output and "could not start: exit status 2" in output
    assert "agent worker 2 started" not in output, "the other workers start once the first serves"
    assert [path.name for path in tmp_path.iterdir()] == ["data"], "no metrics directory left behind"


@pytest.mark.parametrize(
    ("workers", "problem"),
    [
        ("0", "Input should be greater than or equal to 1"),
        ("x", "Input should be a valid integer, unable to parse string as an integer"),
        ("65", "Input should be less than or equal to 64"),
    ],
)
def test_a_bad_worker_count_is_refused_with_status_2(tmp_path: Path, workers: str, problem: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "agent"],
        env=_agent_env(tmp_path, SWITCHBOARD_AGENT_WORKERS=workers),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"switchboard agent: SWITCHBOARD_AGENT_WORKERS={workers!r}: {problem}"
