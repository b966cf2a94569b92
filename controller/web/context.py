"""What the web layer works with, handed in by `fleetgen serve` (or a test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from controller.store import Store
from controller.web.settings import HttpSettings
from controller.web.tokens import Tokens

if TYPE_CHECKING:
    from agent.trust.transport import Transport
    from controller.director import Director
    from controller.web.desired import DesiredWatch


@dataclass
class WebContext:
    store: Store
    settings: HttpSettings = field(default_factory=HttpSettings)
    # The image repository (bundles, director) and the broker link (publishing desired state);
    # without them the bundle and desired-state endpoints answer 503.
    repo_dir: Path | None = None
    transport: Transport | None = None
    # The desired state retained for each device (needs the repository's director keys).
    desired: DesiredWatch | None = None
    # Messages the ingestor refused so far (for /metrics).
    refused: Callable[[], int] = lambda: 0
    clock: Callable[[], float] = time.time
    tokens: Tokens = field(init=False)
    _director: Director | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.tokens = Tokens(self.store, self.clock)

    def director(self) -> Director:
        """The director, loaded on first use (it reads the director key)."""
        from controller.director import Director
        from controller.tuf.repository import Repository

        assert self.repo_dir is not None
        with self._lock:
            if self._director is None:
                self._director = Director(Repository(self.repo_dir))
            return self._director
