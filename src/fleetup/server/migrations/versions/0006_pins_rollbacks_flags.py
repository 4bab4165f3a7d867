"""One-device rollback orders and pins (with the kept releases a device reports, so a
rollback is refused unless the device keeps that version), and per-app feature flags.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("kept", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("rollback_to", sa.String(100), nullable=True))
        batch.add_column(sa.Column("pinned_version", sa.String(100), nullable=True))
        batch.add_column(sa.Column("rolled_back_from", sa.String(100), nullable=True))
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("app", sa.String(100), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("scope_key", sa.String(200), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("app", "name", "scope", "scope_key"),
    )


def downgrade() -> None:
    op.drop_table("feature_flags")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("rolled_back_from")
        batch.drop_column("pinned_version")
        batch.drop_column("rollback_to")
        batch.drop_column("kept")
