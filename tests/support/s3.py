"""Real S3 endpoints for tests: SeaweedFS (strict, the default) and moto (lenient, fast).

SeaweedFS (`shared_seaweedfs`, `running_seaweedfs`) checks what MinIO checks: signatures,
credentials, presigned URL expiry. The upload and attachment tests run against it. One server
serves the whole test session (it starts in about a second and stops in two to seven); each stack
or fixture takes a bucket of its own (`S3Server.new_bucket`), so tests never see each other's
objects. When the `weed` binary is missing, the tests that need it fail with a message that says
what to install: strictness is part of what the suite proves, so it is never silently skipped.

moto (`running_s3`) keeps everything in memory, accepts any credentials and does not check
presigned signatures or expiry; it stays for tests where that does not matter (the Kubernetes
rehearsal).
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from minio import Minio

from services.upload_service.embedded_s3 import REGION, SeaweedFS

START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{endpoint}/", timeout=0.5) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as error:
        return error.code < 500  # any S3 answer (even an error document) means it is up
    except OSError:
        return False


def _command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@contextmanager
def running_s3(port: int | None = None) -> Iterator[str]:
    """Start `moto_server` on 127.0.0.1 and yield its endpoint ("127.0.0.1:PORT"); stop it on exit.

    The server's output goes to a temporary log file that is shown if it fails to start.
    """
    port = port or _free_port()
    endpoint = f"127.0.0.1:{port}"
    env = dict(os.environ)
    # moto reads fake credentials from the environment for some services; never real ones.
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(_command(port), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _answers(endpoint):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace")[-4000:]
                    raise RuntimeError(f"moto_server did not start on {endpoint}:\n{output}")
                time.sleep(0.05)
            yield endpoint
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass(frozen=True)
class S3Server:
    """Where an S3 server answers and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self, *, secret_key: str | None = None) -> Minio:
        """A `minio` client for direct access (assertions, seeding); another secret on request."""
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=secret_key or self.secret_key,
            secure=False,
            region=REGION,
        )

    def env(self, bucket: str) -> dict[str, str]:
        """The services' MINIO_* variables for `bucket` on this server."""
        return {
            "MINIO_ENDPOINT": self.endpoint,
            "MINIO_ACCESS_KEY": self.access_key,
            "MINIO_SECRET_KEY": self.secret_key,
            "MINIO_BUCKET": bucket,
        }

    @staticmethod
    def new_bucket(prefix: str = "t") -> str:
        """A bucket name no other test uses (the upload service creates it on start)."""
        return f"{prefix}-{uuid.uuid4().hex[:16]}"


def _as_server(server: SeaweedFS) -> S3Server:
    return S3Server(server.endpoint, server.credentials.access_key, server.credentials.secret_key)


@contextmanager
def running_seaweedfs() -> Iterator[tuple[S3Server, SeaweedFS]]:
    """A private SeaweedFS in a fresh temporary directory (for tests that stop or kill it); removed
    afterwards. Fails with EmbeddedS3Error (what to install) when `weed` is missing."""
    root = Path(tempfile.mkdtemp(prefix="sb-s3-"))
    server = SeaweedFS(root)
    try:
        server.start()
        yield _as_server(server), server
    finally:
        server.kill()  # its files are thrown away: no need to wait for a graceful flush
        shutil.rmtree(root, ignore_errors=True)


_shared: S3Server | None = None
_shared_lock = threading.Lock()


def shared_seaweedfs() -> S3Server:
    """The session's SeaweedFS, started on first use and stopped (files removed) at exit."""
    global _shared
    with _shared_lock:
        if _shared is None:
            root = Path(tempfile.mkdtemp(prefix="sb-s3-"))
            server = SeaweedFS(root)
            try:
                server.start()
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise

            def stop() -> None:
                server.kill()
                shutil.rmtree(root, ignore_errors=True)

            atexit.register(stop)
            _shared = _as_server(server)
        return _shared
