"""The power allocator: a group's (site's) budget in watts shared among its online devices.

Pure (DESIGN §9). `allocate` does weighted water-filling in two passes:

1. every device gets its floor;
2. what is left fills each device towards its *want* (recent demand, with headroom,
   between floor and cap) at a rate proportional to its priority: a level rises, and each
   device gets `min(want, floor + priority x level)`;
3. if the budget exceeds every want, the surplus fills towards the caps the same way,
   so a device whose demand grows has room before the next re-allocation.

Caps never exceed the board's peak (the caller passes min(cap, peak)). When the floors
alone exceed the budget, the floors are scaled down in proportion and the allocation says
`overcommitted`: the budget is the hard limit.

`settle` bounds churn: an allocation that moved by less than `min_change` (5%) of the
value in force is not re-pushed, as long as keeping the old value keeps the total within
the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEMAND_HEADROOM = 1.10  # want 10% above recent draw, so a device is not throttled at its mean
MIN_CHANGE = 0.05
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class PowerNeed:
    device_id: str
    demand_w: float | None  # recent measured (or estimated) draw; None: not known yet
    floor_w: float = 0.0
    cap_w: float = math.inf  # already min(configured cap, board peak)
    priority: float = 1.0  # > 0; a weight

    def __post_init__(self) -> None:
        if not self.priority > 0:
            raise ValueError(f"{self.device_id}: priority must be > 0, not {self.priority}")
        if self.floor_w < 0 or self.cap_w < self.floor_w:
            raise ValueError(f"{self.device_id}: need 0 <= floor ({self.floor_w}) <= cap ({self.cap_w})")

    @property
    def want_w(self) -> float:
        if self.demand_w is None or math.isnan(self.demand_w):
            return self.cap_w if math.isfinite(self.cap_w) else self.floor_w
        return min(self.cap_w, max(self.floor_w, self.demand_w * DEMAND_HEADROOM))


@dataclass(frozen=True, slots=True)
class Allocation:
    budget_w: float
    shares: Mapping[str, float]
    overcommitted: bool = False

    @property
    def total_w(self) -> float:
        return sum(self.shares.values())


def _fill(base: Sequence[float], limit: Sequence[float], weight: Sequence[float], amount: float) -> list[float]:
    """Raise `base[i]` towards `limit[i]` at rate `weight[i]` until `amount` is spent."""
    out = list(base)
    room = [max(0.0, lim - b) for b, lim in zip(base, limit, strict=True)]
    if amount <= 0 or sum(room) <= 0:
        return out
    if amount >= sum(room) - _EPS:
        return [b + r for b, r in zip(base, room, strict=True)]
    # Breakpoints: the level at which each device reaches its limit.
    order = sorted((r / w, i) for i, (r, w) in enumerate(zip(room, weight, strict=True)) if r > 0)
    active_weight = sum(weight[i] for _, i in order)
    spent, level = 0.0, 0.0
    for stop, i in order:
        cost = (stop - level) * active_weight
        if spent + cost >= amount:
            break
        spent += cost
        level = stop
        active_weight -= weight[i]
    level += (amount - spent) / active_weight if active_weight > 0 else 0.0
    for i, (r, w) in enumerate(zip(room, weight, strict=True)):
        out[i] = base[i] + min(r, w * level)
    return out


def allocate(budget_w: float, needs: Sequence[PowerNeed]) -> Allocation:
    if not needs:
        return Allocation(budget_w, {})
    budget = max(0.0, budget_w)
    floors = [n.floor_w for n in needs]
    if sum(floors) > budget:
        scale = budget / sum(floors)
        return Allocation(budget_w, {n.device_id: n.floor_w * scale for n in needs}, overcommitted=True)
    weights = [n.priority for n in needs]
    wants = [n.want_w for n in needs]
    first = _fill(floors, wants, weights, budget - sum(floors))
    second = _fill(first, [n.cap_w for n in needs], weights, budget - sum(first))
    # Infinite caps with a surplus: _fill returns inf; a device never needs more than the budget.
    shares = {n.device_id: min(v, budget) for n, v in zip(needs, second, strict=True)}
    return Allocation(budget_w, shares)


def settle(previous: Mapping[str, float], allocation: Allocation,
           min_change: float = MIN_CHANGE) -> dict[str, float]:
    """The values to put in force: the new allocation, except where it moved by less than
    `min_change` of the value in force (no re-push), while the total stays within budget."""
    result = dict(allocation.shares)
    slack = allocation.budget_w - allocation.total_w
    # Keeping an old value below the new one frees budget; keeping one above costs it.
    candidates = sorted(
        ((previous[d] - new, d) for d, new in allocation.shares.items()
         if d in previous and previous[d] > 0 and abs(new - previous[d]) < min_change * previous[d]),
    )
    for cost, device in candidates:
        if cost <= slack + _EPS:
            result[device] = previous[device]
            slack -= cost
    return result


def changed(previous: Mapping[str, float], settled: Mapping[str, float]) -> dict[str, float]:
    """Devices whose value in force must be (re-)pushed."""
    return {d: w for d, w in settled.items() if previous.get(d) != w}
