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

The Switchboard variants (`STACK_VARIANTS`) are the `switchboard` system started with more
environment, the same processes and the same cost (edge, agent, upload): `switchboard-no-metrics`
runs with metrics off, `switchboard-tracing` with metrics and traces on, every trace kept and
exported over OTLP/HTTP to a sink of its own (`benchmarks/otlp_sink.py`, a process that counts
the spans and discards them). One more variant is one more `StackVariant` line; it joins the cost
of observability (`OBSERVED`) only when it says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from tests.support.postgres import PostgresCluster, private_postgres
from tests.support.processes import ROOT, Service, Stack, free_port, running_stack, wait_http

MiB: Final = 1024 * 1024

SWITCHBOARD: Final = "switchboard"
SWITCHBOARD_NO_METRICS: Final = "switchboard-no-metrics"
SWITCHBOARD_TRACING: Final = "switchboard-tracing"
SWITCHBOARD_NO_LIMITS: Final = "switchboard-no-limits"
SWITCHBOARD_WORKERS: Final = "switchboard-workers"
SWITCHBOARD_PG: Final = "switchboard-pg"
SWITCHBOARD_PG_2: Final = "switchboard-pg-2"
GRPC_DIRECT: Final = "grpc-direct"
REFERENCE: Final = "reference"
CEILING: Final = "ceiling"


@dataclass(frozen=True)
class StackVariant:
    """A variant of the `switchboard` system: the same stack (upload, agent and edge on SQLite,
    through the edge) with more environment."""

    name: str
    label: str
    env: Mapping[str, str] = field(default_factory=dict)
    otlp_sink: bool = False
    """The variant gets an OTLP sink of its own, and its services export their traces to it
    (`OTEL_EXPORTER_OTLP_ENDPOINT`)."""
    observability: bool = False
    """Part of the cost of observability (`OBSERVED`): it runs in the cost phase with `switchboard`
    (stacks of their own, started for it) instead of the burst phase, and has a row in the report's
    cost section."""


METRICS_OFF_ENV: Final = {"SWITCHBOARD_METRICS_ENABLED": "false"}
LIMITS_OFF_ENV: Final = {"SWITCHBOARD_LIMITS_ENABLED": "false"}
AGENT_WORKERS: Final = 2
WORKERS_ENV: Final = {
    "SWITCHBOARD_AGENT_WORKERS": str(AGENT_WORKERS),
    "SWITCHBOARD_AGENT_CONNECTIONS": str(4 * AGENT_WORKERS),
}
"""Two agent workers on one port (a supervisor and its workers: the `agent` role is the process
tree), the edge with four connections per worker."""
TRACING_ENV: Final = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
"""Traces on, as a deployment switches them on (the endpoint is the variant's sink); the sampler and
the batching keep their defaults: every trace is kept, spans are exported in batches."""
STACK_VARIANTS: Final = {
    variant.name: variant
    for variant in (
        StackVariant(SWITCHBOARD_NO_METRICS, "Switchboard, metrics off", METRICS_OFF_ENV, observability=True),
        StackVariant(
            SWITCHBOARD_TRACING,
            "Switchboard, metrics and traces on",
            TRACING_ENV,
            otlp_sink=True,
            observability=True,
        ),
        StackVariant(SWITCHBOARD_NO_LIMITS, "Switchboard, limits off", LIMITS_OFF_ENV, observability=True),
        StackVariant(SWITCHBOARD_WORKERS, f"Switchboard, {AGENT_WORKERS} agent workers", WORKERS_ENV),
    )
}
"""The Switchboard variants, by name, in the order of the report (after `switchboard`)."""
OBSERVED: Final = (SWITCHBOARD, *(name for name, v in STACK_VARIANTS.items() if v.observability))
"""The systems the cost of observability compares, in the order of the report."""

SYSTEMS: Final = (
    SWITCHBOARD,
    *STACK_VARIANTS,
    SWITCHBOARD_PG,
    SWITCHBOARD_PG_2,
    GRPC_DIRECT,
    REFERENCE,
    CEILING,
)
"""Every system, in the order of the report (the variants and the PostgreSQL rows next to the
SQLite one)."""
PG_REPLICAS: Final = {SWITCHBOARD_PG: 1, SWITCHBOARD_PG_2: 2}
"""The PostgreSQL systems and their agent replicas."""
POSTGRES_ROLE: Final = "postgres"
LABELS: Final = {
    SWITCHBOARD: "Switchboard (edge, SSE)",
    **{variant.name: variant.label for variant in STACK_VARIANTS.values()},
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


BENCH_LIMITS: Final = {
    "SWITCHBOARD_LIMIT_RUNS_PER_USER": "1000000",
    "SWITCHBOARD_LIMIT_RUNS_PER_TENANT": "1000000",
    "SWITCHBOARD_LIMIT_REQUESTS_PER_MINUTE": "1000000000",
    "SWITCHBOARD_LIMIT_REQUEST_BURST": "1000000000",
    "SWITCHBOARD_LIMIT_TOKENS_PER_DAY": "1000000000000000",
    "SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY": "1000000000000000",
    "SWITCHBOARD_LIMIT_STORED_BYTES": "1000000000000000",
}
"""Every limit on and never reached: the load generator is one user of one tenant, and every
check (request bucket, budget, run slots, upload bytes) runs as it does in production."""


def switchboard_env(reply_tokens: int, upload_max_bytes: int) -> dict[str, str]:
    """What the bench stack sets on top of the test stack's environment (logs stay at INFO, the
    default: the edge writes its access line per request, as in production)."""
    return {
        "SWITCHBOARD_LOCAL_REPLY_TOKENS": str(reply_tokens),
        "SWITCHBOARD_UPLOAD_MAX_BYTES": str(upload_max_bytes),
        **BENCH_LIMITS,
    }


@contextmanager
def switchboard(
    data_dir: Path, reply_tokens: int, upload_max_bytes: int, **extra_env: str
) -> Iterator[Stack]:
    """Upload service, agent service and edge (on SeaweedFS) in benchmark mode, as the tests run them,
    with `extra_env` on top."""
    env = {**switchboard_env(reply_tokens, upload_max_bytes), **extra_env}
    # running_stack's own keywords spelled out (their defaults), so that `env` only fills **extra_env
    with running_stack(
        data_dir, agent=True, uploads=True, s3=None, agent_replicas=1, upload_replicas=1, **env
    ) as stack:
        yield stack


@contextmanager
def paced_switchboard(data_dir: Path, reply_tokens: int, tokens_per_s: float) -> Iterator[Stack]:
    """The agent service and the edge on SQLite, the benchmark model paced at `tokens_per_s`
    (`SWITCHBOARD_LOCAL_TOKENS_PER_S`), for the paced scenario. No upload service: the workload sends
    no attachments (in the burst stack it only sits idle), and no S3 server to start."""
    env = {
        "SWITCHBOARD_LOCAL_REPLY_TOKENS": str(reply_tokens),
        "SWITCHBOARD_LOCAL_TOKENS_PER_S": repr(tokens_per_s),
        **BENCH_LIMITS,
    }
    # running_stack's own keywords spelled out, so that `env` only fills **extra_env
    with running_stack(
        data_dir, agent=True, uploads=False, s3=None, agent_replicas=1, upload_replicas=1, **env
    ) as stack:
        yield stack


def paced_targets(stack: Stack) -> tuple[Target, Target]:
    """`switchboard` (the edge and the agent) and `grpc-direct` (the agent) on a paced stack."""
    pids = {name: stack.services[name].process.pid for name in ("edge", "agent")}
    return Target(SWITCHBOARD, "http", stack.edge_url, pids), Target(
        GRPC_DIRECT, "grpc", stack.agent_address, {"agent": pids["agent"]}
    )


def _edge_target(name: str, stack: Stack) -> Target:
    pids = {name: service.process.pid for name, service in stack.services.items()}
    workers = int(stack.agent_envs["agent"].get("SWITCHBOARD_AGENT_WORKERS", "1"))
    return Target(
        name,
        "http",
        stack.edge_url,
        {k: pids[k] for k in ("edge", "agent", "upload")},
        trees=("agent",) if workers > 1 else (),
    )


def switchboard_targets(stack: Stack) -> tuple[Target, Target]:
    direct_pids = {k: stack.services[k].process.pid for k in ("agent", "upload")}
    return _edge_target(SWITCHBOARD, stack), Target(GRPC_DIRECT, "grpc", stack.agent_address, direct_pids)


@dataclass
class OtlpSink:
    """A running `benchmarks.otlp_sink`: where the services send their traces, and what it received."""

    endpoint: str
    """OTEL_EXPORTER_OTLP_ENDPOINT for the services (their exporter appends /v1/traces)."""
    pid: int
    final: dict[str, Any] | None = None
    """Its `stats()` just before it stopped, after the services it served had flushed theirs."""

    def stats(self) -> dict[str, Any]:
        """What it received so far (`benchmarks.otlp_sink.Sink.stats`)."""
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=5) as response:
            stats: dict[str, Any] = json.load(response)
        return stats


@contextmanager
def otlp_sink(log_dir: Path) -> Iterator[OtlpSink]:
    """`python -m benchmarks.otlp_sink` on a free port; reads its final stats before stopping it."""
    with python_server("benchmarks.otlp_sink", "otlp-sink", log_dir) as (url, service):
        sink = OtlpSink(url, service.process.pid)
        try:
            yield sink
        finally:
            try:
                sink.final = sink.stats()
            except OSError:
                sink.final = None


@contextmanager
def switchboard_variant(
    variant: StackVariant, data_dir: Path, reply_tokens: int, upload_max_bytes: int
) -> Iterator[tuple[Target, OtlpSink | None]]:
    """The `switchboard` system with the variant's environment (and its OTLP sink, started first and
    stopped last, so it receives what the services flush when they stop); yields its target (edge URL,
    the edge, agent and upload pids) and the sink."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as running:
        env = dict(variant.env)
        sink = None
        if variant.otlp_sink:
            sink = running.enter_context(otlp_sink(data_dir))
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
        stack = running.enter_context(switchboard(data_dir, reply_tokens, upload_max_bytes, **env))
        yield _edge_target(variant.name, stack), sink


def postmaster_pid(cluster: PostgresCluster) -> int:
    """The pid of a running cluster's postmaster (the first line of `postmaster.pid`)."""
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


@contextmanager
def switchboard_pg(name: str, data_dir: Path, reply_tokens: int) -> Iterator[tuple[Stack, Target]]:
    """A PostgreSQL system of `PG_REPLICAS[name]` agent replicas behind one edge, on a cluster and
    database of its own; yields the stack and the system's target (edge URL, pids by role)."""
    with (
        private_postgres(durable=True) as cluster,
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
def python_server(module: str, name: str, log_dir: Path, *args: str) -> Iterator[tuple[str, Service]]:
    """`python -m <module> --port P <args>`, ready when `/healthz` answers; yields its URL."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port), *args],
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    service = Service(name, process, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", service)
        yield url, service
    finally:
        service.stop()


@contextmanager
def aiohttp_server(
    module: str, name: str, reply_tokens: int, log_dir: Path, tokens_per_s: float | None = None
) -> Iterator[Target]:
    """`python -m <module> --port P --reply-tokens N [--tokens-per-s R]` (the reference, the ceiling;
    only the reference paces)."""
    pace = () if tokens_per_s is None else ("--tokens-per-s", repr(tokens_per_s))
    with python_server(module, name, log_dir, "--reply-tokens", str(reply_tokens), *pace) as (url, service):
        yield Target(name, "http", url, {name: service.process.pid})
