"""A real PostgreSQL server for tests: a throwaway cluster on a free loopback port.

`shared_postgres()` starts one cluster per test session, lazily, the first time a test asks for it,
and stops it (and deletes its files) when the session's interpreter exits; each test then takes its
own database with `create_database()`, so tests never see each other's rows. Tests that stop or
restart the server itself start a private `PostgresCluster` instead.

The server binaries come from the machine (`/usr/lib/postgresql/<version>/bin`, Debian's
`postgresql` package, or `pg_ctl` on the PATH). `initdb` refuses to run as root, so as root every
server command runs as the `postgres` user through `runuser`. When the binaries are missing, tests
fail with a message that says what to install: PostgreSQL is part of what the suite proves, so it is
never silently skipped.

The cluster is tuned for tests, not durability: `fsync=off`, `synchronous_commit=off`,
`full_page_writes=off`, no WAL archiving, trust auth on 127.0.0.1 only. `durable=True` (the
benchmark's clusters) keeps PostgreSQL's durable defaults for those three instead, as a production
server runs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

SEARCH_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
START_TIMEOUT_S = 30


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the cluster could not start."""


def find_binaries() -> Path:
    """The directory holding `initdb` and `pg_ctl` (the newest installed version)."""
    for directory in SEARCH_DIRS:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    on_path = shutil.which("pg_ctl")
    if on_path and (Path(on_path).parent / "initdb").exists():
        return Path(on_path).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found in /usr/lib/postgresql/*/bin or on "
        "the PATH. The store and scale-out tests need a real server: install it with "
        "`apt-get install -y postgresql` (Debian/Ubuntu)."
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(command: list[str]) -> list[str]:
    """Run as the `postgres` user when we are root (initdb and postgres refuse to run as root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PostgresCluster:
    """One throwaway cluster: `start()`, `stop()`, `restart()`, `create_database()`, `remove()`."""

    def __init__(self, port: int | None = None, *, durable: bool = False) -> None:
        self.bin = find_binaries()
        self.durable = durable
        self.port = port or _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="switchboard-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._lock = threading.Lock()
        self._initialised = False

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for the services (`SWITCHBOARD_DATABASE_URL`)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, command: list[str], what: str) -> None:
        result = subprocess.run(_as_postgres(command), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"PostgreSQL {what} failed ({result.returncode}):\n{result.stdout}{result.stderr}\n{log}"
            )

    def start(self) -> None:
        with self._lock:
            if not self._initialised:
                self._run(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--no-locale",
                        "--no-sync",
                    ],
                    "initdb",
                )
                self._initialised = True
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            self._run(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "-o",
                    options,
                    "start",
                ],
                "start",
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: disconnect clients and shut down cleanly; `immediate`: crash)."""
        with self._lock:
            if (self.data / "postmaster.pid").exists():
                self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, prefix: str = "t", *, template: str | None = None) -> str:
        """A new database (empty, or a copy of the database named `template`, which nobody may be
        connected to); returns its `SWITCHBOARD_DATABASE_URL`."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        self._run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q",
             "-d", "postgres", "-c", sql],
            "CREATE DATABASE",
        )  # fmt: skip
        return self.url(name)

    def psql(self, database_url: str, sql: str) -> str:
        """Run SQL with psql (unaligned, tuples only) and return its output, for assertions."""
        database = database_url.rsplit("/", 1)[1]
        result = subprocess.run(
            _as_postgres(
                [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                 "-d", database, "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]
            ),
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def remove(self) -> None:
        with suppress(PostgresUnavailable):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _find_psql(cluster: PostgresCluster) -> None:
    if not (cluster.bin / "psql").exists():
        raise PostgresUnavailable(f"psql is missing from {cluster.bin}: install the `postgresql` package")


_SHARED: PostgresCluster | None = None
_SHARED_LOCK = threading.Lock()


def shared_postgres() -> PostgresCluster:
    """The session's cluster, started on first use and removed when the interpreter exits."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            cluster = PostgresCluster()
            _find_psql(cluster)
            started = time.monotonic()
            try:
                cluster.start()
            except BaseException:
                cluster.remove()
                raise
            atexit.register(cluster.remove)
            _SHARED = cluster
            print(f"\nPostgreSQL test cluster on port {cluster.port} ({time.monotonic() - started:.1f} s)")
        return _SHARED


@contextmanager
def private_postgres(*, durable: bool = False) -> Iterator[PostgresCluster]:
    """A cluster of one's own (for tests that stop or restart the server, and the benchmark),
    removed afterwards; `durable`: PostgreSQL's durable defaults instead of the tests' settings."""
    cluster = PostgresCluster(durable=durable)
    _find_psql(cluster)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()
