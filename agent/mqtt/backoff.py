"""Exponential backoff with jitter for reconnects (pure, so it is easy to test)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay n is drawn from [cap/2, cap] with cap = min(max_s, min_s * 2**n).

    Half of the delay is jitter, so a fleet that lost its broker at the same instant
    does not come back in lockstep; the other half keeps a floor so retries stay spaced.
    """

    min_s: float
    max_s: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        cap = min(self.max_s, self.min_s * (2 ** min(self.attempt, 32)))
        self.attempt += 1
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def reset(self) -> None:
        self.attempt = 0
