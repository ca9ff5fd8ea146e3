"""Start Switchboard's real processes on free loopback ports, the way `switchboard dev` does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.common.auth import mint_token
from tests.support.s3 import running_s3

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-" + "x" * 40


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
    upload_address: str
    s3_endpoint: str
    edge_url: str
    env: dict[str, str]
    services: dict[str, Service] = field(default_factory=dict)

    def token(self, tenant: str = "acme", user: str = "alice", role: str = "user") -> str:
        return mint_token(SECRET, tenant=tenant, user=user, role=role)

    def headers(self, tenant: str = "acme", user: str = "alice", role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, user, role)}"}

    @property
    def store_path(self) -> Path:
        return self.data_dir / "switchboard.sqlite3"


def service_env(
    data_dir: Path, agent_port: int, edge_port: int, upload_port: int, s3_endpoint: str, **extra: str
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SWITCHBOARD_", "LLM_"))}
    for key in [*env]:
        if key.startswith(("OPENAI_", "GEMINI_", "MINIO_")):
            env.pop(key)
    env.update(
        {
            "SWITCHBOARD_DATA_DIR": str(data_dir),
            "SWITCHBOARD_JWT_SECRET": SECRET,
            "SWITCHBOARD_AGENT_LISTEN": f"127.0.0.1:{agent_port}",
            "SWITCHBOARD_AGENT_ADDRESS": f"127.0.0.1:{agent_port}",
            "SWITCHBOARD_UPLOAD_LISTEN": f"127.0.0.1:{upload_port}",
            "SWITCHBOARD_UPLOAD_ADDRESS": f"127.0.0.1:{upload_port}",
            "MINIO_ENDPOINT": s3_endpoint,
            "MINIO_BUCKET": "switchboard-test",
            "SWITCHBOARD_EDGE_HOST": "127.0.0.1",
            "SWITCHBOARD_EDGE_PORT": str(edge_port),
            "SWITCHBOARD_LOCAL_TOKEN_DELAY_MS": "2",
            "SWITCHBOARD_SHUTDOWN_GRACE_S": "5",
            "SWITCHBOARD_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start(name: str, env: dict[str, str], log_dir: Path) -> Service:
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.cli", name],
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


@contextmanager
def running_stack(
    data_dir: Path, *, agent: bool = True, uploads: bool = True, s3: str | None = None, **extra_env: str
) -> Iterator[Stack]:
    """The upload service, the agent service and the edge as real processes, on a real S3 server
    (moto, started here unless `s3` names an endpoint); all stopped (SIGTERM) afterwards."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as resources:
        s3_endpoint = s3 or resources.enter_context(running_s3())
        agent_port, edge_port, upload_port = free_port(), free_port(), free_port()
        env = service_env(data_dir, agent_port, edge_port, upload_port, s3_endpoint, **extra_env)
        stack = Stack(
            data_dir,
            f"127.0.0.1:{agent_port}",
            f"127.0.0.1:{upload_port}",
            s3_endpoint,
            f"http://127.0.0.1:{edge_port}",
            env,
        )
        try:
            if uploads:
                stack.services["upload"] = start("upload", env, data_dir)
                wait_port(upload_port, stack.services["upload"])
            if agent:
                stack.services["agent"] = start("agent", env, data_dir)
                wait_port(agent_port, stack.services["agent"])
            stack.services["edge"] = start("edge", env, data_dir)
            wait_http(f"{stack.edge_url}/healthz", stack.services["edge"])
            if agent:
                wait_http(f"{stack.edge_url}/readyz", stack.services["edge"])
            yield stack
        finally:
            for service in reversed(list(stack.services.values())):
                service.stop()
