"""The pieces of `SWITCHBOARD_AGENT_WORKERS` that need no worker process: the address the supervisor
holds, the restart backoff, the flag and the setting, the workers' log lines (the supervisor with
real workers: tests/e2e/test_agent_workers.py)."""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket

import pytest
from annotated_types import Ge, Le

from services.agent_service import metrics as agent_metrics
from services.agent_service.workers import BACKOFF_MAX_S, backoff_s, describe, reserve
from services.cli import AGENT_WORKERS_MAX, build_parser
from services.common import logs
from services.common import metrics as common_metrics
from services.common.config import Settings


def test_port_0_becomes_one_port_that_workers_share_and_nobody_else_takes() -> None:
    address, held = reserve("127.0.0.1:0")
    with held:
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        # A worker (SO_REUSEPORT, as grpc's "grpc.so_reuseport" sets it) listens on the same port...
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", int(port)))
        worker.listen()
        # ...and gets every connection: the held socket does not listen.
        with worker:
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", int(port)), timeout=2):
                    accepted, _ = worker.accept()
                    accepted.close()
        # Another program (no SO_REUSEPORT) cannot take the port while the supervisor holds it.
        with socket.socket() as other, pytest.raises(OSError, match="in use") as caught:
            other.bind(("127.0.0.1", int(port)))
        assert caught.value.errno == errno.EADDRINUSE


def test_an_explicit_port_is_kept_and_one_held_by_another_program_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            reserve(f"127.0.0.1:{port}")
    address, held = reserve(f"127.0.0.1:{port}")
    with held:
        assert address == f"127.0.0.1:{port}"
    address, held = reserve("[::1]:0")
    with held:
        assert address.startswith("[::1]:") and held.family == socket.AF_INET6


@pytest.mark.parametrize("listen", ["unix:/tmp/agent.sock", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000"])
def test_a_listen_address_that_is_not_host_port_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match="SWITCHBOARD_AGENT_LISTEN"):
        reserve(listen)


def test_restarts_back_off_up_to_a_bound() -> None:
    assert [backoff_s(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_s(1000) == BACKOFF_MAX_S


def test_exit_statuses_are_described() -> None:
    assert describe(0) == "exit status 0"
    assert describe(2) == "exit status 2"
    assert describe(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe(None) == "still running"


def test_the_flag_and_the_setting_have_the_same_bounds() -> None:
    field = Settings.model_fields["agent_workers"]
    bounds = {type(item): item for item in field.metadata}
    assert field.default == 1
    assert bounds[Ge].ge == 1 and bounds[Le].le == AGENT_WORKERS_MAX
    parser = build_parser()
    assert parser.parse_args(["agent", "--workers", "4"]).workers == 4
    assert parser.parse_args(["agent"]).workers is None
    for bad in ("0", "65", "x"):
        with pytest.raises(SystemExit) as caught:
            parser.parse_args(["agent", "--workers", bad])
        assert caught.value.code == 2


def test_worker_lines_name_their_worker() -> None:
    record = logging.LogRecord("services.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.request_id = record.tenant = record.operation = record.trace_id = record.span_id = "-"
    assert logging.Formatter(logs.text_format()).format(record).endswith(" INFO services.x: hello there")
    line = logging.Formatter(logs.text_format(2)).format(record)
    assert line.endswith(" INFO services.x [worker 2]: hello there")
    assert json.loads(logs.json_formatter(worker=2).format(record))["worker"] == 2
    assert "worker" not in json.loads(logs.json_formatter().format(record))


def test_one_process_keeps_its_metrics_in_memory_with_the_pool_read_at_scrape_time() -> None:
    assert not common_metrics.multiprocess()
    gauge = agent_metrics.POOL_IN_USE
    try:
        assert agent_metrics.watch_pool(lambda: 3) is None
        assert [sample.value for sample in gauge.collect()[0].samples] == [3.0]
    finally:
        vars(gauge).pop("_child_samples", None)  # the gauge's own value again
