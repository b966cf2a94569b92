"""Durable sequence numbers: the controller deduplicates telemetry and events by
(device, seq), so a number must never be reused, across restarts included."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

# Numbers are reserved in blocks so that we do not fsync on every message; after a
# crash the unused rest of a block is skipped, which is harmless (gaps are allowed).
_BLOCK = 64


class SequenceCounter:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._next = self._load()
        self._reserved = self._next

    def _load(self) -> int:
        try:
            text = self.path.read_text().strip()
            value = int(text)
            if value < 0:
                raise ValueError(value)
            return value
        except FileNotFoundError:
            return 0
        except (ValueError, OSError) as e:
            # A corrupt counter must not stop the agent; jumping far ahead keeps numbers unique.
            log.warning("sequence file %s unreadable (%s); continuing from a safe high value", self.path, e)
            return 1 << 40

    def next(self) -> int:
        if self._next >= self._reserved:
            self._reserved = self._next + _BLOCK
            atomic_write(self.path, f"{self._reserved}\n".encode())
        value = self._next
        self._next += 1
        return value
