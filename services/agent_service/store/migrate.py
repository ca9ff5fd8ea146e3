"""Schema migrations (Alembic, run programmatically) and the schema check every store does at startup.

Policy:
- `switchboard migrate` upgrades any store to the newest revision (`upgrade`). On PostgreSQL it
  first takes a transaction-level advisory lock, so several replicas or init jobs running it at once
  apply each migration exactly once, and the whole upgrade is one transaction (PostgreSQL's DDL is
  transactional): it either completes or leaves the schema as it was.
- services on PostgreSQL never migrate by themselves: `check` refuses an older schema with a message
  naming the command to run, so a rolling deployment cannot have replicas racing to change a shared
  schema, and the operator decides when it changes (a Job or an init container).
- the embedded SQLite store belongs to one process, so it migrates itself at startup (one command
  runs everything on one machine); `switchboard dev` also runs `switchboard migrate` first.
- a schema NEWER than this code (a revision it does not know: a rollback after an upgrade) is refused
  on both backends: this code cannot know what the newer schema means.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.agent_service.store.base import SchemaError

log = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).with_name("migrations")
MIGRATE_COMMAND: Final = "switchboard migrate"
_PG_LOCK_KEY: Final = 0x5357_4254_4D49_4752  # "SWBTMIGR": the advisory lock `migrate` holds


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:  # pragma: no cover - the package always ships its revisions
        raise RuntimeError(f"no migrations in {MIGRATIONS}")
    return head


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(_config(connection), revision)


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


async def _lock(connection: AsyncConnection) -> None:
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply the migrations up to `revision` in one transaction; returns (before, after)."""
    async with engine.begin() as connection:
        await _lock(connection)
        before = await connection.run_sync(_current)
        if before is not None and not _known(before):
            raise _newer(before, redacted(str(engine.url)))
        await connection.run_sync(_upgrade, revision)
        after = await connection.run_sync(_current)
    if before != after:
        log.info(
            "database %s: schema upgraded from %s to %s",
            redacted(str(engine.url)),
            before or "nothing",
            after,
        )
    return before, after


def _known(revision: str) -> bool:
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def _newer(current: str, where: str) -> SchemaError:
    return SchemaError(
        f"the database {where} has schema revision {current}, which this version of Switchboard "
        f"does not know (its newest is {head_revision()}): a newer version migrated it; run that "
        "version (or a newer one)"
    )


async def check(engine: AsyncEngine) -> None:
    """Raise SchemaError unless the database is at the newest revision this code knows."""
    where = redacted(str(engine.url))
    current = await current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is not None and not _known(current):
        raise _newer(current, where)
    state = f"is at schema revision {current}" if current else "has no Switchboard schema yet"
    raise SchemaError(
        f"the database {where} {state}, and this version of Switchboard needs revision {head}: "
        f"run `{MIGRATE_COMMAND}` (with the same SWITCHBOARD_DATABASE_URL) before starting the services"
    )
