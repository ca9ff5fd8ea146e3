"""Schema migrations on both backends: PostgreSQL refuses an old schema until `switchboard migrate`,
SQLite migrates itself (and adopts files of the first, pre-Alembic store), nobody runs on a schema
newer than it knows, and the migrations build exactly the tables the store's queries use."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE, STDOUT

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from chatkit.types import ThreadMetadata
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from services.agent_service.store import PostgresStore, SchemaError, SqliteStore, SqlStore
from services.agent_service.store import migrate as migrations
from services.agent_service.store.schema import metadata
from services.common.auth import Principal
from services.common.ids import new_id
from services.limits.schema import metadata as limits_metadata
from tests.support.postgres import shared_postgres

ALICE = Principal(tenant="acme", user="alice", role="user")
HEAD = migrations.head_revision()

# What the first SQLite store created at startup, before Alembic.
LEGACY_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    owner      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS threads_by_owner ON threads (tenant, owner, seq);
CREATE TABLE IF NOT EXISTS items (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    thread_seq INTEGER NOT NULL REFERENCES threads (seq) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_thread ON items (thread_seq, seq);
CREATE TABLE IF NOT EXISTS feedback (
    item_seq   INTEGER NOT NULL REFERENCES items (seq) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (item_seq)
);
"""


@pytest.fixture
async def pg_url() -> str:
    return await asyncio.to_thread(shared_postgres().create_database, "migrations")


async def _set_revision(store: SqlStore, revision: str) -> None:
    """Pretend the database was migrated to `revision` (for the 'newer than this code' case)."""
    engine = store._create_engine()
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    await engine.dispose()


async def test_postgres_refuses_an_old_schema_until_migrated(pg_url: str) -> None:
    with pytest.raises(SchemaError) as caught:
        await PostgresStore(pg_url).open()
    assert "has no Switchboard schema yet" in str(caught.value)
    assert "`switchboard migrate`" in str(caught.value)

    assert await PostgresStore(pg_url).migrate("0001") == (None, "0001")
    with pytest.raises(SchemaError) as caught:
        await PostgresStore(pg_url).open()
    message = str(caught.value)
    assert f"is at schema revision 0001, and this version of Switchboard needs revision {HEAD}" in message
    assert "`switchboard migrate`" in message

    assert await PostgresStore(pg_url).migrate() == ("0001", HEAD)
    assert await PostgresStore(pg_url).migrate() == (HEAD, HEAD), "migrating again is a no-op"
    store = PostgresStore(pg_url)
    await store.open()
    await store.create_thread(ALICE, ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC)))
    await store.close()


async def test_concurrent_migrations_apply_once(pg_url: str) -> None:
    """Several replicas' init jobs at once: the advisory lock serialises them."""
    results = await asyncio.gather(*(PostgresStore(pg_url).migrate() for _ in range(4)))
    assert sorted(results, key=str) == sorted([(None, HEAD)] + [(HEAD, HEAD)] * 3, key=str)


async def test_the_password_never_appears_in_messages() -> None:
    url = shared_postgres().url("nowhere").replace("postgres@", "postgres:s3cret@")
    assert "s3cret" not in PostgresStore(url).url
    assert "s3cret" not in migrations.redacted(url)


async def test_sqlite_migrates_itself_and_from_any_older_revision(tmp_path: Path) -> None:
    fresh = SqliteStore(tmp_path / "fresh.sqlite3")
    await fresh.open()
    await fresh.close()
    assert await fresh.schema_revision() == HEAD

    old = SqliteStore(tmp_path / "old.sqlite3")
    assert await old.migrate("0001") == (None, "0001")
    await old.open()
    assert await old.acquire_lease("thr_x", "me", ttl_s=5), "0002's table exists now"
    await old.close()
    assert await old.schema_revision() == HEAD


async def test_sqlite_adopts_a_file_of_the_first_store(tmp_path: Path) -> None:
    path = tmp_path / "legacy.sqlite3"
    thread = ThreadMetadata(id=new_id("thr"), created_at=datetime.now(UTC), title="kept")
    with sqlite3.connect(path) as db:
        db.executescript(LEGACY_SQLITE_SCHEMA)
        db.execute(
            "INSERT INTO threads (id, tenant, owner, created_at, data) VALUES (?, ?, ?, ?, ?)",
            (thread.id, "acme", "alice", thread.created_at.isoformat(), thread.model_dump_json()),
        )
    db.close()
    store = SqliteStore(path)
    await store.open()
    assert (await store.load_thread(ALICE, thread.id)).title == "kept"
    await store.close()
    assert await store.schema_revision() == HEAD


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_newer_schema_is_refused(backend: str, tmp_path: Path, pg_url: str) -> None:
    store: SqlStore = SqliteStore(tmp_path / "s.sqlite3") if backend == "sqlite" else PostgresStore(pg_url)
    await store.migrate()
    await _set_revision(store, "9999")
    with pytest.raises(SchemaError) as caught:
        await store.open()
    assert "9999" in str(caught.value) and "newer version" in str(caught.value)
    with pytest.raises(SchemaError):
        await store.migrate()


def _drift(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), [metadata, limits_metadata]))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_migrations_build_exactly_the_schema_the_store_uses(
    backend: str, tmp_path: Path, pg_url: str
) -> None:
    store: SqlStore = SqliteStore(tmp_path / "s.sqlite3") if backend == "sqlite" else PostgresStore(pg_url)
    await store.migrate()
    engine = store._create_engine()
    async with engine.connect() as connection:
        assert await connection.run_sync(_drift) == []
        indexes = await connection.run_sync(
            lambda sync: {
                table: {index["name"] for index in inspect(sync).get_indexes(table)}
                for table in ("threads", "items")
            }
        )
    await engine.dispose()
    assert "threads_by_owner" in indexes["threads"]
    assert "items_by_thread" in indexes["items"]


async def test_postgres_migrations_downgrade_cleanly(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.migrate()
    engine = store._create_engine()
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(migrations._config(sync), "base"))
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    await engine.dispose()
    assert tables == {"alembic_version"}
    assert await store.migrate() == (None, HEAD)


async def test_the_agent_service_refuses_to_start_on_an_old_schema(pg_url: str, tmp_path: Path) -> None:
    """The real process: it exits with status 2 and names the command to run."""
    await PostgresStore(pg_url).migrate("0001")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        "SWITCHBOARD_DATABASE_URL": pg_url,
        "SWITCHBOARD_AGENT_LISTEN": "127.0.0.1:0",
        "SWITCHBOARD_JWT_SECRET": "s" * 40,
        "SWITCHBOARD_DATA_DIR": str(tmp_path),
        "LLM_PROVIDER": "local",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "agent", env=env, stdout=PIPE, stderr=STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2, output.decode()
    assert "is at schema revision 0001" in output.decode()
    assert "run `switchboard migrate`" in output.decode()
