"""Start Switchboard's real processes on free loopback ports, the way `switchboard dev` does.

`running_stack` runs the upload service, the agent service and the edge on a real S3 server (the
session's SeaweedFS, a bucket of its own per stack), with the embedded SQLite store by default. For
the scale-out shape, give it a PostgreSQL database and several agent replicas; the edge then
balances over all of them:

    from tests.support.postgres import shared_postgres
    url = shared_postgres().create_database("bench")
    with running_stack(data_dir, database_url=url, agent_replicas=2) as stack:
        ...   # stack.edge_url, stack.agent_addresses, stack.services["agent"], ["agent-2"]

The stack migrates its database first with `switchboard migrate`, as a deployment's migration job
would (the SQLite default migrates itself when the agent starts). `SWITCHBOARD_AGENT_WORKERS="N"`
among the environment runs each agent service as N worker processes on its port; the stack is up
once every worker serves.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.common.auth import mint_token
from tests.support.s3 import S3Server, shared_seaweedfs

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-" + "x" * 40


def stop_all(services: Iterable[Service], timeout: float = 15) -> None:
    """SIGTERM every service at once, then wait for each (they drain in parallel)."""
    running = [service for service in services if service.process.poll() is None]
    for service in running:
        service.process.send_signal(signal.SIGTERM)
    for service in running:
        try:
            service.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]

    def log_text(self) -> str:
        """The whole log (every start of this service, when it was restarted)."""
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


@dataclass
class Stack:
    data_dir: Path
    agent_address: str
    """The first agent replica's address (all of them: `agent_addresses`)."""
    upload_address: str
    s3: S3Server
    edge_url: str
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)
    agent_addresses: list[str] = field(default_factory=list)
    """Replica name ("agent", "agent-2", ...) -> address, in `agent_envs` order."""
    agent_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    database_url: str | None = None
    """SWITCHBOARD_DATABASE_URL when the stack runs on PostgreSQL (None: SQLite in data_dir)."""
    upload_envs: dict[str, dict[str, str]] = field(default_factory=dict)
    """Upload replica name ("upload", "upload-2", ...) -> its environment, in start order."""
    agent_workers: int = 1
    """SWITCHBOARD_AGENT_WORKERS of every agent replica."""

    def agents(self) -> list[Service]:
        """The agent replicas (running or not), in start order."""
        return [self.services[name] for name in self.agent_envs if name in self.services]

    def start_agent(self, name: str, timeout: float = 30) -> Service:
        """(Re)start the agent replica `name` with its environment and wait until it listens."""
        env = self.agent_envs[name]
        previous = self.services.get(name)
        offset = len(previous.log_text()) if previous is not None else 0
        service = start(name, env, self.data_dir, command="agent", append=True)
        self.services[name] = service
        wait_port(int(env["SWITCHBOARD_AGENT_LISTEN"].rsplit(":", 1)[1]), service, timeout)
        if self.agent_workers > 1:
            wait_log(service, WORKERS_READY, timeout, after=offset)
        return service

    def metrics_url(self, name: str) -> str:
        """Where the service `name` ("edge", "upload", "agent", "agent-2", ...) serves /metrics."""
        if name == "edge":
            return f"{self.edge_url}/metrics"
        if name.startswith("upload"):
            return f"http://{self.upload_envs[name]['SWITCHBOARD_UPLOAD_METRICS_LISTEN']}/metrics"
        return f"http://{self.agent_envs[name]['SWITCHBOARD_AGENT_METRICS_LISTEN']}/metrics"

    def token(self, tenant: str = "acme", user: str = "alice", role: str = "user") -> str:
        return mint_token(SECRET, tenant=tenant, user=user, role=role)

    def headers(self, tenant: str = "acme", user: str = "alice", role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, user, role)}"}

    @property
    def store_path(self) -> Path:
        return self.data_dir / "switchboard.sqlite3"

    @property
    def s3_endpoint(self) -> str:
        return self.s3.endpoint

    @property
    def bucket(self) -> str:
        """The stack's own bucket (MINIO_BUCKET)."""
        return self.env["MINIO_BUCKET"]


# Where a stack without uploads points MINIO_ENDPOINT: the discard port, nothing answers there.
NO_S3 = S3Server("127.0.0.1:9", "unused", "unused-secret")


def service_env(
    data_dir: Path,
    agent_port: int,
    edge_port: int,
    upload_port: int,
    s3: S3Server,
    bucket: str = "switchboard-test",
    **extra: str,
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SWITCHBOARD_", "LLM_"))}
    for key in [*env]:
        if key.startswith(("OPENAI_", "GEMINI_", "MINIO_", "OTEL_")):
            env.pop(key)
    env.update(
        {
            "SWITCHBOARD_DATA_DIR": str(data_dir),
            "SWITCHBOARD_JWT_SECRET": SECRET,
            "SWITCHBOARD_AGENT_LISTEN": f"127.0.0.1:{agent_port}",
            "SWITCHBOARD_AGENT_ADDRESS": f"127.0.0.1:{agent_port}",
            "SWITCHBOARD_UPLOAD_LISTEN": f"127.0.0.1:{upload_port}",
            "SWITCHBOARD_UPLOAD_ADDRESS": f"127.0.0.1:{upload_port}",
            "SWITCHBOARD_EDGE_HOST": "127.0.0.1",
            "SWITCHBOARD_EDGE_PORT": str(edge_port),
            # Metrics ports of their own: many stacks run at once (the defaults would collide).
            "SWITCHBOARD_AGENT_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "SWITCHBOARD_UPLOAD_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "SWITCHBOARD_LOCAL_TOKEN_DELAY_MS": "2",
            "SWITCHBOARD_SHUTDOWN_GRACE_S": "5",
            "SWITCHBOARD_LOG_LEVEL": "INFO",
            # The suite drives one user hard (fuzzing, concurrent turns): limits are checked but
            # the rate and run limits are off unless a test sets them (tests/e2e/test_limits.py).
            "SWITCHBOARD_LIMIT_REQUESTS_PER_MINUTE": "0",
            "SWITCHBOARD_LIMIT_RUNS_PER_USER": "0",
            "PYTHONUNBUFFERED": "1",
            **s3.env(bucket),
        }
    )
    env.update(extra)
    return env


def start(
    name: str, env: dict[str, str], log_dir: Path, *, command: str | None = None, append: bool = False
) -> Service:
    """Run `switchboard <command>` (default: `name`) with its output in `<log_dir>/<name>.log`."""
    log = log_dir / f"{name}.log"
    handle = log.open("ab" if append else "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", command or name],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    return Service(name, process, log)


def wait_http(url: str, service: Service | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service is not None and service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.logs()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready in {timeout} s" + (f":\n{service.logs()}" if service else ""))


def wait_port(port: int, service: Service, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.logs()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{service.name} did not listen on {port}:\n{service.logs()}")


WORKERS_READY = "agent service ready: "
"""What an agent supervisor logs once every worker serves (services/agent_service/workers.py)."""


def wait_log(service: Service, text: str, timeout: float = 30, *, after: int = 0) -> str:
    """Wait until `text` appears in the service's log past character `after`; the log from there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = service.log_text()[after:]
        if text in tail:
            return tail
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited:\n{service.logs()}")
        time.sleep(0.05)
    raise TimeoutError(f"{service.name} did not log {text!r} in {timeout} s:\n{service.logs()}")


def migrate(env: dict[str, str], timeout: float = 60) -> str:
    """Run `switchboard migrate` with `env` (what a deployment's migration job does); its output."""
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"switchboard migrate failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


@contextmanager
def running_stack(
    data_dir: Path,
    *,
    agent: bool = True,
    uploads: bool = True,
    s3: S3Server | None = None,
    agent_replicas: int = 1,
    upload_replicas: int = 1,
    database_url: str | None = None,
    **extra_env: str,
) -> Iterator[Stack]:
    """The upload service, the agent service and the edge as real processes, on a real S3 server
    (`s3`, else the session's SeaweedFS; none without uploads) in a bucket of the stack's own; all
    stopped (SIGTERM) afterwards. `MINIO_*` in `extra_env` override the server's (wrong credentials,
    a fixed bucket).

    `agent_replicas` agent services listen on ports of their own; the edge gets them all as
    `SWITCHBOARD_AGENT_ADDRESS=127.0.0.1:p1,127.0.0.1:p2` and balances over them. `database_url`
    (a PostgreSQL database, e.g. from `tests.support.postgres`) is migrated with `switchboard
    migrate`, then shared by every replica; without it each stack has its SQLite file in `data_dir`.
    `upload_replicas` upload services likewise ("upload", "upload-2", ...): the edge and the agents
    get them all as `SWITCHBOARD_UPLOAD_ADDRESS`. `SWITCHBOARD_AGENT_WORKERS` > 1 in `extra_env` runs
    every agent replica as that many workers; the stack waits until all of them serve.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    s3_server = s3 or (shared_seaweedfs() if uploads else NO_S3)
    agent_ports = [free_port() for _ in range(max(agent_replicas, 1))]
    edge_port = free_port()
    upload_ports = [free_port() for _ in range(max(upload_replicas, 1))]
    if database_url is not None:
        extra_env = {"SWITCHBOARD_DATABASE_URL": database_url, **extra_env}
    agent_workers = int(extra_env.get("SWITCHBOARD_AGENT_WORKERS", "1"))
    bucket = S3Server.new_bucket()
    env = service_env(data_dir, agent_ports[0], edge_port, upload_ports[0], s3_server, bucket, **extra_env)
    addresses = [f"127.0.0.1:{port}" for port in agent_ports]
    env["SWITCHBOARD_AGENT_ADDRESS"] = ",".join(addresses)
    env["SWITCHBOARD_UPLOAD_ADDRESS"] = ",".join(f"127.0.0.1:{port}" for port in upload_ports)
    stack = Stack(
        data_dir,
        addresses[0],
        f"127.0.0.1:{upload_ports[0]}",
        s3_server,
        f"http://127.0.0.1:{edge_port}",
        env,
        agent_addresses=addresses,
        database_url=database_url,
        agent_workers=agent_workers,
    )
    for index, address in enumerate(addresses):
        name = "agent" if index == 0 else f"agent-{index + 1}"
        stack.agent_envs[name] = {**env, "SWITCHBOARD_AGENT_LISTEN": address}
        if index:
            stack.agent_envs[name]["SWITCHBOARD_AGENT_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
    for index, port in enumerate(upload_ports):
        name = "upload" if index == 0 else f"upload-{index + 1}"
        stack.upload_envs[name] = {**env, "SWITCHBOARD_UPLOAD_LISTEN": f"127.0.0.1:{port}"}
        if index:
            stack.upload_envs[name]["SWITCHBOARD_UPLOAD_METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
    try:
        if database_url is not None:
            migrate(env)
        if uploads:
            for name, upload_env in stack.upload_envs.items():
                stack.services[name] = start(name, upload_env, data_dir, command="upload")
            for name, upload_env in stack.upload_envs.items():
                port = int(upload_env["SWITCHBOARD_UPLOAD_LISTEN"].rsplit(":", 1)[1])
                wait_port(port, stack.services[name])
        if agent:
            # The replicas and the edge start together (the edge connects lazily).
            for name in stack.agent_envs:
                stack.services[name] = start(name, stack.agent_envs[name], data_dir, command="agent")
        stack.services["edge"] = start("edge", env, data_dir)
        if agent:
            for name in stack.agent_envs:
                port = int(stack.agent_envs[name]["SWITCHBOARD_AGENT_LISTEN"].rsplit(":", 1)[1])
                wait_port(port, stack.services[name])
                if agent_workers > 1:
                    wait_log(stack.services[name], WORKERS_READY)
        wait_http(f"{stack.edge_url}/healthz", stack.services["edge"])
        if agent:
            wait_http(f"{stack.edge_url}/readyz", stack.services["edge"])
        yield stack
    finally:
        stop_all(reversed(list(stack.services.values())))
