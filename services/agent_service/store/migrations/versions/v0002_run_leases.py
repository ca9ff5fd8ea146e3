"""Run leases: at most one run per thread across every replica that shares the database.

One row per busy thread: the holder's token and the expiry in seconds since the epoch by the
database's clock. A crashed holder's row simply expires; nothing needs to clean it up.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "run_leases",
        sa.Column("thread_id", sa.Text(), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("run_leases")
