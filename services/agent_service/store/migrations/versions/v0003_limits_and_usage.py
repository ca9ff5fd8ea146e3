"""Limits and usage accounting: per-tenant overrides, request buckets, daily usage, stored bytes,
the audit log; run leases learn their thread's tenant and owner (a lease is a run's slot).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

COUNTER = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("run_leases") as batch:
        batch.add_column(sa.Column("tenant", sa.Text(), nullable=True))
        batch.add_column(sa.Column("owner", sa.Text(), nullable=True))
        batch.create_index("run_leases_by_owner", ["tenant", "owner"])
    op.create_table(
        "tenant_limits",
        sa.Column("tenant", sa.Text(), primary_key=True),
        *(
            sa.Column(name, COUNTER, nullable=True)
            for name in (
                "runs_per_user",
                "runs_per_tenant",
                "requests_per_minute",
                "request_burst",
                "tokens_per_day",
                "upload_bytes_per_day",
                "stored_bytes",
            )
        ),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )
    op.create_table(
        "rate_buckets",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "owner", name="rate_buckets_pkey"),
    )
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        *(
            sa.Column(name, COUNTER, nullable=False, server_default="0")
            for name in (
                "conversations",
                "turns",
                "tool_calls",
                "uploaded_bytes",
                "input_tokens",
                "output_tokens",
            )
        ),
        sa.PrimaryKeyConstraint("day", "tenant", "owner", "model", name="usage_daily_pkey"),
    )
    op.create_index("usage_daily_by_tenant", "usage_daily", ["tenant", "day"])
    op.create_table(
        "tenant_tokens",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("day", sa.Text(), nullable=False),
        sa.Column("tokens", COUNTER, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "day", name="tenant_tokens_pkey"),
    )
    op.create_table(
        "tenant_storage",
        sa.Column("tenant", sa.Text(), primary_key=True),
        sa.Column("stored_bytes", COUNTER, nullable=False),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", COUNTER, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("actor_tenant", sa.Text(), nullable=False),
        sa.Column("actor_user", sa.Text(), nullable=False),
        sa.Column("actor_role", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("audit_log_by_tenant", "audit_log", ["tenant", "seq"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "tenant_storage",
        "tenant_tokens",
        "usage_daily",
        "rate_buckets",
        "tenant_limits",
    ):
        op.drop_table(table)
    with op.batch_alter_table("run_leases") as batch:
        batch.drop_index("run_leases_by_owner")
        batch.drop_column("owner")
        batch.drop_column("tenant")
