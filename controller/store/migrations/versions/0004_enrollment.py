"""Enrollment (controller/enroll.py): one-time tokens (hashed) and the device certificates issued.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enroll_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("group_name", sa.String(128), nullable=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("used", sa.Float, nullable=True),
    )
    op.create_index("ix_enroll_tokens_device_id", "enroll_tokens", ["device_id"])
    op.create_table(
        "device_certs",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("issued", sa.Float, nullable=False),
        sa.Column("not_after", sa.Float, nullable=False),
        sa.Column("revoked", sa.Float, nullable=True),
    )
    op.create_index("ix_device_certs_device_id", "device_certs", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_device_certs_device_id", table_name="device_certs")
    op.drop_table("device_certs")
    op.drop_index("ix_enroll_tokens_device_id", table_name="enroll_tokens")
    op.drop_table("enroll_tokens")
