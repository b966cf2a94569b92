"""Fleet operations: tags, groups, desired state (director versions), rollouts, power,
downsampled telemetry; 64-bit sequence numbers; the ingest time of events.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as t:
        t.add_column(sa.Column("demand_w", sa.Float, nullable=True))
    with op.batch_alter_table("telemetry") as t:
        t.alter_column("seq", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)
    with op.batch_alter_table("events") as t:
        t.alter_column("seq", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)
        t.add_column(sa.Column("received", sa.Float, nullable=False, server_default="0"))
        t.create_index("ix_events_received", ["received"])
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("tag", sa.String(64), primary_key=True),
    )
    op.create_table(
        "groups",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("budget_w", sa.Float, nullable=True),
    )
    op.create_table(
        "group_rules",
        sa.Column("group", sa.String(64), sa.ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
    )
    op.create_table(
        "desired",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("target", sa.String(512), nullable=True),
        sa.Column("power_budget_w", sa.Float, nullable=True),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("bundle", sa.String(512), nullable=False),
        sa.Column("group", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("waves_spec", sa.String(256), nullable=False),
        sa.Column("max_failure_ratio", sa.Float, nullable=False),
        sa.Column("wave_timeout_s", sa.Float, nullable=False),
        sa.Column("plan", sa.JSON, nullable=False),
        sa.Column("current_wave", sa.Integer, nullable=False),
        sa.Column("wave_started", sa.Float, nullable=True),
        sa.Column("paused_at", sa.Float, nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("previous_target", sa.String(512), nullable=True),
        sa.Column("director_version", sa.BigInteger, nullable=True),
        sa.Column("directed_at", sa.Float, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_table(
        "device_power",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("floor_w", sa.Float, nullable=False),
        sa.Column("cap_w", sa.Float, nullable=True),
    )
    op.create_table(
        "allocations",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("group", sa.String(64), nullable=False, index=True),
        sa.Column("budget_w", sa.Float, nullable=False),
        sa.Column("pushed_at", sa.Float, nullable=False),
    )
    op.create_table(
        "telemetry_rollup",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("bucket", sa.Float, primary_key=True),
        sa.Column("width_s", sa.Float, nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("means", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for table in ("telemetry_rollup", "allocations", "device_power", "rollout_devices", "rollouts",
                  "desired", "group_rules", "groups", "device_tags"):
        op.drop_table(table)
    with op.batch_alter_table("events") as t:
        t.drop_index("ix_events_received")
        t.drop_column("received")
    with op.batch_alter_table("devices") as t:
        t.drop_column("demand_w")
