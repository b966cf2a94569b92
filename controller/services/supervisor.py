"""One supervisor for the controller's services (`fleetgen serve`).

It starts them in order, stops them in reverse, and runs the periodic work: on the leader
(controller.services.leader) the rollout and power loops, everywhere the telemetry
retention. A failing tick is logged and retried on the next one; it never stops the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from agent.errors import FleetgenError
from controller.services.leader import Leadership

log = logging.getLogger(__name__)


class Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Job:
    name: str
    run: Callable[[], object]
    interval_s: float
    leader_only: bool = False
    next_at: float = 0.0


class Supervisor:
    def __init__(self, services: Sequence[Service], jobs: Sequence[Job], leadership: Leadership,
                 tick_s: float = 0.25) -> None:
        self.services = list(services)
        self.jobs = list(jobs)
        self.leadership = leadership
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def start(self) -> None:
        for s in self.services:
            s.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for s in reversed(self.services):
            s.stop()
        self.leadership.release()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            leading = None
            for job in self.jobs:
                if now < job.next_at:
                    continue
                if job.leader_only:
                    if leading is None:
                        leading = self.leadership.check()
                    if not leading:
                        continue
                job.next_at = now + job.interval_s
                try:
                    job.run()
                except (FleetgenError, SQLAlchemyError, OSError) as e:
                    log.error("%s failed: %s", job.name, e)
                except Exception:
                    # A bug in one job must not stop the others.
                    log.exception("%s failed unexpectedly", job.name)
            self._stop.wait(self.tick_s)
