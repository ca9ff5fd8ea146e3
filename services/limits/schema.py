"""The limits' and usage accounting's tables, in the database the threads are in.

They are created by the same migrations as the threads (`services/agent_service/store/migrations`,
revision 0003); a unit test checks that this module and the migrations agree. Layout and why:

- `tenant_limits`: one row per tenant with overrides; a NULL column follows the default.
- `rate_buckets`: one token bucket per user (tokens left, last refill by the database's clock),
  updated by one atomic UPSERT per request.
- `usage_daily`: the accounting, one row per (UTC day, tenant, user, model); `model` is '' on the
  row that counts conversations, turns, tool calls and uploaded bytes, and names the model on the
  rows that count its tokens. Rows are only ever incremented, in the transactions that store what
  produced the usage.
- `tenant_tokens`: a tenant's tokens of the day in one row, so checking the budget is one read
  however many users and models the tenant has (kept in the same transactions as `usage_daily`).
- `tenant_storage`: the attachment bytes a tenant keeps stored now.
- `audit_log`: every change made through the admin service or the CLI: who, when, what.
Running responses are counted from `run_leases` (its `tenant` and `owner` columns): a run's slot is
its lease, renewed while it runs, deleted when it ends, expired within the lease TTL when its
replica crashed.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, Column, Double, Index, Integer, MetaData, PrimaryKeyConstraint, Table, Text

metadata = MetaData()

COUNTER: Final = BigInteger().with_variant(Integer(), "sqlite")

tenant_limits = Table(
    "tenant_limits",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("runs_per_user", COUNTER),
    Column("runs_per_tenant", COUNTER),
    Column("requests_per_minute", COUNTER),
    Column("request_burst", COUNTER),
    Column("tokens_per_day", COUNTER),
    Column("upload_bytes_per_day", COUNTER),
    Column("stored_bytes", COUNTER),
    Column("updated_at", Double, nullable=False),
)

rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("tenant", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("tokens", Double, nullable=False),
    Column("updated_at", Double, nullable=False),
    PrimaryKeyConstraint("tenant", "owner", name="rate_buckets_pkey"),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("conversations", COUNTER, nullable=False, server_default="0"),
    Column("turns", COUNTER, nullable=False, server_default="0"),
    Column("tool_calls", COUNTER, nullable=False, server_default="0"),
    Column("uploaded_bytes", COUNTER, nullable=False, server_default="0"),
    Column("input_tokens", COUNTER, nullable=False, server_default="0"),
    Column("output_tokens", COUNTER, nullable=False, server_default="0"),
    PrimaryKeyConstraint("day", "tenant", "owner", "model", name="usage_daily_pkey"),
    Index("usage_daily_by_tenant", "tenant", "day"),
)

tenant_tokens = Table(
    "tenant_tokens",
    metadata,
    Column("tenant", Text, nullable=False),
    Column("day", Text, nullable=False),
    Column("tokens", COUNTER, nullable=False),
    PrimaryKeyConstraint("tenant", "day", name="tenant_tokens_pkey"),
)

tenant_storage = Table(
    "tenant_storage",
    metadata,
    Column("tenant", Text, primary_key=True),
    Column("stored_bytes", COUNTER, nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", COUNTER, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("actor_tenant", Text, nullable=False),
    Column("actor_user", Text, nullable=False),
    Column("actor_role", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Index("audit_log_by_tenant", "tenant", "seq"),
    sqlite_autoincrement=True,
)
