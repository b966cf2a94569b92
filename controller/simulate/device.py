"""One simulated device: what it publishes and how it answers a desired document.

No MQTT here: `SimDevice` turns inputs (a desired payload, the clock) into messages to
publish, each with a delay, and the worker process sends them. Desired documents go
through the agent's own checks (`agent.trust.director.verify_desired`: signature by a
director key pinned in the root, device, version, expiry), so a forged, replayed or
misrouted document is refused exactly as a real agent refuses it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import msgspec

from agent.errors import ProtocolError
from agent.protocol import (
    Event,
    PowerReport,
    Reported,
    SignedEnvelope,
    Status,
    TelemetryBatch,
    TelemetrySample,
    decode_as,
)
from agent.protocol.messages import Details
from agent.protocol.topics import CHANNELS, Channel
from agent.trust.director import DirectorKeys, claimed_version, verify_desired
from agent.trust.errors import TrustError
from controller.simulate.boards import SimBoard

AGENT_VERSION = "sim-1"
STEP_S = 0.02  # between two events of an update


@dataclass(frozen=True, slots=True)
class Outgoing:
    delay_s: float
    channel: Channel
    message: msgspec.Struct


def bundle_label(target_path: str) -> str:
    return target_path.removesuffix(".fgb")


@dataclass
class SimDevice:
    device_id: str
    board: SimBoard
    keys: DirectorKeys
    rng: random.Random
    fails_health: bool = False  # fails the health check of every bundle but its first
    goes_offline: bool = False  # drops off the network when it gets a new target
    active_bundle: str | None = None
    labels: Details = field(default_factory=dict)
    highest_version: int = 0
    budget_w: float | None = None
    health: str = "ok"
    telemetry_seq: int = 0
    event_seq: int = 0
    last_draw_w: float | None = None
    samples_sent: int = 0
    offline: bool = False
    good_bundles: set[str] = field(default_factory=set)
    load: float = 0.5  # drifts slowly, as a device's workload does

    def __post_init__(self) -> None:
        if self.active_bundle:
            self.good_bundles.add(self.active_bundle)

    # -- documents ----------------------------------------------------------------------

    def status(self, state: str, now: float) -> Status:
        return Status(state=state, ts=now, agent_version=AGENT_VERSION)  # type: ignore[arg-type]

    def reported(self, now: float) -> Reported:
        return Reported(
            device_id=self.device_id, agent_version=AGENT_VERSION, board=self.board.id, ts=now,
            active_bundle=self.active_bundle, slot="a", desired_version=self.highest_version,
            power=PowerReport(budget_w=self.budget_w, draw_w=self.last_draw_w),
            health=self.health, labels=self.labels)  # type: ignore[arg-type]

    def _event(self, now: float, kind: str, message: str = "", level: str = "info",
               details: Details | None = None) -> Event:
        self.event_seq += 1
        return Event(device_id=self.device_id, seq=self.event_seq, ts=now, kind=kind,
                     level=level, message=message, details=details or {})  # type: ignore[arg-type]

    def telemetry(self, now: float, count: int, interval_s: float) -> TelemetryBatch:
        samples = []
        for i in range(count):
            self.telemetry_seq += 1
            self.load = min(1.0, max(0.0, 0.95 * self.load + 0.05 * self.rng.betavariate(2, 2)))
            watts = self.board.draw(self.rng, self.budget_w, self.load)
            self.last_draw_w = watts
            samples.append(TelemetrySample(
                seq=self.telemetry_seq, ts=now - interval_s * (count - 1 - i) / count,
                cpu_pct=round(self.rng.uniform(5, 95), 1), mem_used_mb=round(self.rng.uniform(300, 900), 1),
                mem_total_mb=4096.0, temp_c=round(self.rng.uniform(38, 70), 1), power_w=watts,
                power_estimated=self.board.id.startswith("generic"),
                tokens_per_s=round(self.rng.uniform(20, 60), 2), requests=self.rng.randint(0, 3)))
        self.samples_sent += count
        return TelemetryBatch(device_id=self.device_id, samples=samples)

    # -- desired state ------------------------------------------------------------------

    def on_desired(self, payload: bytes, now: float) -> list[Outgoing]:
        """Verify a desired document and return what the device says, in order."""
        if not payload:
            return []
        try:
            envelope = decode_as(SignedEnvelope, payload, CHANNELS[Channel.DESIRED].max_bytes)
            state = verify_desired(envelope, self.keys, device_id=self.device_id, now=now,
                                   highest_version=self.highest_version)
        except TrustError as e:
            details: Details = dict(e.details())
            claimed = claimed_version(envelope)  # as the agent names it (agent/update/worker.py)
            if claimed is not None:
                details["director_version"] = claimed
            event = self._event(now, "update.refused", str(e)[:4096], "error", details)
            return [Outgoing(0.0, Channel.EVENTS, event)]
        except ProtocolError as e:
            event = self._event(now, "message.refused", str(e)[:4096], "warning")
            return [Outgoing(0.0, Channel.EVENTS, event)]
        self.highest_version = state.version
        if state.power_budget_w is not None or self.budget_w is not None:
            self.budget_w = state.power_budget_w
        out: list[Outgoing] = []
        target = state.target
        if target is None or bundle_label(target.path) == self.active_bundle:
            out.append(Outgoing(0.0, Channel.REPORTED, self.reported(now)))
            return out
        label = bundle_label(target.path)
        ctx: Details = {"director_version": state.version, "target": target.path}
        if self.goes_offline:
            self.offline = True
            return []
        t = 0.0

        def step(kind: str, message: str = "", level: str = "info", extra: Details | None = None) -> None:
            nonlocal t
            t += STEP_S
            out.append(Outgoing(t, Channel.EVENTS, self._event(now + t, kind, message, level,
                                                                {**ctx, **(extra or {})})))

        step("update.started", f"installing {label}")
        step("update.downloading", extra={"bytes": target.length, "total": target.length})
        step("update.verified")
        step("update.switched", extra={"slot": "b"})
        healthy = not self.fails_health or label in self.good_bundles
        step("update.health", extra={"ok": healthy})
        if healthy:
            self.active_bundle = label
            self.good_bundles.add(label)
            self.health = "ok"
            step("update.committed", f"now running {label}")
        else:
            self.health = "degraded"
            step("update.rolled_back", f"health check of {label} failed: self-test produced no tokens",
                 "error", {"reason": "selftest", "check": "selftest"})
        out.append(Outgoing(t + STEP_S, Channel.REPORTED, self.reported(now + t)))
        return out
