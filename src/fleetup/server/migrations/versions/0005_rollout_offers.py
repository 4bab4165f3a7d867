"""Record which devices each rollout offered its release to (the only devices whose
reports count towards its health and that an abort with rollback sends back), and give
every device a server-made cohort key (a device must not choose its own cohort by
choosing its id).

Existing devices get a random key, so cohorts of unfinished rollouts are drawn anew;
their offers are rebuilt from the events that show a device took part (what the old
server trusted), so an unfinished rollout keeps the evidence it had.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_TAKING_PART = ("download-started", "download-finished", "staged", "switched",
                "health-passed", "health-failed", "committed")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("cohort_key", sa.String(64), nullable=True))
    bind = op.get_bind()
    devices = sa.table("devices", sa.column("id", sa.String), sa.column("cohort_key",
                                                                      sa.String))
    for (device_id,) in list(bind.execute(sa.select(devices.c.id))):
        bind.execute(devices.update().where(devices.c.id == device_id)
                     .values(cohort_key=secrets.token_hex(16)))
    op.create_table(
        "rollout_offers",
        sa.Column("rollout_id", sa.Integer,
                  sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(128),
                  sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("stage_index", sa.Integer, nullable=False),
        sa.Column("from_version", sa.String(100), nullable=True),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rollout_offers_device_id", "rollout_offers", ["device_id"])
    events = sa.table("events", *(sa.column(c) for c in (
        "rollout_id", "device_id", "type", "from_version", "received_at")))
    rollouts = sa.table("rollouts", sa.column("id"), sa.column("app"), sa.column("channel"))
    devices_full = sa.table("devices", sa.column("id"), sa.column("app"),
                            sa.column("channel"))
    taken = (sa.select(events.c.rollout_id, events.c.device_id, sa.literal(0),
                       sa.func.min(events.c.from_version), sa.func.min(events.c.received_at))
             .join(rollouts, rollouts.c.id == events.c.rollout_id)
             .join(devices_full, devices_full.c.id == events.c.device_id)
             .where(events.c.type.in_(_TAKING_PART), devices_full.c.app == rollouts.c.app,
                    devices_full.c.channel == rollouts.c.channel)
             .group_by(events.c.rollout_id, events.c.device_id))
    offers = sa.table("rollout_offers", *(sa.column(c) for c in (
        "rollout_id", "device_id", "stage_index", "from_version", "offered_at")))
    bind.execute(offers.insert().from_select(
        ["rollout_id", "device_id", "stage_index", "from_version", "offered_at"], taken))


def downgrade() -> None:
    op.drop_index("ix_rollout_offers_device_id", table_name="rollout_offers")
    op.drop_table("rollout_offers")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("cohort_key")
