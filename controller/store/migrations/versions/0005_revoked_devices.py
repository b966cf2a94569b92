"""Revoked devices (`fleetgen device revoke`): out of groups, rollouts and director documents.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as t:
        t.add_column(sa.Column("revoked", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as t:
        t.drop_column("revoked")
