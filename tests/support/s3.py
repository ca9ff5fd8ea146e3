"""A real S3 endpoint for tests: moto's S3 server as a child process on a loopback port.

No MinIO binary can be installed on these machines, so tests that need object storage talk to
`moto_server` through the real `minio` SDK and plain HTTP. moto keeps everything in memory, accepts
any credentials and does not check presigned signatures or expiry (test those offline).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
