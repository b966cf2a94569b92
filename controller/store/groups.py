"""Groups: named sets of devices, by explicit id, board, tag or reported label.

Membership is evaluated when asked, from the rules: a device that enrolls later with a
matching board or tag is in the group from then on. A rollout freezes the members it
starts with (its plan), so membership changes never move a running rollout.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from agent.errors import UsageError
from controller.fleet.errors import FleetError
from controller.store.devices import DeviceRepository
from controller.store.tables import GroupRow, GroupRuleRow
from controller.store.views import GroupRule, GroupView

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
KINDS = ("device", "board", "tag", "label")


def check_group_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"group name {name!r}: expected [a-z0-9][a-z0-9_.-]{{0,63}}")
    return name


def rule_matches(rule: GroupRule, device_id: str, board: str, tags: frozenset[str],
                 labels: dict[str, Any]) -> bool:
    if rule.kind == "device":
        return device_id == rule.value
    if rule.kind == "board":
        return board == rule.value
    if rule.kind == "tag":
        return rule.value in tags
    key, _, value = rule.value.partition("=")
    return key in labels and str(labels[key]) == value


class GroupRepository:
    def __init__(self, engine: Engine, devices: DeviceRepository) -> None:
        self.engine = engine
        self.devices = devices

    def create(self, name: str, now: float | None = None) -> None:
        check_group_name(name)
        with Session(self.engine) as s, s.begin():
            if s.get(GroupRow, name) is not None:
                raise FleetError(f"group {name!r} already exists")
            s.add(GroupRow(name=name, created=time.time() if now is None else now))

    def delete(self, name: str) -> None:
        with Session(self.engine) as s, s.begin():
            self._row(s, name)
            s.execute(delete(GroupRuleRow).where(GroupRuleRow.group == name))
            s.execute(delete(GroupRow).where(GroupRow.name == name))

    def _row(self, s: Session, name: str) -> GroupRow:
        row = s.get(GroupRow, name)
        if row is None:
            raise FleetError(f"group {name!r} does not exist (see `fleetgen group ls`)")
        return row

    def add(self, name: str, rules: Iterable[GroupRule]) -> None:
        with Session(self.engine) as s, s.begin():
            self._row(s, name)
            have = {(r.kind, r.value) for r in s.scalars(select(GroupRuleRow).where(GroupRuleRow.group == name))}
            for rule in rules:
                if rule.kind not in KINDS:
                    raise UsageError(f"group rule kind {rule.kind!r}: expected one of {', '.join(KINDS)}")
                if (rule.kind, rule.value) not in have:
                    s.add(GroupRuleRow(group=name, kind=rule.kind, value=rule.value))
                    have.add((rule.kind, rule.value))

    def remove(self, name: str, rules: Iterable[GroupRule]) -> int:
        removed = 0
        with Session(self.engine) as s, s.begin():
            self._row(s, name)
            for rule in rules:
                res = s.execute(delete(GroupRuleRow).where(
                    GroupRuleRow.group == name, GroupRuleRow.kind == rule.kind, GroupRuleRow.value == rule.value))
                removed += res.rowcount or 0  # type: ignore[attr-defined]
        return removed

    def set_budget(self, name: str, watts: float | None) -> None:
        with Session(self.engine) as s, s.begin():
            self._row(s, name).budget_w = watts

    def _rules(self, s: Session) -> dict[str, list[GroupRule]]:
        out: dict[str, list[GroupRule]] = {}
        for r in s.scalars(select(GroupRuleRow).order_by(GroupRuleRow.kind, GroupRuleRow.value)):
            out.setdefault(r.group, []).append(GroupRule(r.kind, r.value))
        return out

    def _views(self, names: Sequence[str] | None) -> list[GroupView]:
        with Session(self.engine) as s:
            q = select(GroupRow).order_by(GroupRow.name)
            if names is not None:
                q = q.where(GroupRow.name.in_(list(names)))
            groups = list(s.scalars(q))
            if not groups:
                return []
            rules = self._rules(s)
        facts = self.devices.facts()
        views = []
        for g in groups:
            rs = tuple(rules.get(g.name, ()))
            members = tuple(d for d, board, tags, labels in facts
                            if any(rule_matches(r, d, board, tags, labels) for r in rs))
            views.append(GroupView(g.name, rs, members, g.budget_w))
        return views

    def budgets(self) -> dict[str, float]:
        """The groups that have a power budget, and its watts (no membership: the power
        service's tick asks this often, and members cost a read of every device)."""
        with Session(self.engine) as s:
            rows = s.execute(select(GroupRow.name, GroupRow.budget_w).where(GroupRow.budget_w.is_not(None))
                             .order_by(GroupRow.name))
            return {name: watts for name, watts in rows if watts is not None}

    def list(self) -> list[GroupView]:
        return self._views(None)

    def get(self, name: str) -> GroupView:
        views = self._views([name])
        if not views:
            raise FleetError(f"group {name!r} does not exist (see `fleetgen group ls`)")
        return views[0]
