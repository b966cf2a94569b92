"""The agent daemon: one loop that owns the MQTT link, the device's state and its reports.

Everything inbound arrives through the link's inbox and is validated by the protocol
codec before any handler sees it; a refused message is logged with its reason and
reported as an event, and the loop goes on. Handlers run on this loop, never on paho's
network thread.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from agent import __version__
from agent.api.status import ApiStatus, DaemonStatus
from agent.config import AgentConfig
from agent.errors import FleetgenError, ProtocolError
from agent.fsutil import ensure_private_dir
from agent.manifest import load_manifest
from agent.mqtt.link import Inbound, LinkDown, LinkError, LinkItem, LinkUp, MqttLink, Will
from agent.protocol import (
    CHANNELS,
    Channel,
    Event,
    Reported,
    SignedEnvelope,
    Status,
    TelemetryBatch,
    TelemetrySample,
    decode,
    device_topic,
    encode,
    parse_topic,
)
from agent.protocol.messages import Details
from agent.sequence import SequenceCounter
from agent.store import BundleStore
from agent.telemetry import Sampler
from agent.updates import ActiveBundle, UpdateOutcome, UpdateWorker, active_bundle

log = logging.getLogger(__name__)

# Refusal events are rate limited so a flood of garbage cannot become a flood of events;
# every refusal is still logged.
_REFUSAL_EVENTS_PER_MINUTE = 30
_MAX_BATCH = 500

InboundHandler = Callable[[Inbound, msgspec.Struct], None]


@dataclass
class AgentStats:
    received: int = 0
    refused: int = 0
    handler_errors: int = 0
    refusal_events_suppressed: int = 0
    dropped_outbound: int = 0


@dataclass
class _RefusalLimiter:
    per_minute: int
    window_start: float = 0.0
    count: int = 0

    def allow(self, now: float) -> bool:
        if now - self.window_start >= 60:
            self.window_start, self.count = now, 0
        self.count += 1
        return self.count <= self.per_minute


@dataclass
class DeviceState:
    """What the agent reports as its retained `reported` document."""

    board: str = field(default_factory=platform.machine)
    accelerators: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    active_bundle: str | None = None
    slot: str | None = None
    desired_version: int = 0
    health: str = "unknown"


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        state: DeviceState | None = None,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.clock = clock
        self.state = state or DeviceState()
        self.stats = AgentStats()
        self.state_dir = ensure_private_dir(config.state_path)
        self.inbox: queue.Queue[LinkItem | UpdateOutcome] = queue.Queue(maxsize=10_000)
        self._event_seq = SequenceCounter(self.state_dir / "events.seq")
        self._telemetry_seq = SequenceCounter(self.state_dir / "telemetry.seq")
        self._sampler = sampler or Sampler(clock=clock)
        self._pending_samples: list[TelemetrySample] = []
        self._last_sample: TelemetrySample | None = None
        self._refusals = _RefusalLimiter(_REFUSAL_EVENTS_PER_MINUTE)
        self._stop = threading.Event()
        self.handlers: dict[Channel, InboundHandler] = {Channel.DESIRED: self._on_desired}
        self.latest_desired: SignedEnvelope | None = None
        self.link = MqttLink(
            config.mqtt,
            client_id=config.mqtt.client_id or f"fleetgen-{self.device_id}",
            inbox=self.inbox,
            subscriptions=[
                (device_topic(self.device_id, Channel.DESIRED), 1),
                (device_topic(self.device_id, Channel.RESP), 1),
            ],
            will=Will(self.topic(Channel.STATUS), self._status("offline")),
        )
        # Finish or undo an install a power cut interrupted, before reporting what runs.
        BundleStore(self.state_dir).recover()
        current = active_bundle(self.state_dir)
        if current is not None:
            self.state.active_bundle = current.label
        self.updates = UpdateWorker(self.state_dir, self.link, self.device_id, self.state.board, self._post)
        # Wiring for the local API and systemd (agent/cli/run.py fills these): called with the
        # bundle just committed, and on every turn of the main loop (the watchdog ping).
        self.on_bundle: list[Callable[[ActiveBundle], None]] = []
        self.on_tick: list[Callable[[], None]] = []
        self.started_at = time.monotonic()

    # -- outbound --------------------------------------------------------------------

    def topic(self, channel: Channel) -> str:
        return device_topic(self.device_id, channel)

    def _status(self, state: str) -> bytes:
        return encode(Status(state=state, ts=self.clock(), agent_version=__version__))  # type: ignore[arg-type]

    def _publish(self, channel: Channel, message: msgspec.Struct) -> None:
        """Queue a document; when even paho's bounded queue is full (a long outage), drop it
        with a warning rather than stop the loop."""
        spec = CHANNELS[channel]
        self._send(self.topic(channel), encode(message), spec.retained)

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        try:
            self.link.publish(topic, payload, qos=1, retain=retain)
        except LinkError as e:
            self.stats.dropped_outbound += 1
            log.warning("dropped message for %s: %s", topic, e)

    def reported(self) -> Reported:
        s = self.state
        return Reported(
            device_id=self.device_id,
            agent_version=__version__,
            board=s.board,
            ts=self.clock(),
            accelerators=s.accelerators,
            providers=s.providers,
            active_bundle=s.active_bundle,
            slot=s.slot,
            desired_version=s.desired_version,
            health=s.health,  # type: ignore[arg-type]
        )

    def publish_reported(self) -> None:
        self._publish(Channel.REPORTED, self.reported())

    def emit(self, kind: str, message: str = "", level: str = "info", details: Details | None = None) -> None:
        event = Event(
            device_id=self.device_id,
            seq=self._event_seq.next(),
            ts=self.clock(),
            kind=kind,
            level=level,  # type: ignore[arg-type]
            message=message[:4096],
            details=details or {},
        )
        self._publish(Channel.EVENTS, event)

    # -- inbound ---------------------------------------------------------------------

    def _refuse(self, topic: str, reason: str) -> None:
        self.stats.refused += 1
        log.warning("refused message on %s: %s", topic, reason)
        if self._refusals.allow(time.monotonic()):
            self.emit("message.refused", reason, level="warning", details={"topic": topic[:256]})
        else:
            self.stats.refusal_events_suppressed += 1

    def _post(self, item: UpdateOutcome) -> None:
        """From the update worker's thread: hand the outcome to this loop."""
        self.inbox.put(item)

    def handle(self, item: LinkItem | UpdateOutcome) -> None:
        if isinstance(item, UpdateOutcome):
            self._on_update(item)
        elif isinstance(item, LinkUp):
            self._on_link_up(item)
        elif isinstance(item, LinkDown):
            log.info("link down (%s); samples keep accumulating", item.reason)
        else:
            self._on_inbound(item)

    def _on_link_up(self, up: LinkUp) -> None:
        if not up.session_present:
            # The broker lost (or never had) our session: subscriptions were just renewed and
            # the retained desired state will be re-delivered, so nothing else to re-sync.
            log.info("no session on the broker; retained state will be re-delivered")
        self._send(self.topic(Channel.STATUS), self._status("online"), retain=True)
        self.publish_reported()

    def _on_inbound(self, msg: Inbound) -> None:
        self.stats.received += 1
        try:
            device_id, channel = parse_topic(msg.topic)
            if device_id != self.device_id:
                raise ProtocolError(f"topic belongs to device {device_id!r}, not to us")
            handler = self.handlers.get(channel)
            if handler is None:
                raise ProtocolError(f"the agent accepts no messages on {channel.value}")
            document = decode(channel, msg.payload, device_id)
        except ProtocolError as e:
            self._refuse(msg.topic, str(e))
            return
        try:
            handler(msg, document)
        except FleetgenError as e:
            self.stats.handler_errors += 1
            log.error("handling %s failed: %s", msg.topic, e)
            self.emit("error", str(e), level="error", details={"topic": msg.topic[:256]})
        except Exception as e:
            # A bug must not take the daemon down; it is logged with its traceback.
            self.stats.handler_errors += 1
            log.exception("bug while handling %s", msg.topic)
            self.emit("error", f"internal error: {type(e).__name__}: {e}", level="error")

    def _on_desired(self, msg: Inbound, document: msgspec.Struct) -> None:
        assert isinstance(document, SignedEnvelope)
        self.latest_desired = document
        log.info("desired state received (%d bytes, retained=%s)", len(document.payload), msg.retained)
        self.emit("desired.received", details={"retained": msg.retained, "bytes": len(document.payload)})
        self.updates.submit(document)

    def _on_update(self, outcome: UpdateOutcome) -> None:
        from agent.trust.errors import TrustError
        from agent.trust.events import installed_event, refusal_event

        if outcome.active is not None:
            self.state.active_bundle = outcome.active.label
        if outcome.error is not None:
            if isinstance(outcome.error, TrustError):
                self._publish(Channel.EVENTS, refusal_event(self.device_id, self._event_seq.next(), outcome.error))
            else:
                self.emit("update.failed", str(outcome.error), level="error")
        else:
            if outcome.director_version is not None:
                self.state.desired_version = outcome.director_version
            if outcome.installed_sha256 is not None and outcome.active is not None:
                log.info("now running %s", outcome.active.label)
                for hook in self.on_bundle:
                    hook(outcome.active)
                self._publish(Channel.EVENTS, installed_event(
                    self.device_id, self._event_seq.next(), outcome.active.name, outcome.active.version,
                    outcome.installed_sha256))
        self.publish_reported()

    # -- telemetry -------------------------------------------------------------------

    def sample(self) -> None:
        self._last_sample = self._sampler.sample(self._telemetry_seq.next())
        self._pending_samples.append(self._last_sample)

    def flush_telemetry(self) -> None:
        while self._pending_samples:
            batch, self._pending_samples = self._pending_samples[:_MAX_BATCH], self._pending_samples[_MAX_BATCH:]
            self._publish(Channel.TELEMETRY, TelemetryBatch(device_id=self.device_id, samples=batch))

    def status_snapshot(self, api: ApiStatus | None = None) -> DaemonStatus:
        """What `fleetgen-agent status` shows (read from the API's thread: plain reads only)."""
        last = self._last_sample
        return DaemonStatus(
            device_id=self.device_id,
            agent_version=__version__,
            uptime_s=round(time.monotonic() - self.started_at, 1),
            link="connected" if self.link.connected else "disconnected",
            broker=str(self.link.broker),
            active_bundle=self.state.active_bundle,
            previous_bundle=_previous_label(self.state_dir),
            update_phase="idle",
            budget_w=None,
            draw_w=last.power_w if last is not None else None,
            power_estimated=last.power_estimated if last is not None else False,
            spool_depth=len(self._pending_samples),
            api=api,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        log.info("agent %s starting (fleetgen %s, broker %s)", self.device_id, __version__, self.link.broker)
        self.updates.start()
        self.link.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Serve until `stop()`; then say goodbye (retained offline) and disconnect."""
        t = self.config.telemetry
        next_sample = time.monotonic()
        next_flush = next_sample + t.publish_interval_s
        while not self._stop.is_set():
            for tick in self.on_tick:
                tick()
            now = time.monotonic()
            if now >= next_sample:
                self.sample()
                next_sample = now + t.sample_interval_s
            if now >= next_flush:
                self.flush_telemetry()
                next_flush = now + t.publish_interval_s
            timeout = max(0.0, min(next_sample, next_flush) - time.monotonic())
            try:
                item = self.inbox.get(timeout=min(timeout, 0.5))
            except queue.Empty:
                continue
            self.handle(item)
        self.shutdown()

    def shutdown(self) -> None:
        if self.link.connected:
            try:
                self.flush_telemetry()
                self.link.publish(self.topic(Channel.STATUS), self._status("offline"), qos=1, retain=True, wait=2.0)
            except FleetgenError as e:
                log.warning("could not say goodbye: %s", e)
        self.updates.stop()
        self.link.stop()
        log.info("agent %s stopped", self.device_id)


def _previous_label(state_dir: Path) -> str | None:
    """name-version of the bundle `previous` points at (what a rollback would return to)."""
    link = state_dir / "previous"
    if not link.is_symlink():
        return None
    try:
        manifest = load_manifest(state_dir / os.readlink(link))
    except (OSError, FleetgenError):
        return None
    return f"{manifest.name}-{manifest.version}"
