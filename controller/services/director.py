"""The director publisher: signs a device's next desired document and publishes it.

It composes the whole document from the store's desired state (target and power budget),
changing only what the caller asks, so a rollout never drops a device's power budget and a
power re-allocation never drops its target. The version comes from the store's counter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from agent.protocol.messages import TargetRef
from agent.trust.transport import Transport
from controller.director import Director, publish_desired
from controller.store.desired import KEEP, DesiredRepository

log = logging.getLogger(__name__)


class DirectorPublisher:
    def __init__(self, director: Director, desired: DesiredRepository, transport: Transport,
                 clock: Callable[[], float] = time.time) -> None:
        self.director = director
        self.desired = desired
        self.transport = transport
        self.clock = clock
        self.published = 0

    def direct(self, devices: Iterable[str], *, target: str | None = KEEP,
               power_budget_w: float | None = KEEP) -> dict[str, int]:
        """Sign and publish the next document for each device; returns their versions (revoked
        devices are left out)."""
        refs: dict[str, TargetRef] = {}

        def ref(path: str | None) -> TargetRef | None:
            if path is None:
                return None
            if path not in refs:
                refs[path] = self.director.repo.target_ref(path)
            return refs[path]

        devices = list(devices)
        # A revoked device gets no more documents, whoever asks (a rollout that read its plan
        # just before the revocation, the power allocator, the web API).
        revoked = self.desired.revoked(devices)
        if revoked:
            log.warning("not directing %d revoked device(s): %s", len(revoked), ", ".join(sorted(revoked)[:5]))
        directed = [d for d in devices if d not in revoked]
        if not directed:
            return {}
        # One transaction for all the versions (a wave of 500 is one commit, not 500).
        views = self.desired.next_versions(directed, target=target, power_budget_w=power_budget_w,
                                           floors=self.director.legacy_versions(), now=self.clock())
        versions: dict[str, int] = {}
        for device in directed:
            view = views[device]
            envelope = self.director.signed(device, view.version, ref(view.target),
                                            power_budget_w=view.power_budget_w, now=self.clock())
            publish_desired(self.transport, device, envelope)
            versions[device] = view.version
            self.published += 1
        return versions

    def republish(self, devices: Iterable[str]) -> int:
        """Sign each device's current document again, same version, and publish it: for a
        broker that acknowledged the retained copy and lost it (SIGKILLed before it saved
        it). The agent takes an equal version as the same document (ADR 0074)."""
        views = self.desired.many(devices)
        revoked = self.desired.revoked(views)
        refs: dict[str, TargetRef] = {}
        n = 0
        for device, view in views.items():
            if device in revoked:
                continue
            ref = None
            if view.target is not None:
                ref = refs.get(view.target) or refs.setdefault(view.target, self.director.repo.target_ref(view.target))
            envelope = self.director.signed(device, view.version, ref, power_budget_w=view.power_budget_w,
                                            now=self.clock())
            publish_desired(self.transport, device, envelope)
            n += 1
        self.published += n
        return n

    def direct_each(self, targets: dict[str, Any]) -> dict[str, int]:
        """Each device to its own target (a rollback to each one's previous bundle)."""
        versions: dict[str, int] = {}
        by_target: dict[Any, list[str]] = {}
        for device, target in targets.items():
            by_target.setdefault(target, []).append(device)
        for target, devices in by_target.items():
            versions.update(self.direct(devices, target=target))
        return versions
