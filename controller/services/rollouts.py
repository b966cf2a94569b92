"""The rollout service: the adapter that carries out the rollout engine's decisions.

Each tick, for every unfinished rollout: read the devices' new outcomes from their events,
ask `controller.fleet.rollout.decide` for the next step, do it (direct devices through the
director publisher, record in the store), and ask again until the answer is to wait.
Every step is committed before the next one, and the engine's input is only what the
store holds, so a controller killed between two steps repeats nothing on restart beyond
re-publishing one wave's documents (harmless: each carries a new version, same target).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from agent.errors import FleetgenError
from controller.fleet.rollout import (
    Abort,
    Complete,
    DeviceResult,
    Halt,
    RolloutPolicy,
    RolloutStatus,
    StartWave,
    TimeOut,
    Wait,
    decide,
)
from controller.services.director import DirectorPublisher
from controller.store.core import DeviceRow
from controller.store.rollouts import RolloutRepository, snapshot

if TYPE_CHECKING:
    from controller.store import Store
    from controller.store.views import RolloutView

log = logging.getLogger(__name__)

_MAX_STEPS_PER_TICK = 16
# A pending device that has not reported this wave's document this long after it was
# directed gets it again (then after twice as long, ...): a broker SIGKILLed after
# acknowledging the retained document, before saving it, lost it (ADR 0074).
REPUBLISH_AFTER_S = 10.0
REPUBLISH_MAX_S = 300.0


class RolloutService:
    def __init__(self, rollouts: RolloutRepository, publisher: DirectorPublisher,
                 clock: Callable[[], float] = time.time) -> None:
        self.rollouts = rollouts
        self.publisher = publisher
        self.clock = clock
        self._republished: dict[tuple[int, str], tuple[float, float]] = {}  # -> (when, interval)

    def tick(self) -> None:
        for rollout_id in self.rollouts.active():
            try:
                self.advance(rollout_id)
            except FleetgenError as e:
                log.error("rollout %d: %s", rollout_id, e)

    def advance(self, rollout_id: int) -> None:
        for _ in range(_MAX_STEPS_PER_TICK):
            view = self.rollouts.get(rollout_id)
            now = self.clock()
            outcomes = self.rollouts.outcomes(view)
            outcomes.update(self._reported_committed(view, outcomes))
            if outcomes:
                self.rollouts.set_results(rollout_id, outcomes, now)
                view = self.rollouts.get(rollout_id)
            decision = decide(snapshot(view), now)
            if isinstance(decision, Wait):
                self._republish_unseen(view, now)
                return
            if isinstance(decision, StartWave):
                log.info("rollout %d: wave %d of %d, %d devices -> %s", rollout_id, decision.wave + 1,
                         len(view.plan), len(decision.devices), view.bundle)
                versions = self.publisher.direct(decision.devices, target=view.bundle)
                self.rollouts.start_wave(rollout_id, decision.wave, versions, now)
            elif isinstance(decision, TimeOut):
                log.warning("rollout %d: %d devices timed out", rollout_id, len(decision.devices))
                self.rollouts.set_results(rollout_id, {
                    d: (DeviceResult.TIMED_OUT, f"no outcome within {view.wave_timeout_s:g}s")
                    for d in decision.devices}, now)
            elif isinstance(decision, Halt):
                log.warning("rollout %d halted: %s; directing %d devices back", rollout_id, decision.reason,
                            len(decision.rollback))
                self._roll_back(rollout_id, decision.rollback, RolloutStatus.HALTED, decision.reason, now)
            elif isinstance(decision, Abort):
                log.warning("rollout %d aborted; directing %d devices back", rollout_id, len(decision.rollback))
                self._roll_back(rollout_id, decision.rollback, RolloutStatus.ABORTED, "", now)
            elif isinstance(decision, Complete):
                log.info("rollout %d completed", rollout_id)
                self.rollouts.finish(rollout_id, RolloutStatus.COMPLETED, "", now)
                return

    def _reported_committed(self, view: RolloutView, found: dict[str, tuple[DeviceResult, str]]
                            ) -> dict[str, tuple[DeviceResult, str]]:
        """Pending devices whose retained `reported` says they run the bundle, healthy, with no
        update under way, having acted on this rollout's document (its director version or
        later), though no terminal
        event came: a broker SIGKILLed after acknowledging a device's `update.committed`, and
        before it saved or delivered it, loses that event for good; the retained state is sent
        again whenever the controller subscribes, so the wave need not time out for it."""
        pending = {d: v.director_version for d, v in view.devices.items()
                   if v.result == DeviceResult.PENDING.value and d not in found and v.director_version is not None}
        if not pending:
            return {}
        label = view.bundle.removesuffix(".fgb")
        out: dict[str, tuple[DeviceResult, str]] = {}
        ids = list(pending)
        with Session(self.rollouts.engine) as s:
            for i in range(0, len(ids), 500):
                q = select(DeviceRow.id, DeviceRow.active_bundle, DeviceRow.desired_version, DeviceRow.health,
                           DeviceRow.reported).where(DeviceRow.id.in_(ids[i:i + 500]))
                for device, active, version, health, reported in s.execute(q):
                    # Mid-update (committing, say) the new bundle already runs healthy: not yet.
                    phase = ((reported or {}).get("update") or {}).get("phase", "idle")
                    if active == label and health == "ok" and (version or 0) >= pending[device] and phase == "idle":
                        out[device] = (DeviceResult.COMMITTED, f"reported running {label} (no update event came)")
        if out:
            log.warning("rollout %d: %d devices report the bundle running without an update event",
                        view.id, len(out))
        return out

    def _republish_unseen(self, view: RolloutView, now: float) -> None:
        """Pending devices that have not reported acting on their document (its director
        version) get it once more, with a doubling interval."""
        due: dict[str, int] = {}
        for d, v in view.devices.items():
            if v.result != DeviceResult.PENDING.value or v.director_version is None or v.directed_at is None:
                continue
            when, interval = self._republished.get((view.id, d), (v.directed_at, REPUBLISH_AFTER_S))
            if now - when >= interval:
                due[d] = v.director_version
        if not due:
            return
        with Session(self.rollouts.engine) as s:
            rows = s.execute(select(DeviceRow.id, DeviceRow.desired_version).where(DeviceRow.id.in_(list(due))))
            seen: dict[str, int | None] = {d: version for d, version in rows}
        unseen = [d for d, version in due.items() if (seen.get(d) or 0) < version]
        for d in due:
            _when, interval = self._republished.get((view.id, d), (0.0, REPUBLISH_AFTER_S))
            self._republished[(view.id, d)] = (now, min(REPUBLISH_MAX_S, interval * 2))
        if unseen:
            n = self.publisher.republish(unseen)
            log.info("rollout %d: %d devices have not reported their document; published it again", view.id, n)

    def _roll_back(self, rollout_id: int, devices: tuple[str, ...], status: RolloutStatus, reason: str,
                   now: float) -> None:
        view = self.rollouts.get(rollout_id)
        targets = {d: view.devices[d].previous_target for d in devices}
        self.publisher.direct_each(targets)
        self.rollouts.finish(rollout_id, status, reason, now, rolled_back=targets)


def _previous_targets(store: Store, devices: list[str], published: set[str]) -> dict[str, str | None]:
    """What each device should return to: what the director last named, else what it runs
    (if that is published); read for all devices at once."""
    desired = store.repos.desired.many(devices)
    running = {d.id: d.active_bundle for d in store.devices()}
    out: dict[str, str | None] = {}
    for device in devices:
        named = desired.get(device)
        if named is not None and named.target is not None:
            out[device] = named.target
            continue
        bundle = running.get(device)  # None too for a device named by a rule, never registered
        out[device] = f"{bundle}.fgb" if bundle and f"{bundle}.fgb" in published else None
    return out


def start_rollout(store: Store, repo_dir: Path, bundle: str, group_name: str, policy: RolloutPolicy,
                  waves_spec: str) -> RolloutView:
    """Check and record a rollout (the leader's service carries it out): `fleetgen rollout
    start` and `POST /api/v1/rollouts` both come here. Raises UsageError (bad input: unpublished
    bundle, empty or busy group) or FleetError (unknown group)."""
    from agent.errors import UsageError
    from controller.fleet.rollout import plan_waves
    from controller.tuf.repository import Repository, RepositoryError

    try:
        published = set(Repository(repo_dir).targets().targets)
    except RepositoryError as e:
        raise UsageError(f"repository: {e}") from None
    if bundle not in published:
        raise UsageError(f"{bundle} is not a published target of {repo_dir} (see `fleetgen bundle publish`)")
    group = store.repos.groups.get(group_name)
    if not group.members:
        raise UsageError(f"group {group_name} has no devices: nothing to roll out to")
    busy = store.repos.rollouts.active_for(group.members)
    if busy:
        device, other = next(iter(busy.items()))
        raise UsageError(f"{len(busy)} devices of {group_name} are in unfinished rollout {other} "
                         f"(e.g. {device}); wait for it or abort it")
    online = {d.id for d in store.devices() if d.online}
    # Online devices first, so the first (canary) wave can answer.
    ordered = sorted(group.members, key=lambda d: (d not in online, d))
    plan = plan_waves(ordered, policy.waves)
    previous = _previous_targets(store, ordered, published)
    rollout_id = store.repos.rollouts.create(bundle, group_name, policy, waves_spec, plan, previous)
    return store.repos.rollouts.get(rollout_id)
