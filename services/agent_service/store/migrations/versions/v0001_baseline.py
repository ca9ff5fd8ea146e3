"""Baseline: threads, items and feedback, the schema of the first (pre-Alembic) SQLite store.

Every object is created with IF NOT EXISTS so that a SQLite file written by that first store, which
has exactly these tables and indexes but no `alembic_version`, is adopted as it is.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    timestamp = sa.DateTime(timezone=True).with_variant(sa.Text(), "sqlite")
    op.create_table(
        "threads",
        sa.Column("seq", seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.UniqueConstraint("id", name="threads_id_key"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("threads_by_owner", "threads", ["tenant", "owner", "seq"], if_not_exists=True)
    op.create_table(
        "items",
        sa.Column("seq", seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("thread_seq", seq, sa.ForeignKey("threads.seq", ondelete="CASCADE"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.UniqueConstraint("id", name="items_id_key"),
        sqlite_autoincrement=True,
        if_not_exists=True,
    )
    op.create_index("items_by_thread", "items", ["thread_seq", "seq"], if_not_exists=True)
    op.create_table(
        "feedback",
        sa.Column("item_seq", seq, sa.ForeignKey("items.seq", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("created_at", timestamp, nullable=False),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_index("items_by_thread", table_name="items")
    op.drop_table("items")
    op.drop_index("threads_by_owner", table_name="threads")
    op.drop_table("threads")
