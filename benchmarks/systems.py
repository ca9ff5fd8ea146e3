"""The systems under test, each started as real processes on free loopback ports.

Switchboard runs exactly as the tests run it (`tests.support.processes.running_stack`: upload
service, agent service and edge from `switchboard`'s CLI, on a moto S3 server), with the local model
in benchmark mode. Its two entry points are two systems: `switchboard` (ChatKit over the edge) and
`grpc-direct` (ChatService on the agent service). The reference and the ceiling are one aiohttp
process each (`python -m benchmarks.reference_server` / `benchmarks.ceiling_server`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from tests.support.processes import ROOT, Service, Stack, free_port, running_stack, wait_http

MiB: Final = 1024 * 1024

SWITCHBOARD: Final = "switchboard"
GRPC_DIRECT: Final = "grpc-direct"
REFERENCE: Final = "reference"
CEILING: Final = "ceiling"
SYSTEMS: Final = (SWITCHBOARD, GRPC_DIRECT, REFERENCE, CEILING)
LABELS: Final = {
    SWITCHBOARD: "Switchboard (edge, SSE)",
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


def switchboard_env(reply_tokens: int, upload_max_bytes: int) -> dict[str, str]:
    """What the bench stack sets on top of the test stack's environment (logs stay at INFO, the
    default: the edge writes its access line per request, as in production)."""
    return {
        "SWITCHBOARD_LOCAL_REPLY_TOKENS": str(reply_tokens),
        "SWITCHBOARD_UPLOAD_MAX_BYTES": str(upload_max_bytes),
    }


@contextmanager
def switchboard(data_dir: Path, reply_tokens: int, upload_max_bytes: int) -> Iterator[Stack]:
    """Upload service, agent service and edge (with moto S3) in benchmark mode, as the tests run them."""
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
