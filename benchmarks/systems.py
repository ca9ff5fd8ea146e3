"""The systems under test, each started as real processes on free loopback ports.

Switchboard runs exactly as the tests run it (`tests.support.processes.running_stack`: upload
service, agent service and edge from `switchboard`'s CLI, on SeaweedFS), with the local model
in benchmark mode. Its two entry points are two systems: `switchboard` (ChatKit over the edge) and
`grpc-direct` (ChatService on the agent service). The reference and the ceiling are one aiohttp
process each (`python -m benchmarks.reference_server` / `benchmarks.ceiling_server`).

The PostgreSQL variants run the scale-out shape, also as the tests run it: `switchboard-pg` is an
edge and one agent replica, `switchboard-pg-2` an edge balancing (gRPC round_robin) over two agent
replicas. Each has its own throwaway PostgreSQL cluster (`tests.support.postgres.private_postgres`)
with one fresh database, migrated by `switchboard migrate`; no upload service (the workload sends
no attachments). The server is part of the system's cost: its `postgres` role is the postmaster
and, as a process tree, every backend and background process it forks.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from tests.support.postgres import PostgresCluster, private_postgres
from tests.support.processes import ROOT, Service, Stack, free_port, running_stack, wait_http

MiB: Final = 1024 * 1024

SWITCHBOARD: Final = "switchboard"
SWITCHBOARD_PG: Final = "switchboard-pg"
SWITCHBOARD_PG_2: Final = "switchboard-pg-2"
GRPC_DIRECT: Final = "grpc-direct"
REFERENCE: Final = "reference"
CEILING: Final = "ceiling"
SYSTEMS: Final = (SWITCHBOARD, SWITCHBOARD_PG, SWITCHBOARD_PG_2, GRPC_DIRECT, REFERENCE, CEILING)
"""Every system, in the order of the report (the PostgreSQL rows next to the SQLite one)."""
PG_REPLICAS: Final = {SWITCHBOARD_PG: 1, SWITCHBOARD_PG_2: 2}
"""The PostgreSQL systems and their agent replicas."""
POSTGRES_ROLE: Final = "postgres"
LABELS: Final = {
    SWITCHBOARD: "Switchboard (edge, SSE)",
    SWITCHBOARD_PG: "Switchboard on PostgreSQL, 1 agent",
    SWITCHBOARD_PG_2: "Switchboard on PostgreSQL, 2 agents",
    GRPC_DIRECT: "Switchboard gRPC direct",
    REFERENCE: "Reference ChatKitServer",
    CEILING: "Ceiling (aiohttp, no model)",
}


@dataclass(frozen=True)
class Target:
    """Where and how the load generator reaches a system, and which processes are its cost."""

    name: str
    protocol: Literal["http", "grpc"]
    address: str
    """Base URL (http) or host:port (grpc)."""
    pids: dict[str, int]
    """Every process of the system whose CPU and memory count, by role."""
    trees: tuple[str, ...] = ()
    """Roles counted with all their descendants (see `benchmarks.metrics.ProcessWatch`)."""


def switchboard_env(reply_tokens: int, upload_max_bytes: int) -> dict[str, str]:
    """What the bench stack sets on top of the test stack's environment (logs stay at INFO, the
    default: the edge writes its access line per request, as in production)."""
    return {
        "SWITCHBOARD_LOCAL_REPLY_TOKENS": str(reply_tokens),
        "SWITCHBOARD_UPLOAD_MAX_BYTES": str(upload_max_bytes),
    }


@contextmanager
def switchboard(data_dir: Path, reply_tokens: int, upload_max_bytes: int) -> Iterator[Stack]:
    """Upload service, agent service and edge (on SeaweedFS) in benchmark mode, as the tests run them."""
    env = switchboard_env(reply_tokens, upload_max_bytes)
    with running_stack(
        data_dir,
        SWITCHBOARD_LOCAL_REPLY_TOKENS=env["SWITCHBOARD_LOCAL_REPLY_TOKENS"],
        SWITCHBOARD_UPLOAD_MAX_BYTES=env["SWITCHBOARD_UPLOAD_MAX_BYTES"],
    ) as stack:
        yield stack


def switchboard_targets(stack: Stack) -> tuple[Target, Target]:
    pids = {name: service.process.pid for name, service in stack.services.items()}
    edge = Target(SWITCHBOARD, "http", stack.edge_url, {k: pids[k] for k in ("edge", "agent", "upload")})
    direct = Target(GRPC_DIRECT, "grpc", stack.agent_address, {k: pids[k] for k in ("agent", "upload")})
    return edge, direct


def postmaster_pid(cluster: PostgresCluster) -> int:
    """The pid of a running cluster's postmaster (the first line of `postmaster.pid`)."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


@contextmanager
def switchboard_pg(name: str, data_dir: Path, reply_tokens: int) -> Iterator[tuple[Stack, Target]]:
    """A PostgreSQL system of `PG_REPLICAS[name]` agent replicas behind one edge, on a cluster and
    database of its own; yields the stack and the system's target (edge URL, pids by role)."""
    with (
        private_postgres() as cluster,
        running_stack(
            data_dir,
            database_url=cluster.create_database("bench"),
            agent_replicas=PG_REPLICAS[name],
            uploads=False,
            SWITCHBOARD_LOCAL_REPLY_TOKENS=str(reply_tokens),
        ) as stack,
    ):
        pids = {"edge": stack.services["edge"].process.pid}
        pids.update({agent.name: agent.process.pid for agent in stack.agents()})
        pids[POSTGRES_ROLE] = postmaster_pid(cluster)
        yield stack, Target(name, "http", stack.edge_url, pids, trees=(POSTGRES_ROLE,))


@contextmanager
def aiohttp_server(module: str, name: str, reply_tokens: int, log_dir: Path) -> Iterator[Target]:
    """`python -m <module> --port P --reply-tokens N`, ready when `/healthz` answers."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), "--reply-tokens", str(reply_tokens)],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    service = Service(name, process, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", service)
        yield Target(name, "http", url, {name: process.pid})
    finally:
        service.stop()
