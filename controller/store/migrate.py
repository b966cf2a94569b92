"""Schema migrations (Alembic), run programmatically: `fleetgen db upgrade`, and by
`fleetgen serve` at start.

The scripts live in controller/store/migrations/ and are written by hand, one per schema
change, the same for SQLite and PostgreSQL. A database created before migrations existed
(tables present, no `alembic_version`) is stamped at the first revision, which is exactly
that schema, and then upgraded. On PostgreSQL the upgrade holds an advisory lock, so
replicas starting together migrate once; on SQLite the database file's write lock (BEGIN
IMMEDIATE) does the same.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).with_name("migrations")
BASELINE = "0001"
_MIGRATION_LOCK = 0x666C6700  # "flg\0": pg_advisory_lock key of schema upgrades


def _config(connection: Connection):  # -> alembic.config.Config (imported lazily)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    rev = ScriptDirectory.from_config(cfg).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to `revision`; returns the revision now in force."""
    from alembic import command

    from controller.store.core import StoreError

    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            else:
                # Take SQLite's write lock now, so a second process waits here (busy_timeout),
                # not half-way. pysqlite begins no transaction before DDL by itself, so without
                # this two processes opening a new file both ran the first revision and the
                # second failed on alembic_version's primary key.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
                connection.execute(text("CREATE TABLE IF NOT EXISTS _fleetgen_migrate_lock (x INTEGER)"))
            cfg = _config(connection)
            names = set(inspect(connection).get_table_names())
            if "devices" in names and "alembic_version" not in names:
                log.info("database predates migrations: stamping it at %s", BASELINE)
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, revision)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot migrate database {engine.url!r}: {e}") from e
    return current(engine)
