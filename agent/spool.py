"""The durable outbox of telemetry samples and events (STATE/spool.db, SQLite in WAL mode).

Every sample and event is written here first; the daemon sends rows oldest first when
the link is up, and a row leaves the spool only after the controller confirmed storing it
(`dev/{id}/stored`, ADR 0091; a broker's PUBACK is not enough: a SIGKILLed Mosquitto loses
what it acknowledged). A crash or an outage of the broker or the controller loses nothing:
unconfirmed rows are sent again (the controller stores each (device, seq) once).

Bounded in bytes: when full, the oldest samples go first (counted as dropped and reported);
events go only when no sample is left to drop. A spool file SQLite cannot read is moved
aside and a new one started (counted), never a crash.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Kind = Literal["event", "sample"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'sample')),
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Per-row overhead counted against the bound besides the payload (ids, index entries).
_ROW_OVERHEAD = 48


@dataclass(frozen=True)
class Row:
    id: int
    kind: Kind
    payload: bytes


@dataclass(frozen=True)
class SpoolStats:
    rows: int
    bytes: int
    dropped_samples: int
    dropped_events: int
    corrupt_files: int
    added_samples: int = 0
    added_events: int = 0


class Spool:
    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._corrupt = 0
        self._db = self._open()
        self._bytes = self._count_bytes()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # each commit survives a power cut, not only a kill
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM outbox").fetchone()
        db.execute("PRAGMA quick_check").fetchone()
        return db

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                db.close()
                raise sqlite3.DatabaseError(f"quick_check: {check}")
        except sqlite3.DatabaseError as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{aside}{suffix}")
            log.error("spool %s unreadable (%s); moved to %s, starting a new one", self.path, e, aside.name)
            db = self._connect()
            self._corrupt = 1
            self._bump(db, "corrupt_files", 1)
        return db

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, n: int) -> None:
        db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, n))

    def _count_bytes(self) -> int:
        row = self._db.execute("SELECT coalesce(sum(length(payload)), 0), count(*) FROM outbox").fetchone()
        return int(row[0]) + _ROW_OVERHEAD * int(row[1])

    def add(self, kind: Kind, payload: bytes) -> int:
        """Store one sample or event (durable when this returns); returns its row id."""
        size = len(payload) + _ROW_OVERHEAD
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute("INSERT INTO outbox (kind, payload) VALUES (?, ?)", (kind, payload))
                self._bump(self._db, f"added_{kind}s", 1)  # what was ever stored: tests count both sides
                self._bytes += size
                self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = self._count_bytes()
                raise
            return int(cur.lastrowid or 0)

    def _evict(self) -> None:
        """Inside a transaction: drop the oldest samples (then events) until under the bound."""
        while self._bytes > self.max_bytes:
            kind, counter, rows = "", "", []
            for kind, counter in (("sample", "dropped_samples"), ("event", "dropped_events")):  # noqa: B007
                rows = self._db.execute(
                    "SELECT id, length(payload) FROM outbox WHERE kind = ? ORDER BY id LIMIT 64", (kind,)
                ).fetchall()
                if rows:
                    break
            if not rows:
                return
            freed, ids = 0, []
            for rid, n in rows:
                if self._bytes - freed <= self.max_bytes:
                    break
                ids.append(rid)
                freed += int(n) + _ROW_OVERHEAD
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
            self._bump(self._db, counter, len(ids))
            self._bytes -= freed
            log.warning("spool full (%d bytes): dropped the %d oldest %s(s)", self.max_bytes, len(ids), kind)

    def oldest(self, kind: Kind, limit: int, exclude: Iterable[int] = ()) -> list[Row]:
        """Up to `limit` rows of `kind`, oldest first, skipping those in `exclude` (in flight)."""
        skip = set(exclude)
        out: list[Row] = []
        with self._lock:
            cur = self._db.execute("SELECT id, kind, payload FROM outbox WHERE kind = ? ORDER BY id", (kind,))
            for rid, k, payload in cur:
                if rid in skip:
                    continue
                out.append(Row(int(rid), k, bytes(payload)))
                if len(out) >= limit:
                    break
            cur.close()
        return out

    def ack(self, ids: Iterable[int]) -> None:
        """The controller confirmed storing these rows: they leave the spool."""
        ids = list(ids)
        if not ids:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            freed = 0
            for rid in ids:
                row = self._db.execute("SELECT length(payload) FROM outbox WHERE id = ?", (rid,)).fetchone()
                if row is not None:
                    freed += int(row[0]) + _ROW_OVERHEAD
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (rid,))
            self._db.execute("COMMIT")
            self._bytes -= freed

    def stats(self) -> SpoolStats:
        with self._lock:
            rows = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return SpoolStats(rows, self._bytes, int(counters.get("dropped_samples", 0)),
                          int(counters.get("dropped_events", 0)), int(counters.get("corrupt_files", 0)),
                          int(counters.get("added_samples", 0)), int(counters.get("added_events", 0)))

    def close(self) -> None:
        with self._lock:
            self._db.close()
