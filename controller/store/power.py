"""Power: per-device settings (priority, floor, cap), budgets in force, group members' demand."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.store.core import DeviceRow
from controller.store.groups import GroupRepository
from controller.store.tables import AllocationRow, DevicePowerRow
from controller.store.views import PowerMember, PowerSettings


class PowerRepository:
    def __init__(self, engine: Engine, groups: GroupRepository) -> None:
        self.engine = engine
        self.groups = groups

    def set_device(self, settings: PowerSettings) -> None:
        with Session(self.engine) as s, s.begin():
            row = s.get(DevicePowerRow, settings.device_id)
            if row is None:
                s.add(DevicePowerRow(device_id=settings.device_id, priority=settings.priority,
                                     floor_w=settings.floor_w, cap_w=settings.cap_w))
            else:
                row.priority, row.floor_w, row.cap_w = settings.priority, settings.floor_w, settings.cap_w

    def settings(self, device_id: str) -> PowerSettings | None:
        with Session(self.engine) as s:
            r = s.get(DevicePowerRow, device_id)
            return None if r is None else PowerSettings(r.device_id, r.priority, r.floor_w, r.cap_w)

    def members(self, group: str, *, online_only: bool = True) -> list[PowerMember]:
        view = self.groups.get(group)
        ids = list(view.members)
        out: list[PowerMember] = []
        with Session(self.engine) as s:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                settings = {r.device_id: r for r in s.scalars(select(DevicePowerRow)
                                                               .where(DevicePowerRow.device_id.in_(chunk)))}
                allocs = {r.device_id: r.budget_w for r in s.scalars(select(AllocationRow)
                                                                      .where(AllocationRow.device_id.in_(chunk)))}
                for r in s.scalars(select(DeviceRow).where(DeviceRow.id.in_(chunk)).order_by(DeviceRow.id)):
                    if online_only and not r.online:
                        continue
                    p = settings.get(r.id)
                    out.append(PowerMember(
                        r.id, r.board, r.demand_w,
                        PowerSettings(r.id, p.priority, p.floor_w, p.cap_w) if p else PowerSettings(r.id),
                        allocs.get(r.id)))
        return out

    def allocations(self, group: str) -> dict[str, float]:
        with Session(self.engine) as s:
            return {r.device_id: r.budget_w
                    for r in s.scalars(select(AllocationRow).where(AllocationRow.group == group))}

    def record(self, group: str, pushed: Mapping[str, float], gone: list[str], now: float) -> None:
        """Budgets now in force (pushed to devices); `gone` left the group or went offline."""
        with Session(self.engine) as s, s.begin():
            if gone:
                s.execute(delete(AllocationRow).where(AllocationRow.device_id.in_(gone)))
            for device, watts in pushed.items():
                row = s.get(AllocationRow, device)
                if row is None:
                    s.add(AllocationRow(device_id=device, group=group, budget_w=watts, pushed_at=now))
                else:
                    row.group, row.budget_w, row.pushed_at = group, watts, now
