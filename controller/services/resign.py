"""Keeping the online roles fresh: re-sign snapshot/timestamp on a schedule.

Devices refuse a timestamp past its expiry (default lifetime 1 day), so the controller
re-signs it well before: `ResignSchedule` calls `Repository.resign_online()` every
`interval_s` (default 5 minutes), which re-signs once half the lifetime is gone.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from agent.errors import FleetgenError

log = logging.getLogger(__name__)


class ResignSchedule:
    def __init__(self, repo_dir: Path, interval_s: float = 300.0) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._repo_dir = Path(repo_dir)
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tuf-resign", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def tick(self) -> list[str]:
        from controller.tuf.repository import Repository

        done = Repository(self._repo_dir).resign_online()
        if done:
            log.info("re-signed %s", ", ".join(done))
        return done

    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except (FleetgenError, OSError) as e:  # keep trying; the next tick may succeed
                log.error("re-signing the online roles failed: %s", e)
            if self._stop.wait(self._interval):
                return
