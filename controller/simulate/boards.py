"""Board mixes and each board's power, from the board profiles in firmware/boards."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from agent.errors import UsageError


@dataclass(frozen=True, slots=True)
class SimBoard:
    id: str
    idle_w: float
    peak_w: float

    def draw(self, rng: random.Random, budget_w: float | None, load: float) -> float:
        """The draw at `load` (0-1) between idle and peak, held under a budget as the
        agent's governor would."""
        watts = self.idle_w + load * (self.peak_w - self.idle_w)
        if budget_w is not None:
            watts = min(watts, max(self.idle_w * 0.9, budget_w * rng.uniform(0.95, 0.99)))
        return round(watts, 3)


@cache
def known_boards() -> dict[str, SimBoard]:
    from firmware.profile import load_profiles

    return {p.id: SimBoard(p.id, p.idle_w, p.peak_w) for p in load_profiles()}


DEFAULT_MIX = "jetson-orin-nano:2,raspberry-pi-5:2,kria-kv260:1,generic-x86_64:1"


def parse_mix(text: str) -> tuple[tuple[SimBoard, float], ...]:
    """'jetson-orin-nano:2,raspberry-pi-5:1' -> boards with weights (weight 1 when omitted)."""
    boards = known_boards()
    mix = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight = part.partition(":")
        if name not in boards:
            raise UsageError(f"--boards: unknown board {name!r} (known: {', '.join(sorted(boards))})")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"--boards: weight {weight!r} of {name} is not a number") from None
        if not w > 0:
            raise UsageError(f"--boards: weight of {name} must be > 0")
        mix.append((boards[name], w))
    if not mix:
        raise UsageError("--boards: no board given")
    return tuple(mix)


def assign(mix: tuple[tuple[SimBoard, float], ...], n: int, rng: random.Random) -> list[SimBoard]:
    boards = [b for b, _ in mix]
    weights = [w for _, w in mix]
    return rng.choices(boards, weights=weights, k=n)
