"""E-mail notifications: subscriptions, and the alert outbox carrying e-mail too (a
transport and an event per row; rows not about an alert have no alert id).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_subscriptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("recipients", sa.JSON, nullable=False),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("app", sa.String(100), nullable=True),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
    )
    with op.batch_alter_table("alert_deliveries") as batch:
        batch.alter_column("alert_id", existing_type=sa.Integer, nullable=True)
        batch.add_column(sa.Column("transport", sa.String(20), nullable=False,
                                   server_default="webhook"))
        batch.add_column(sa.Column("event", sa.String(40), nullable=False,
                                   server_default="alert.opened"))


def downgrade() -> None:
    op.execute("DELETE FROM alert_deliveries WHERE alert_id IS NULL")
    with op.batch_alter_table("alert_deliveries") as batch:
        batch.drop_column("event")
        batch.drop_column("transport")
        batch.alter_column("alert_id", existing_type=sa.Integer, nullable=False)
    op.drop_table("notification_subscriptions")
