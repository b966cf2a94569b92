"""Device registry queries beyond ingest: detail, tags, labels."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.fleet.errors import FleetError
from controller.fleet.rollout import DeviceResult
from controller.store.core import DeviceRow
from controller.store.tables import AllocationRow, DesiredRow, DeviceTagRow, GroupRuleRow, RolloutDeviceRow, RolloutRow
from controller.store.views import DeviceDetail, Revoked

_TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def check_tag(tag: str) -> str:
    from agent.errors import UsageError

    if not _TAG.fullmatch(tag):
        raise UsageError(f"tag {tag!r}: expected [a-z0-9][a-z0-9_.:-]{{0,63}}")
    return tag


def labels_of(reported: dict[str, Any] | None) -> dict[str, Any]:
    labels = (reported or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def revoked_among(engine: Engine, device_ids: Iterable[str]) -> set[str]:
    ids = list(device_ids)
    out: set[str] = set()
    with Session(engine) as s:
        for i in range(0, len(ids), 500):
            out.update(s.scalars(select(DeviceRow.id).where(DeviceRow.id.in_(ids[i:i + 500]),
                                                            DeviceRow.revoked.is_not(None))))
    return out


class DeviceRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ids(self) -> list[str]:
        with Session(self.engine) as s:
            return list(s.scalars(select(DeviceRow.id).order_by(DeviceRow.id)))

    def exists(self, device_id: str) -> bool:
        with Session(self.engine) as s:
            return s.get(DeviceRow, device_id) is not None

    def facts(self) -> list[tuple[str, str, frozenset[str], dict[str, Any]]]:
        """(id, board, tags, labels) of every device that is not revoked: what group rules
        match on (so a revoked device falls out of every group, by any rule)."""
        with Session(self.engine) as s:
            tags: dict[str, set[str]] = {}
            for device_id, tag in s.execute(select(DeviceTagRow.device_id, DeviceTagRow.tag)):
                tags.setdefault(device_id, set()).add(tag)
            rows = s.execute(select(DeviceRow.id, DeviceRow.board, DeviceRow.reported)
                             .where(DeviceRow.revoked.is_(None)).order_by(DeviceRow.id))
            return [(i, b, frozenset(tags.get(i, ())), labels_of(r)) for i, b, r in rows]

    def revoked(self, device_ids: Iterable[str]) -> set[str]:
        """Those of `device_ids` that are revoked."""
        return revoked_among(self.engine, device_ids)

    def revoke(self, device_id: str, now: float) -> Revoked:
        """Take a device out of the fleet, in one transaction: marked revoked (so no group rule
        matches it and no director document is signed for it), its explicit group memberships
        deleted, and every unfinished rollout records it as revoked (neither committed nor
        failed: the rollout's gates count the devices still in it)."""
        from controller.store.rollouts import ACTIVE

        with Session(self.engine) as s, s.begin():
            s.execute(update(DeviceRow).where(DeviceRow.id == device_id).values(revoked=now))
            groups = tuple(sorted(s.scalars(select(GroupRuleRow.group).where(
                GroupRuleRow.kind == "device", GroupRuleRow.value == device_id))))
            s.execute(delete(GroupRuleRow).where(GroupRuleRow.kind == "device", GroupRuleRow.value == device_id))
            rows = s.scalars(select(RolloutDeviceRow)
                             .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
                             .where(RolloutDeviceRow.device_id == device_id, RolloutRow.status.in_(ACTIVE),
                                    RolloutDeviceRow.result != DeviceResult.REVOKED.value)).all()
            for row in rows:
                row.detail = (f"{row.detail}; " if row.detail else "") + f"device revoked (was {row.result})"
                row.result = DeviceResult.REVOKED.value
            return Revoked(device_id, groups, tuple(sorted(r.rollout_id for r in rows)))

    def readmit(self, device_id: str) -> None:
        """A new certificate was issued to a revoked device (enrolled again): it is back."""
        with Session(self.engine) as s, s.begin():
            s.execute(update(DeviceRow).where(DeviceRow.id == device_id).values(revoked=None))

    def tag(self, device_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> tuple[str, ...]:
        add, remove = [check_tag(t) for t in add], [check_tag(t) for t in remove]
        with Session(self.engine) as s, s.begin():
            if s.get(DeviceRow, device_id) is None:
                raise FleetError(f"device {device_id!r} is not in the registry")
            have = set(s.scalars(select(DeviceTagRow.tag).where(DeviceTagRow.device_id == device_id)))
            for t in add:
                if t not in have:
                    s.add(DeviceTagRow(device_id=device_id, tag=t))
                    have.add(t)
            if remove:
                s.execute(delete(DeviceTagRow).where(DeviceTagRow.device_id == device_id,
                                                     DeviceTagRow.tag.in_(remove)))
                have -= set(remove)
            return tuple(sorted(have))

    def list(self) -> list[DeviceDetail]:
        """Every device with its tags, desired state and budget, in three queries whatever the
        fleet's size (`fleetgen device ls`): devices joined to their desired state and
        allocation, then all tags."""
        with Session(self.engine) as s:
            tags: dict[str, list[str]] = {}
            for device_id, tag in s.execute(select(DeviceTagRow.device_id, DeviceTagRow.tag)
                                            .order_by(DeviceTagRow.device_id, DeviceTagRow.tag)):
                tags.setdefault(device_id, []).append(tag)
            rows = s.execute(select(DeviceRow, DesiredRow, AllocationRow.budget_w)
                             .outerjoin(DesiredRow, DesiredRow.device_id == DeviceRow.id)
                             .outerjoin(AllocationRow, AllocationRow.device_id == DeviceRow.id)
                             .order_by(DeviceRow.id)).all()
            return [_detail(r, tuple(tags.get(r.id, ())), desired, alloc) for r, desired, alloc in rows]

    def detail(self, device_id: str) -> DeviceDetail:
        with Session(self.engine) as s:
            r = s.get(DeviceRow, device_id)
            if r is None:
                raise FleetError(f"device {device_id!r} is not in the registry")
            tags = tuple(sorted(s.scalars(select(DeviceTagRow.tag).where(DeviceTagRow.device_id == device_id))))
            desired = s.get(DesiredRow, device_id)
            alloc = s.get(AllocationRow, device_id)
            return _detail(r, tags, desired, alloc.budget_w if alloc else None)


def _detail(r: DeviceRow, tags: tuple[str, ...], desired: DesiredRow | None, allocated: float | None) -> DeviceDetail:
    budget = allocated if allocated is not None else (desired.power_budget_w if desired else None)
    return DeviceDetail(
        id=r.id, board=r.board, online=r.online, last_seen=r.last_seen, agent_version=r.agent_version,
        active_bundle=r.active_bundle, health=r.health, tags=tags, labels=labels_of(r.reported),
        reported=r.reported, last_sample=r.last_sample,
        desired_version=desired.version if desired else None,
        desired_target=desired.target if desired else None, power_budget_w=budget, revoked=r.revoked)
