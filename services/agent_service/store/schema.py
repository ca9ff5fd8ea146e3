"""The store's tables as SQLAlchemy Core objects, shared by the SQLite and PostgreSQL stores.

This module describes the schema at the newest migration; the migrations in `migrations/versions/`
create it (a unit test checks that the two agree). Layout and why:

- `threads` and `items` get a `seq` (BIGSERIAL on PostgreSQL, SQLite's rowid with AUTOINCREMENT) that
  fixes insertion order. Paging is a range scan on `(tenant, owner, seq)` for threads and
  `(thread_seq, seq)` for items: newest-first thread lists and oldest-first item pages never sort
  rows, and an id cursor is one unique-index lookup. Insertion order is the time order, without the
  ties and clock skew of timestamps written by several replicas.
- ChatKit's JSON is kept as TEXT in `data`, byte for byte what was written (JSONB would re-order keys
  and cost a parse on every write; nothing queries inside it).
- `feedback` cascades with its item, items cascade with their thread (one DELETE removes a thread
  and everything in it, in one transaction).
- `run_leases` holds the per-thread run lease: one row per busy thread, its holder token and an
  expiry in seconds since the epoch by the database's clock (so replicas' clocks do not matter),
  and the thread's tenant and owner: a lease is also the run's slot, counted by the concurrency
  limits (`services/limits/`).

The limits' and usage accounting's tables are in `services/limits/schema.py` (same database,
same migrations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class Timestamp(TypeDecorator[datetime]):
    """`timestamptz` on PostgreSQL; ISO-8601 text on SQLite (the format the first SQLite store used)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is not None and dialect.name == "sqlite":
            return value.isoformat()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        return value  # type: ignore[no-any-return]


SEQ: Final = BigInteger().with_variant(Integer(), "sqlite")
"""Row order: BIGINT on PostgreSQL; INTEGER on SQLite, where only `INTEGER PRIMARY KEY` is the rowid."""

metadata = MetaData()

threads = Table(
    "threads",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("id", name="threads_id_key"),
    Index("threads_by_owner", "tenant", "owner", "seq"),
    sqlite_autoincrement=True,
)

items = Table(
    "items",
    metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("id", Text, nullable=False),
    Column("thread_seq", SEQ, ForeignKey("threads.seq", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    Column("data", Text, nullable=False),
    UniqueConstraint("id", name="items_id_key"),
    Index("items_by_thread", "thread_seq", "seq"),
    sqlite_autoincrement=True,
)

feedback = Table(
    "feedback",
    metadata,
    Column("item_seq", SEQ, ForeignKey("items.seq", ondelete="CASCADE"), primary_key=True),
    Column("kind", Text, nullable=False),
    Column("created_at", Timestamp(), nullable=False),
)

run_leases = Table(
    "run_leases",
    metadata,
    Column("thread_id", Text, primary_key=True),
    Column("holder", Text, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("tenant", Text),
    Column("owner", Text),
    Index("run_leases_by_owner", "tenant", "owner"),
)
