"""One leader among controller replicas, for the loops that must run once (rollouts, power).

PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) on a connection held
for as long as this replica leads. If the replica dies, its connection goes and the lock
with it; another replica's next try takes it. The leader checks its connection on every
tick, so a replica that lost the database stops leading at once.

SQLite: one replica only (one database file on one machine), which is always the leader;
`fleetgen serve` says so in its log.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

LEADER_LOCK = 0x666C6701  # pg advisory lock key of the controller's leader


class Leadership:
    def __init__(self, engine: Engine, key: int = LEADER_LOCK) -> None:
        self.engine = engine
        self.key = key
        self._conn: Connection | None = None
        self.single = engine.dialect.name != "postgresql"

    @property
    def leading(self) -> bool:
        return self.single or self._conn is not None

    def check(self) -> bool:
        """Try to become (or stay) the leader; True while this replica leads."""
        if self.single:
            return True
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError as e:
                log.error("leader: lost the database connection (%s); no longer leading", e)
                self._drop()
                return False
        try:
            conn = self.engine.connect()
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            conn.commit()
        except SQLAlchemyError as e:
            log.warning("leader: cannot try the lock (%s)", e)
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        log.info("leader: this replica now runs rollouts and power allocation")
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None
