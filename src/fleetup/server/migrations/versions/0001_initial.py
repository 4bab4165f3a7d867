"""The initial schema: tokens, channels, devices, events, releases, rollouts, audit, leases.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "operator_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("max_uses", sa.Integer, nullable=True),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    channels = op.create_table(
        "channels",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    now = datetime.now(UTC)
    op.bulk_insert(channels, [
        {"name": "stable", "description": "General availability", "created_at": now},
        {"name": "beta", "description": "Early adopters", "created_at": now},
        {"name": "canary", "description": "First to get every release", "created_at": now},
    ])
    op.create_table(
        "devices",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("app", sa.String(100), nullable=False, index=True),
        sa.Column("platform", sa.String(100), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("version", sa.String(100), nullable=True),
        sa.Column("state", sa.String(40), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("enrolled_at", _TS, nullable=False),
        sa.Column("last_seen", _TS, nullable=True),
    )
    op.create_table(
        "events",
        sa.Column("device_id", sa.String(128),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("version", sa.String(100), nullable=True),
        sa.Column("from_version", sa.String(100), nullable=True),
        sa.Column("update_id", sa.String(100), nullable=True),
        sa.Column("rollout_id", sa.Integer, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_device_received", "events", ["device_id", "received_at"])
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("platform", sa.String(100), nullable=False),
        sa.Column("target_path", sa.String(400), nullable=False, unique=True),
        sa.Column("length", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("channels", sa.JSON, nullable=False),
        sa.Column("update_type", sa.String(20), nullable=False),
        sa.Column("yanked", sa.Boolean, nullable=False),
        sa.Column("published", sa.String(40), nullable=False),
        sa.Column("targets_version", sa.Integer, nullable=False),
        sa.Column("pushed_at", _TS, nullable=False),
        sa.UniqueConstraint("app", "version", "platform"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("app", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("group_filter", sa.JSON, nullable=False),
        sa.Column("stages", sa.JSON, nullable=False),
        sa.Column("stage_index", sa.Integer, nullable=False),
        sa.Column("stage_started_at", _TS, nullable=False),
        sa.Column("soak_seconds", sa.Integer, nullable=False),
        sa.Column("min_reports", sa.Integer, nullable=False),
        sa.Column("max_failure_rate", sa.Float, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=False),
        sa.Column("rollback", sa.Boolean, nullable=False),
        sa.Column("base_reports", sa.Integer, nullable=False),
        sa.Column("base_failures", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
    )
    op.create_index("uq_rollouts_open", "rollouts", ["app", "channel"], unique=True,
                    sqlite_where=sa.text("state IN ('active', 'paused')"),
                    postgresql_where=sa.text("state IN ('active', 'paused')"))
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", _TS, nullable=False, index=True),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(60), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(60), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("leases", "audit_log", "rollouts", "releases", "events", "devices",
                  "channels", "enrollment_tokens", "operator_tokens"):
        op.drop_table(table)
