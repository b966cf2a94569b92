"""The desired state the director last signed per device, and its version counter.

`next_version` bumps the device's one counter and records what the new document says in
one statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING), so two replicas signing
for the same device at once get two different versions, never the same one. Fields not
given keep their recorded value: a rollout changes the target and keeps the power budget,
the power allocator the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.store.tables import DesiredRow
from controller.store.views import DesiredView


class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def _insert(engine: Engine) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


class DesiredRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def next_version(self, device_id: str, *, target: str | None = KEEP, power_budget_w: float | None = KEEP,
                     floor: int = 0, now: float | None = None) -> DesiredView:
        """The next version for `device_id` (above `floor`, e.g. a legacy versions.json)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            row = conn.execute(self._statement(device_id, target, power_budget_w, floor, now)).one()
        return DesiredView(row.device_id, row.version, row.target, row.power_budget_w)

    def _statement(self, device_id: str, target: str | None, power_budget_w: float | None, floor: int,
                   now: float) -> Any:
        insert = _insert(self.engine)
        values = {"device_id": device_id, "version": floor + 1, "updated": now,
                  "target": None if target is KEEP else target,
                  "power_budget_w": None if power_budget_w is KEEP else power_budget_w}
        stmt = insert(DesiredRow).values(**values)
        table = DesiredRow.__table__
        bumped = table.c.version + 1
        update: dict[str, Any] = {
            "version": bumped if floor <= 0 else _greatest(self.engine, bumped, floor + 1),
            "updated": now,
        }
        if target is not KEEP:
            update["target"] = target
        if power_budget_w is not KEEP:
            update["power_budget_w"] = power_budget_w
        return stmt.on_conflict_do_update(index_elements=["device_id"], set_=update).returning(
            table.c.device_id, table.c.version, table.c.target, table.c.power_budget_w)

    def revoked(self, device_ids: Iterable[str]) -> set[str]:
        """Those of `device_ids` revoked by `fleetgen device revoke`: no document is signed for them."""
        from controller.store.devices import revoked_among

        return revoked_among(self.engine, device_ids)

    def next_versions(self, device_ids: Iterable[str], *, target: str | None = KEEP,
                      power_budget_w: float | None = KEEP, floors: Mapping[str, int] | None = None,
                      now: float | None = None) -> dict[str, DesiredView]:
        """`next_version` for many devices in one transaction (a rollout wave: one commit,
        not one per device); each device's statement is as atomic as `next_version`'s."""
        now = time.time() if now is None else now
        out: dict[str, DesiredView] = {}
        with self.engine.begin() as conn:
            for device_id in device_ids:
                stmt = self._statement(device_id, target, power_budget_w, (floors or {}).get(device_id, 0), now)
                row = conn.execute(stmt).one()
                out[device_id] = DesiredView(row.device_id, row.version, row.target, row.power_budget_w)
        return out

    def get(self, device_id: str) -> DesiredView | None:
        return self.many([device_id]).get(device_id)

    def many(self, device_ids: Iterable[str]) -> dict[str, DesiredView]:
        ids = list(device_ids)
        out: dict[str, DesiredView] = {}
        with Session(self.engine) as s:
            for i in range(0, len(ids), 500):
                for r in s.scalars(select(DesiredRow).where(DesiredRow.device_id.in_(ids[i:i + 500]))):
                    out[r.device_id] = DesiredView(r.device_id, r.version, r.target, r.power_budget_w)
        return out


def _greatest(engine: Engine, a: Any, b: int) -> Any:
    from sqlalchemy import func

    # SQLite's two-argument max() is its scalar GREATEST.
    return func.greatest(a, b) if engine.dialect.name == "postgresql" else func.max(a, b)
