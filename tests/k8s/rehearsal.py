"""Run a rendered overlay's workloads as local processes, wired only by what the manifests say.

Each container becomes `python -m services.cli <args>` (the image's ENTRYPOINT `switchboard`, read
from the Dockerfile) or its `command` (`python` -> this interpreter), with the environment
Kubernetes would give it: ConfigMaps and Secrets resolved, then three rewrites and nothing else:

- `host:port` of an in-cluster Service (short name or namespace-qualified) becomes `127.0.0.1:P`,
  where P is the local port of the container port that the Service's targetPort selects;
- the container's own listen values (`0.0.0.0:<containerPort>`, a bare containerPort in a `*_PORT`
  variable, a wildcard host) become `127.0.0.1` and that same local port;
- paths under a volumeMount (emptyDir, ConfigMap) become a local directory holding the volume.

The backing StatefulSets are replaced by local servers on their local ports: PostgreSQL by a
throwaway cluster, MinIO by moto's S3 server. A value that still names a Service or a wildcard
address after the rewrites fails the rehearsal: the wiring would not work in a cluster either.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health_pb2

from tests.k8s.manifests import ROOT, WILDCARD_HOSTS, Container, Obj, Rendered, service_refs

_PROCESS_ENV_KEEP: Final = ("LANG", "LC_ALL", "TZ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's final stage gives every container: entrypoint, workdir, environment."""

    entrypoint: list[str]
    workdir: str
    env: dict[str, str]

    @classmethod
    def from_dockerfile(cls, path: Path = ROOT / "Dockerfile") -> Image:
        lines = re.sub(r"\\\n", " ", path.read_text()).splitlines()
        final: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.upper().startswith("FROM "):
                final = []
            elif stripped and not stripped.startswith("#"):
                final.append(stripped)
        entrypoint: list[str] = []
        workdir = "/"
        env: dict[str, str] = {}
        for line in final:
            keyword, _, value = line.partition(" ")
            keyword = keyword.upper()
            if keyword == "ENTRYPOINT":
                entrypoint = json.loads(value)
            elif keyword == "WORKDIR":
                workdir = value.strip()
            elif keyword == "ENV":
                env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S*)", value)))
        return cls(entrypoint, workdir, env)


@dataclass
class Process:
    container: Container
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    stopped_in_s: float | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        try:
            self.exit_code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise
        return self.exit_code

    def terminate(self, timeout: float) -> int:
        """SIGTERM (what the kubelet sends after preStop), then wait; SIGKILL after `timeout`."""
        assert self.popen is not None
        started = time.monotonic()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        code = self.wait(timeout)
        self.stopped_in_s = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


@dataclass
class LocalCluster:
    """The overlay's addresses on this machine and the processes that run its containers."""

    rendered: Rendered
    root: Path
    image: Image = field(default_factory=Image.from_dockerfile)
    container_ports: dict[tuple[str, int], int] = field(default_factory=dict)
    """(workload name, containerPort) -> local port."""
    volumes: dict[tuple[str, str], Path] = field(default_factory=dict)
    """(workload name, volume name) -> local directory."""
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        for workload in self.rendered.workloads():
            if workload["kind"] == "Job":
                continue
            for spec in workload["spec"]["template"]["spec"]["containers"]:
                for port in spec.get("ports") or []:
                    self.container_ports[(workload["metadata"]["name"], port["containerPort"])] = free_port()

    # ----------------------------------------------------------------- addresses

    def service_port(self, service: str, port: int | str) -> int:
        """The local port behind `service:port`, through the Service's targetPort."""
        container, number = self.rendered.backend(service, port)
        return self.container_ports[(container.workload["metadata"]["name"], number)]

    def local_port(self, container: Container, port: int | str) -> int:
        number = container.container_port(port)
        assert number is not None, f"{container.name} has no port {port}"
        return self.container_ports[(container.workload["metadata"]["name"], number)]

    def volume_dir(self, container: Container, volume: str) -> Path:
        workload = container.workload["metadata"]["name"]
        key = (workload, volume)
        if key not in self.volumes:
            directory = self.root / "volumes" / workload / volume
            directory.mkdir(parents=True)
            spec = next(v for v in container.pod_spec.get("volumes") or [] if v["name"] == volume)
            if "configMap" in spec:
                data = self.rendered.config_map(spec["configMap"]["name"])
                assert data is not None, f"{container.name}: ConfigMap {spec['configMap']['name']} missing"
                for key_name, text in data.items():
                    (directory / key_name).write_text(text)
            else:
                assert "emptyDir" in spec, f"{container.name}: volume {volume} cannot be rehearsed: {spec}"
            self.volumes[key] = directory
        return self.volumes[key]

    def _mounts(self, container: Container) -> list[tuple[str, Path]]:
        mounts = [
            (m["mountPath"].rstrip("/"), self.volume_dir(container, m["name"]))
            for m in container.spec.get("volumeMounts") or []
        ]
        return sorted(mounts, key=lambda item: -len(item[0]))

    def _path(self, value: str, mounts: list[tuple[str, Path]]) -> str:
        for mount_path, local in mounts:
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(local) + value[len(mount_path) :]
        return value

    def rootfs(self, container: Container) -> Path:
        """Stands in for the image's read-only root filesystem: must stay empty."""
        return self.root / "rootfs" / str(container.workload["metadata"]["name"])

    def _image_path(self, container: Container, value: str, mounts: list[tuple[str, Path]]) -> str:
        """An absolute path from the image (WORKDIR, ENV): its volume if one is mounted there, else
        an empty directory under `rootfs()` (the image's directory is not writable in a pod)."""
        mapped = self._path(value, mounts)
        if mapped != value or not value.startswith("/"):
            return mapped
        stand_in = self.rootfs(container) / value.strip("/")
        stand_in.mkdir(parents=True, exist_ok=True)
        return str(stand_in)

    def rewrite(self, container: Container, name: str, value: str) -> str:
        """One environment value (or argument) as the local process must see it."""
        for ref in reversed(service_refs(value, self.rendered)):
            value = (
                f"{value[: ref.start]}127.0.0.1:{self.service_port(ref.service, ref.port)}{value[ref.end :]}"
            )
        own_ports = {int(p["containerPort"]) for p in container.spec.get("ports") or []}
        match = re.fullmatch(r"(0\.0\.0\.0|\[::\]|::|):(\d+)", value)
        if match and int(match.group(2)) in own_ports:
            value = f"127.0.0.1:{self.local_port(container, int(match.group(2)))}"
        elif value.isdigit() and int(value) in own_ports and name.endswith("_PORT"):
            value = str(self.local_port(container, int(value)))
        elif value in WILDCARD_HOSTS and value:
            value = "127.0.0.1"
        value = self._path(value, self._mounts(container))
        leftover = service_refs(value, self.rendered)
        assert not leftover, f"{container.name}: {name}={value} still names in-cluster Services {leftover}"
        assert not re.search(r"(^|[^0-9])0\.0\.0\.0", value), (
            f"{container.name}: {name}={value} was not rewritten"
        )
        return value

    # ----------------------------------------------------------------- processes

    def process(self, container: Container, tag: str = "") -> Process:
        """The local process for a container: command, environment, working directory."""
        mounts = self._mounts(container)
        env = {key: os.environ[key] for key in _PROCESS_ENV_KEEP if key in os.environ}
        image_env = dict(self.image.env)
        bin_dir = str(Path(sys.executable).parent)
        image_env["PATH"] = os.pathsep.join([bin_dir, "/usr/local/bin", "/usr/bin", "/bin"])
        image_env["HOME"] = str(self.root / "nonexistent-home")  # the image user's home does not exist
        for key, value in image_env.items():
            env[key] = value if key in ("PATH", "HOME") else self._image_path(container, value, mounts)
        for key, value in container.env.items():
            env[key] = self.rewrite(container, key, value)
        # Map the manifest's own paths first: this interpreter's path must never be rewritten
        # (a checkout under /tmp would otherwise land in the pod's /tmp volume).
        command = [
            self._path(part, mounts) for part in container.spec.get("command") or self.image.entrypoint
        ]
        args = [self.rewrite(container, "args", arg) for arg in container.spec.get("args") or []]
        if command[0] == "switchboard":
            command = [sys.executable, "-m", "services.cli", *command[1:]]
        elif command[0] in ("python", "python3"):
            command = [sys.executable, *command[1:]]
        workdir = Path(self._image_path(container, self.image.workdir, mounts))
        name = f"{container.workload['metadata']['name']}.{container.spec['name']}{tag}"
        process = Process(container, [*command, *args], env, workdir, self.root / f"{name}.log")
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            process.kill()


# --------------------------------------------------------------------------- probes


def probe_once(cluster: LocalCluster, container: Container, probe: Obj) -> str | None:
    """Run a Kubernetes probe against the local process; None on success, else the reason."""
    timeout = float(probe.get("timeoutSeconds", 1))
    if "grpc" in probe:
        port = cluster.local_port(container, probe["grpc"]["port"])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            request = health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", ""))
            try:
                reply = check(request, timeout=timeout)
            except grpc.RpcError as error:
                return f"gRPC health: {error}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return None
    if "httpGet" in probe:
        port = cluster.local_port(container, probe["httpGet"]["port"])
        url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return None if 200 <= response.status < 400 else f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}"
        except OSError as error:
            return f"HTTP: {error}"
    if "tcpSocket" in probe:
        port = cluster.local_port(container, probe["tcpSocket"]["port"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout):
                return None
        except OSError as error:
            return f"TCP: {error}"
    raise AssertionError(f"{container.name}: probe {probe} cannot be rehearsed")


def wait_probe(cluster: LocalCluster, process: Process, kind: str, deadline_s: float) -> float:
    """Poll a container's probe until it passes; returns the seconds it took."""
    probe = process.container.spec[kind]
    started = time.monotonic()
    reason: str | None = "not tried"
    while time.monotonic() - started < deadline_s:
        if not process.running():
            raise AssertionError(f"{process.container.name} exited:\n{process.logs()}")
        reason = probe_once(cluster, process.container, probe)
        if reason is None:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{process.container.name}: {kind} still failing ({reason}):\n{process.logs()}")


def make_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="switchboard-k8s-rehearsal-"))
