"""What the web layer works with, handed in by `fleetgen serve` (or a test)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from controller.store import Store
from controller.web.settings import HttpSettings
from controller.web.tokens import Tokens

if TYPE_CHECKING:
    from controller.services.director import DirectorPublisher


@dataclass
class WebContext:
    store: Store
    settings: HttpSettings = field(default_factory=HttpSettings)
    # The image repository (bundles, rollouts) and the director publisher (signs and publishes
    # desired state, counting versions in the store); without them those endpoints answer 503.
    repo_dir: Path | None = None
    publisher: DirectorPublisher | None = None
    # Messages the ingestor refused so far, by reason (for /metrics).
    refused: Callable[[], Mapping[str, int]] = dict
    clock: Callable[[], float] = time.time
    tokens: Tokens = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = Tokens(self.store, self.clock)
