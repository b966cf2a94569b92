"""The power service: shares each group's budget among its online devices and pushes each
device's share in its signed desired document (controller.fleet.power does the sharing).

Each tick, per group with a budget: online members and their latest measured draw, caps
no higher than the board's peak (firmware/boards), the allocation, settled against the
budgets in force (no re-push for a change under 5%), then the changed ones pushed and
recorded. Members that went offline or left the group lose their allocation, so their
share goes to the others at once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import cache

from agent.errors import FleetgenError
from controller.fleet.power import Allocation, PowerNeed, allocate, changed, settle
from controller.services.director import DirectorPublisher
from controller.store.groups import GroupRepository
from controller.store.power import PowerRepository
from controller.store.views import PowerMember

log = logging.getLogger(__name__)


@cache
def board_peaks() -> dict[str, float]:
    from firmware.profile import load_profiles

    return {p.id: p.peak_w for p in load_profiles()}


def _milliwatts_down(watts: float) -> float:
    """Round down to a milliwatt, so rounding never takes the sum over the budget."""
    return math.floor(watts * 1000) / 1000


def need_of(member: PowerMember) -> PowerNeed:
    s = member.settings
    peak = board_peaks().get(member.board, math.inf)
    cap = min(peak, s.cap_w if s.cap_w is not None else math.inf)
    floor = min(s.floor_w, cap)
    return PowerNeed(member.device_id, member.demand_w, floor, cap, s.priority)


class PowerService:
    def __init__(self, groups: GroupRepository, power: PowerRepository, publisher: DirectorPublisher,
                 clock: Callable[[], float] = time.time) -> None:
        self.groups = groups
        self.power = power
        self.publisher = publisher
        self.clock = clock
        self.last: dict[str, Allocation] = {}

    def tick(self) -> None:
        for name, budget_w in self.groups.budgets().items():
            try:
                self.reallocate(name, budget_w)
            except FleetgenError as e:
                log.error("power: group %s: %s", name, e)

    def reallocate(self, group: str, budget_w: float) -> dict[str, float]:
        members = self.power.members(group)
        allocation = allocate(budget_w, [need_of(m) for m in members])
        self.last[group] = allocation
        if allocation.overcommitted:
            log.warning("power: group %s: floors exceed the %.1f W budget; scaled down", group, budget_w)
        in_force = self.power.allocations(group)
        settled = settle(in_force, allocation)
        push = changed(in_force, settled)
        gone = [d for d in in_force if d not in allocation.shares]
        # Lower budgets first, so devices taking more never briefly overlap those giving back.
        for device, watts in sorted(push.items(), key=lambda kv: kv[1] - in_force.get(kv[0], 0.0)):
            self.publisher.direct([device], power_budget_w=_milliwatts_down(watts))
        if push or gone:
            log.info("power: group %s: pushed %d budgets, %d devices left", group, len(push), len(gone))
            self.power.record(group, {d: _milliwatts_down(w) for d, w in push.items()}, gone, self.clock())
        return push
