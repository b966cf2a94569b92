"""The update journal: the one on-disk truth of the lifecycle (STATE/update/journal.json).

Each state the machine produces is written here (temp file, fsync, rename, fsync dir)
before any of its actions run, so after a power cut the journal names the step to finish
or undo. A journal that cannot be read is moved aside (counted, logged) and the agent
starts from idle: what `current` names keeps running, and the next director document
starts over.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

from agent.fsutil import atomic_write, ensure_private_dir
from agent.update.machine import UpdateState

log = logging.getLogger(__name__)

MAX_JOURNAL_BYTES = 64 * 1024


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "update"
        self.path = self.dir / "journal.json"
        self.corrupt_count = 0
        # Test hook (fault injection for the kill -9 tests): SIGKILL this process right
        # after the journal records the named phase. Unset in production.
        self._crash_after = os.environ.get("FLEETGEN_CRASH_AFTER_PHASE")

    def load(self) -> UpdateState:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return UpdateState()
        try:
            if len(data) > MAX_JOURNAL_BYTES:
                raise msgspec.DecodeError(f"{len(data)} bytes")
            return msgspec.json.decode(data, type=UpdateState)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.corrupt_count += 1
            aside = self.path.with_name(f"journal.corrupt-{int(time.time())}.json")
            os.replace(self.path, aside)
            log.error("update journal %s unreadable (%s); moved to %s, starting from idle",
                      self.path, e, aside.name)
            return UpdateState()

    def save(self, state: UpdateState) -> None:
        ensure_private_dir(self.dir)
        atomic_write(self.path, msgspec.json.encode(state))
        if self._crash_after is not None and state.phase == self._crash_after:
            import signal

            log.warning("fault injection: SIGKILL after journaling %s", state.phase)
            os.kill(os.getpid(), signal.SIGKILL)
