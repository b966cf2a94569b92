"""The registry as `Base.metadata.create_all` made it before migrations: devices,
telemetry, events. Databases from then are stamped at this revision.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("board", sa.String(256), nullable=False),
        sa.Column("agent_version", sa.String(256), nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("status_ts", sa.Float, nullable=False),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("active_bundle", sa.String(256), nullable=True),
        sa.Column("slot", sa.String(64), nullable=True),
        sa.Column("health", sa.String(16), nullable=False),
        sa.Column("desired_version", sa.Integer, nullable=False),
        sa.Column("reported", sa.JSON, nullable=True),
        sa.Column("last_sample", sa.JSON, nullable=True),
    )
    op.create_table(
        "telemetry",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("sample", sa.JSON, nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("telemetry")
    op.drop_table("devices")
