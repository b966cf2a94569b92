"""Rollouts as the store keeps them: the plan, the current wave, every device's result.

All of a rollout's state lives here, so the rollout service holds nothing of its own and a
restarted controller (or a new leader) continues from the last committed step.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from controller.fleet.errors import FleetError
from controller.fleet.rollout import (
    TERMINAL_KINDS,
    DeviceResult,
    RolloutPolicy,
    RolloutSnapshot,
    RolloutStatus,
    parse_waves,
    result_of,
)
from controller.store.core import EventRow
from controller.store.tables import RolloutDeviceRow, RolloutRow
from controller.store.views import RolloutDeviceView, RolloutView

ACTIVE = (RolloutStatus.RUNNING.value, RolloutStatus.PAUSED.value, RolloutStatus.ABORTING.value)


def _view(r: RolloutRow, devices: Iterable[RolloutDeviceRow] = ()) -> RolloutView:
    return RolloutView(
        id=r.id, bundle=r.bundle, group=r.group, status=r.status, waves_spec=r.waves_spec,
        max_failure_ratio=r.max_failure_ratio, wave_timeout_s=r.wave_timeout_s,
        plan=tuple(tuple(w) for w in r.plan), current_wave=r.current_wave, wave_started=r.wave_started,
        paused_at=r.paused_at, created=r.created, updated=r.updated, reason=r.reason,
        devices={d.device_id: RolloutDeviceView(d.device_id, d.wave, d.result, d.previous_target,
                                                d.director_version, d.directed_at, d.detail)
                 for d in devices})


def snapshot(view: RolloutView) -> RolloutSnapshot:
    policy = RolloutPolicy(parse_waves(view.waves_spec), view.max_failure_ratio, view.wave_timeout_s)
    return RolloutSnapshot(
        status=RolloutStatus(view.status), waves=view.plan, current_wave=view.current_wave,
        wave_started=view.wave_started,
        results={d: DeviceResult(v.result) for d, v in view.devices.items()}, policy=policy)


class RolloutRepository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, bundle: str, group: str, policy: RolloutPolicy, waves_spec: str,
               plan: Sequence[Sequence[str]], previous: Mapping[str, str | None], now: float | None = None) -> int:
        now = time.time() if now is None else now
        with Session(self.engine) as s, s.begin():
            row = RolloutRow(bundle=bundle, group=group, status=RolloutStatus.RUNNING.value, waves_spec=waves_spec,
                             max_failure_ratio=policy.max_failure_ratio, wave_timeout_s=policy.wave_timeout_s,
                             plan=[list(w) for w in plan], current_wave=0, wave_started=None, paused_at=None,
                             created=now, updated=now, reason="")
            s.add(row)
            s.flush()
            for wave, devices in enumerate(plan):
                for d in devices:
                    s.add(RolloutDeviceRow(rollout_id=row.id, device_id=d, wave=wave,
                                           result=DeviceResult.WAITING.value, previous_target=previous.get(d),
                                           detail=""))
            return row.id

    def get(self, rollout_id: int) -> RolloutView:
        with Session(self.engine) as s:
            r = s.get(RolloutRow, rollout_id)
            if r is None:
                raise FleetError(f"rollout {rollout_id} does not exist (see `fleetgen rollout ls`)")
            devices = s.scalars(select(RolloutDeviceRow).where(RolloutDeviceRow.rollout_id == rollout_id))
            return _view(r, devices)

    def list(self) -> list[RolloutView]:
        with Session(self.engine) as s:
            return [_view(r) for r in s.scalars(select(RolloutRow).order_by(RolloutRow.id))]

    def active(self) -> builtins.list[int]:
        with Session(self.engine) as s:
            return list(s.scalars(select(RolloutRow.id).where(RolloutRow.status.in_(ACTIVE)).order_by(RolloutRow.id)))

    def active_for(self, devices: Iterable[str]) -> dict[str, int]:
        """Devices already in an unfinished rollout, and which one."""
        wanted = set(devices)
        with Session(self.engine) as s:
            rows = s.execute(select(RolloutDeviceRow.device_id, RolloutDeviceRow.rollout_id)
                             .join(RolloutRow, RolloutRow.id == RolloutDeviceRow.rollout_id)
                             .where(RolloutRow.status.in_(ACTIVE)))
            return {d: r for d, r in rows if d in wanted}

    # -- operator requests -------------------------------------------------------------

    def request(self, rollout_id: int, action: str, now: float | None = None) -> RolloutView:
        """pause | resume | abort, as the operator asks; refused when it makes no sense."""
        now = time.time() if now is None else now
        with Session(self.engine) as s, s.begin():
            r = s.get(RolloutRow, rollout_id, with_for_update=True)
            if r is None:
                raise FleetError(f"rollout {rollout_id} does not exist (see `fleetgen rollout ls`)")
            status = RolloutStatus(r.status)
            if status.finished or status is RolloutStatus.ABORTING:
                raise FleetError(f"rollout {rollout_id} is {status.value}: it cannot {action}")
            if action == "pause":
                if status is RolloutStatus.PAUSED:
                    raise FleetError(f"rollout {rollout_id} is already paused")
                r.status, r.paused_at = RolloutStatus.PAUSED.value, now
            elif action == "resume":
                if status is not RolloutStatus.PAUSED:
                    raise FleetError(f"rollout {rollout_id} is {status.value}, not paused")
                if r.wave_started is not None and r.paused_at is not None:
                    r.wave_started += now - r.paused_at  # the wave's clock stood still while paused
                r.status, r.paused_at = RolloutStatus.RUNNING.value, None
            elif action == "abort":
                r.status, r.reason = RolloutStatus.ABORTING.value, "aborted by the operator"
            else:
                raise ValueError(action)
            r.updated = now
        return self.get(rollout_id)

    # -- the service's steps (each one transaction) -------------------------------------

    def start_wave(self, rollout_id: int, wave: int, versions: Mapping[str, int], now: float) -> None:
        with Session(self.engine) as s, s.begin():
            r = s.get(RolloutRow, rollout_id, with_for_update=True)
            assert r is not None
            r.current_wave, r.wave_started, r.updated = wave, now, now
            for device, version in versions.items():
                # A device revoked meanwhile stays revoked (`fleetgen device revoke` is another process).
                s.execute(update(RolloutDeviceRow)
                          .where(RolloutDeviceRow.rollout_id == rollout_id, RolloutDeviceRow.device_id == device,
                                 RolloutDeviceRow.result != DeviceResult.REVOKED.value)
                          .values(result=DeviceResult.PENDING.value, director_version=version, directed_at=now))

    def set_results(self, rollout_id: int, results: Mapping[str, tuple[DeviceResult, str]], now: float) -> None:
        if not results:
            return
        with Session(self.engine) as s, s.begin():
            for device, (result, detail) in results.items():
                s.execute(update(RolloutDeviceRow)
                          .where(RolloutDeviceRow.rollout_id == rollout_id, RolloutDeviceRow.device_id == device,
                                 RolloutDeviceRow.result != DeviceResult.REVOKED.value)
                          .values(result=result.value, detail=detail[:1000]))
            s.execute(update(RolloutRow).where(RolloutRow.id == rollout_id).values(updated=now))

    def finish(self, rollout_id: int, status: RolloutStatus, reason: str, now: float,
               rolled_back: Mapping[str, str | None] | None = None) -> None:
        with Session(self.engine) as s, s.begin():
            r = s.get(RolloutRow, rollout_id, with_for_update=True)
            assert r is not None
            r.status, r.updated = status.value, now
            if reason:
                r.reason = reason
            # Failed devices keep their result (and why); the others become rolled_back.
            for device, target in (rolled_back or {}).items():
                row = s.get(RolloutDeviceRow, (rollout_id, device))
                if row is None or row.result == DeviceResult.REVOKED.value:
                    continue
                if not DeviceResult(row.result).failed:
                    row.result = DeviceResult.ROLLED_BACK.value
                row.detail = (f"{row.detail}; " if row.detail else "") + f"directed back to {target or 'no target'}"

    def outcomes(self, view: RolloutView) -> dict[str, tuple[DeviceResult, str]]:
        """New results of the pending devices, read from their events since they were directed.

        An event counts when it arrived after the device was directed and, where the agent
        names the director version it acted on (details.director_version), for this one or later;
        an `update.failed` the agent will retry (details.final false) is not an outcome.
        """
        pending = {d: v for d, v in view.devices.items() if v.result == DeviceResult.PENDING.value}
        if not pending:
            return {}
        since = min(v.directed_at or 0.0 for v in pending.values())
        found: dict[str, tuple[DeviceResult, str]] = {}
        ids = list(pending)
        with Session(self.engine) as s:
            for i in range(0, len(ids), 500):
                q = (select(EventRow.device_id, EventRow.kind, EventRow.received, EventRow.message, EventRow.details)
                     .where(EventRow.device_id.in_(ids[i:i + 500]), EventRow.kind.in_(sorted(TERMINAL_KINDS)),
                            EventRow.received >= since)
                     .order_by(EventRow.received, EventRow.seq))
                for device, kind, received, message, details in s.execute(q):
                    dv = pending[device]
                    if device in found or received < (dv.directed_at or 0.0):
                        continue
                    if (details or {}).get("final") is False:
                        continue  # a failure the agent retries by itself is not an outcome
                    version = (details or {}).get("director_version")
                    if isinstance(version, int) and dv.director_version is not None and version < dv.director_version:
                        continue
                    result = result_of(kind)
                    if result is not None:
                        found[device] = (result, f"{kind}: {message}" if message else kind)
        return found
