"""The control-group health gate of a rollout and what its halt does.

``max_failure_increase`` (None: no gate) and ``confidence`` configure the one-sided
two-proportion test of ``server._gate``; ``on_halt`` is ``pause`` (as before) or
``rollback`` (a halt is followed by an abort with rollback). Existing rollouts keep
their behaviour: no gate, a halt pauses.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("max_failure_increase", sa.Float, nullable=True))
        batch.add_column(sa.Column("confidence", sa.Float, nullable=False,
                                   server_default="0.95"))
        batch.add_column(sa.Column("on_halt", sa.String(20), nullable=False,
                                   server_default="pause"))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("on_halt")
        batch.drop_column("confidence")
        batch.drop_column("max_failure_increase")
