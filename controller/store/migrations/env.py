"""Alembic environment: run by controller.store.migrate with a live connection."""

from __future__ import annotations

from alembic import context

from controller.store import tables  # noqa: F401  (registers the fleet tables on Base)
from controller.store.core import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
