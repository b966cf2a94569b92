"""Device registry queries beyond ingest: detail, tags, labels."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.fleet.errors import FleetError
from controller.store.core import DeviceRow
from controller.store.tables import AllocationRow, DesiredRow, DeviceTagRow
from controller.store.views import DeviceDetail

_TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")


def check_tag(tag: str) -> str:
    from agent.errors import UsageError

    if not _TAG.fullmatch(tag):
        raise UsageError(f"tag {tag!r}: expected [a-z0-9][a-z0-9_.:-]{{0,63}}")
    return tag


def labels_of(reported: dict[str, Any] | None) -> dict[str, Any]:
    labels = (reported or {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


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
        """(id, board, tags, labels) of every device: what group rules match on."""
        with Session(self.engine) as s:
            tags: dict[str, set[str]] = {}
            for device_id, tag in s.execute(select(DeviceTagRow.device_id, DeviceTagRow.tag)):
                tags.setdefault(device_id, set()).add(tag)
            rows = s.execute(select(DeviceRow.id, DeviceRow.board, DeviceRow.reported).order_by(DeviceRow.id))
            return [(i, b, frozenset(tags.get(i, ())), labels_of(r)) for i, b, r in rows]

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

    def detail(self, device_id: str) -> DeviceDetail:
        with Session(self.engine) as s:
            r = s.get(DeviceRow, device_id)
            if r is None:
                raise FleetError(f"device {device_id!r} is not in the registry")
            tags = tuple(sorted(s.scalars(select(DeviceTagRow.tag).where(DeviceTagRow.device_id == device_id))))
            desired = s.get(DesiredRow, device_id)
            alloc = s.get(AllocationRow, device_id)
            budget = alloc.budget_w if alloc else (desired.power_budget_w if desired else None)
            return DeviceDetail(
                id=r.id, board=r.board, online=r.online, last_seen=r.last_seen, agent_version=r.agent_version,
                active_bundle=r.active_bundle, health=r.health, tags=tags, labels=labels_of(r.reported),
                reported=r.reported, last_sample=r.last_sample,
                desired_version=desired.version if desired else None,
                desired_target=desired.target if desired else None, power_budget_w=budget)
