"""Alembic's entry point: run the migrations on the connection `store/migrate.py` hands over.

Switchboard runs Alembic programmatically (`switchboard migrate`, and the embedded SQLite store at
startup), never through `alembic.ini`: the caller opens the (async) engine, takes a lock where the
database has one, and passes its synchronous connection facade in `config.attributes["connection"]`.
Everything then happens in that caller's transaction, so on PostgreSQL (transactional DDL) a failed
upgrade leaves no half-migrated schema.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from services.agent_service.store.schema import metadata
from services.limits.schema import metadata as limits_metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the migrations with `switchboard migrate`, not with the alembic command")

context.configure(
    connection=connection,
    target_metadata=[metadata, limits_metadata],
    # SQLite cannot ALTER most things in place: batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
