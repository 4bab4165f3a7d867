"""Remember each device's previous version (the target of an operator rollback); index
events by rollout and type (the rollout health query); record replaced device tokens
(each server process drops them from its token cache within seconds).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("previous_version", sa.String(100), nullable=True))
    op.create_index("ix_events_rollout_type", "events", ["rollout_id", "type"])
    op.create_table(
        "revoked_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("revoked_tokens")
    op.drop_index("ix_events_rollout_type", table_name="events")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("previous_version")
