"""Per-device operator actions: a server-side channel override, a check-in asked for,
and removal (token revoked, history kept).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("channel_override", sa.String(100), nullable=True))
        batch.add_column(sa.Column("check_requested_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("removed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("removed_at")
        batch.drop_column("check_requested_at")
        batch.drop_column("channel_override")
