"""The agent daemon: one loop that owns the MQTT link, the device's state and its reports.

Everything inbound arrives through the link's inbox and is validated by the protocol
codec before any handler sees it; a refused message is logged with its reason and
reported as an event, and the loop goes on. Handlers run on this loop, never on paho's
network thread.

Outbound telemetry and events go through the durable spool (agent/spool.py): written
first, sent oldest first while the link is up, deleted once the controller confirms
storing them (`dev/{id}/stored`, ADR 0091). The update
lifecycle runs in agent/update/worker.py; the power governor (firmware/control.py) ticks
on this loop with the budget of the signed desired document (or agent.toml).
"""

from __future__ import annotations

import logging
import platform
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from agent import __version__
from agent.api.status import ApiStatus, DaemonStatus
from agent.config import AgentConfig
from agent.errors import FleetgenError, ProtocolError
from agent.fsutil import ensure_private_dir
from agent.mqtt.link import Delivery, Inbound, LinkDown, LinkError, LinkItem, LinkUp, MqttLink, Will
from agent.protocol import (
    CHANNELS,
    Channel,
    Event,
    PowerReport,
    Reported,
    SignedEnvelope,
    Status,
    Stored,
    TelemetryBatch,
    TelemetrySample,
    UpdateReport,
    decode,
    device_topic,
    encode,
    parse_topic,
)
from agent.protocol.messages import Details
from agent.sequence import SequenceCounter
from agent.spool import Kind, Spool
from agent.telemetry import Sampler
from agent.unconfirmed import Unconfirmed, seq_of
from agent.update.worker import ActiveBundle, DesiredApplied, Notice, Snapshot, UpdateWorker, WorkerPost, WorkerSettings

if TYPE_CHECKING:
    from agent.runtime.spin import GovernedKnobs
    from agent.trust.fetch import BoundedFetcher
    from firmware.control import PowerController

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
    budget_refused: int = 0
    resent: int = 0  # messages sent again: their confirmation was overdue, or the link came back
    confirmed: int = 0  # spool rows the controller confirmed storing


@dataclass(frozen=True)
class _Sent:
    """A message awaiting the controller's confirmation: its spool rows by seq."""

    rows: dict[int, int]
    delivery: Delivery


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
    previous_bundle: str | None = None
    slot: str | None = None
    desired_version: int = 0
    health: str = "unknown"
    update: UpdateReport | None = None
    budget_source: str = "none"  # "desired", "config" or "none"


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        state: DeviceState | None = None,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.time,
        power: PowerController | None = None,
        worker_settings: WorkerSettings | None = None,
        in_flight: Callable[[], int] = lambda: 0,
        power_tick_s: float | None = None,
    ) -> None:
        self.config = config
        self.device_id = config.device_id
        self.clock = clock
        self.state = state or DeviceState()
        self.stats = AgentStats()
        self.state_dir = ensure_private_dir(config.state_path)
        self.inbox: queue.Queue[LinkItem | WorkerPost] = queue.Queue(maxsize=10_000)
        self._event_seq = SequenceCounter(self.state_dir / "events.seq")
        self._emit_lock = threading.Lock()
        # Events leave at the next turn of the loop, not with the next telemetry batch: a
        # rollout waits on update.committed (samples keep their publish interval).
        self._event_added = threading.Event()
        self._telemetry_seq = SequenceCounter(self.state_dir / "telemetry.seq")
        self._sampler = sampler or Sampler(clock=clock)
        self.spool = Spool(self.state_dir / "spool.db", config.spool.max_bytes)
        # Sent and not yet confirmed stored by the controller (ADR 0091); rows given up on
        # keep their attempt count, so the wait before the next try keeps doubling.
        self._unconfirmed: Unconfirmed[_Sent] = Unconfirmed(config.spool.confirm_timeout_s, clock=time.monotonic)
        self._attempts: dict[int, int] = {}  # row id -> attempts so far
        self._refusals = _RefusalLimiter(_REFUSAL_EVENTS_PER_MINUTE)
        self._stop = threading.Event()
        self.handlers: dict[Channel, InboundHandler] = {Channel.DESIRED: self._on_desired,
                                                        Channel.STORED: self._on_stored}
        self.latest_desired: SignedEnvelope | None = None
        self.power = power
        self.power_tick_s = power_tick_s if power_tick_s is not None else (power.settings.tick_s if power else None)
        if power is not None and config.power.budget_w is not None:
            power.set_budget(config.power.budget_w)
            self.state.budget_source = "config"
        self.link = MqttLink(
            config.mqtt,
            client_id=config.mqtt.client_id or f"fleetgen-{self.device_id}",
            inbox=self.inbox,
            subscriptions=[
                (device_topic(self.device_id, Channel.DESIRED), 1),
                (device_topic(self.device_id, Channel.RESP), 1),
                (device_topic(self.device_id, Channel.STORED), 1),
            ],
            will=Will(self.topic(Channel.STATUS), self._status("offline")),
        )
        # Wiring for the local API and systemd (agent/cli/run.py fills these): called with the
        # bundle just made active, and on every turn of the main loop (the watchdog ping).
        self.on_bundle: list[Callable[[ActiveBundle], None]] = []
        self.on_tick: list[Callable[[], None]] = []
        self.started_at = time.monotonic()
        self._last_sample: TelemetrySample | None = None
        settings = worker_settings or worker_settings_from(config, self.state)
        self.updates = UpdateWorker(self.state_dir, self._fetcher, self.device_id, self.state.board,
                                    self._post, settings, in_flight=in_flight)
        # Finish or undo an install a power cut interrupted, before reporting what runs.
        self.updates.recover()
        self._apply_snapshot(self.updates.snapshot())

    @property
    def knobs(self) -> GovernedKnobs | None:
        """The governor's knobs for generation in this process: pass them to
        `agent.runtime.service.GenerationQueue(knobs=...)` (threads, admit, pacing, and
        whether the budget binds, which ORT's spinning follows: agent/runtime/spin.py)."""
        if self.power is None:
            return None
        from agent.runtime.spin import GovernedKnobs, SteadyFlag, budget_binds

        power = self.power
        return GovernedKnobs(power.runtime, SteadyFlag(lambda: budget_binds(power.last)))

    def set_in_flight(self, in_flight: Callable[[], int]) -> None:
        """How many generation requests are running (the local API's queue): an update
        drains them, within `[update] drain_timeout_s`, before it downloads."""
        self.updates.in_flight = in_flight

    def _fetcher(self) -> BoundedFetcher:
        from agent.trust.mqtt_fetcher import MqttFetcher

        return MqttFetcher(self.link, self.device_id, self.config.update.download_policy())

    # -- outbound --------------------------------------------------------------------

    def topic(self, channel: Channel) -> str:
        return device_topic(self.device_id, channel)

    def _status(self, state: str) -> bytes:
        return encode(Status(state=state, ts=self.clock(), agent_version=__version__))  # type: ignore[arg-type]

    def _publish(self, channel: Channel, message: msgspec.Struct) -> None:
        """Publish a retained document now (status, reported: the newest one is all that
        matters, so these do not go through the spool)."""
        spec = CHANNELS[channel]
        self._send(self.topic(channel), encode(message), spec.retained)

    def _send(self, topic: str, payload: bytes, retain: bool) -> Delivery | None:
        try:
            return self.link.publish(topic, payload, qos=1, retain=retain)
        except LinkError as e:
            self.stats.dropped_outbound += 1
            log.warning("dropped message for %s: %s", topic, e)
            return None

    def power_report(self) -> PowerReport | None:
        if self.power is None:
            return None
        d = self.power.last
        budget = self.power.governor.budget_w
        if d is None:
            return PowerReport(budget_w=budget)
        knobs: Details = {**d.knob_details(), "source": self.state.budget_source}
        return PowerReport(budget_w=budget, draw_w=max(0.0, d.measured_w), estimated=d.estimated, knobs=knobs)

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
            previous_bundle=s.previous_bundle,
            slot=s.slot,
            desired_version=s.desired_version,
            power=self.power_report(),
            health=s.health,  # type: ignore[arg-type]
            update=s.update,
            labels=dict(self.config.labels),  # agent.toml's [labels]: what groups select on
        )

    def publish_reported(self) -> None:
        self._publish(Channel.REPORTED, self.reported())

    def emit(self, kind: str, message: str = "", level: str = "info", details: Details | None = None) -> None:
        """Record an event in the spool; it leaves once the controller confirmed storing it."""
        with self._emit_lock:  # the loop and the update worker both emit
            seq = self._event_seq.next()
        event = Event(
            device_id=self.device_id,
            seq=seq,
            ts=self.clock(),
            kind=kind,
            level=level,  # type: ignore[arg-type]
            message=message[:4096],
            details=details or {},
        )
        self.spool.add("event", encode(event))
        self._event_added.set()

    # -- inbound ---------------------------------------------------------------------

    def _refuse(self, topic: str, reason: str) -> None:
        log.warning("refused message on %s: %s", topic, reason)
        if self._refusals.allow(time.monotonic()):
            self.emit("message.refused", reason, level="warning", details={"topic": topic[:256]})
        else:
            self.stats.refusal_events_suppressed += 1
        # Counted last: a test waiting on the counter then sees the log record and the event.
        self.stats.refused += 1

    def _post(self, item: WorkerPost) -> None:
        """From the update worker's thread. An event is in the spool when this returns (the
        worker journals the next step only then); the rest goes to this loop."""
        if isinstance(item, Notice):
            self.emit(item.kind, item.message, item.level, _details(item.details))
            return
        self.inbox.put(item)

    def handle(self, item: LinkItem | WorkerPost) -> None:
        if isinstance(item, Snapshot):
            self._apply_snapshot(item)
            self.publish_reported()
        elif isinstance(item, DesiredApplied):
            self._on_desired_applied(item)
        elif isinstance(item, LinkUp):
            self._on_link_up(item)
        elif isinstance(item, LinkDown):
            log.info("link down (%s); telemetry and events stay in the spool", item.reason)
        elif isinstance(item, Inbound):
            self._on_inbound(item)
        else:  # a Notice: the worker emits those itself (durably, before it journals)
            self.emit(item.kind, item.message, item.level, _details(item.details))

    def _apply_snapshot(self, snap: Snapshot) -> None:
        s = self.state
        before = s.active_bundle
        s.active_bundle = snap.active.label if snap.active else None
        if snap.active is not None and s.active_bundle != before:
            for hook in self.on_bundle:  # the local API switches to it
                hook(snap.active)
        s.slot = snap.active.path.name if snap.active else None
        s.previous_bundle = snap.previous.label if snap.previous else None
        s.desired_version = max(s.desired_version, snap.director_version)
        s.health = snap.health
        target = self.updates.state.target
        s.update = UpdateReport(phase=snap.phase, target=target.path if target else None,
                                last_result=snap.last_result,
                                last_error=snap.last_error[:4096] if snap.last_error else None)

    def _on_desired_applied(self, item: DesiredApplied) -> None:
        d = item.desired
        self.state.desired_version = max(self.state.desired_version, d.version)
        if self.power is not None:
            budget = d.power_budget_w if d.power_budget_w is not None else self.config.power.budget_w
            floor = self.power.governor.floor_w
            if budget is not None and budget <= 0:
                self.stats.budget_refused += 1
                self.emit("power.budget_refused", f"budget {budget:g} W is not a positive number",
                          "error", {"budget_w": budget})
            else:
                self.power.set_budget(budget)
                self.state.budget_source = ("desired" if d.power_budget_w is not None
                                            else "config" if budget is not None else "none")
                self._record_budget(budget, d.version)
                details: Details = {"budget_w": budget, "source": self.state.budget_source,
                                    "floor_w": round(floor, 3)}
                if budget is not None and budget < floor:
                    self.emit("power.budget_below_floor",
                              f"budget {budget:g} W is under the board's floor of {floor:.2f} W: "
                              "new work is queued", "warning", details)
                else:
                    self.emit("power.budget", f"power budget {budget} W", details=details)
        self.publish_reported()

    def _record_budget(self, budget: float | None, version: int) -> None:
        """For `fleetgen-agent generate`, which governs itself with the same budget."""
        from agent.budget import BudgetInForce, save_budget

        source = self.state.budget_source
        try:
            save_budget(self.state_dir, BudgetInForce(budget_w=budget, source=source,  # type: ignore[arg-type]
                                                      director_version=version))
        except OSError as e:
            log.warning("cannot record the power budget for local generation: %s", e)

    def _on_link_up(self, up: LinkUp) -> None:
        if not up.session_present:
            # The broker lost (or never had) our session: subscriptions were just renewed and
            # the retained desired state will be re-delivered, so nothing else to re-sync.
            log.info("no session on the broker; retained state will be re-delivered")
        # The broker may have lost anything not yet confirmed (a SIGKILLed Mosquitto loses
        # what it acknowledged): all of it is sent again (the controller drops duplicates).
        self._unconfirmed.all_due()
        self._send(self.topic(Channel.STATUS), self._status("online"), retain=True)
        self.publish_reported()
        self.pump()

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

    # -- telemetry and the spool -----------------------------------------------------

    def sample(self) -> None:
        sample = self._sampler.sample(self._telemetry_seq.next())
        power = self.power_report()
        if power is not None:
            sample = msgspec.structs.replace(sample, power=power)
        self._last_sample = sample
        self.spool.add("sample", msgspec.json.encode(sample))

    def flush_telemetry(self) -> None:
        self.pump()

    def pump(self, samples: bool = True) -> None:
        """Send spooled rows, oldest first, while the link is up and fewer than `max_in_flight`
        messages await the controller's confirmation (events first; samples too unless
        `samples` is false). Messages whose confirmation is overdue are sent again."""
        for pending in self._unconfirmed.take_due():
            for row_id in pending.item.rows.values():
                self._attempts[row_id] = pending.attempts
        if not self.link.connected:
            return
        limit = self.config.spool.max_in_flight
        busy = {r for p in self._unconfirmed for r in p.item.rows.values()}
        events_topic, telemetry_topic = self.topic(Channel.EVENTS), self.topic(Channel.TELEMETRY)
        for row in self.spool.oldest("event", max(0, limit - len(self._unconfirmed)), busy):
            seq = seq_of(row.payload)
            if not self._track("event", self._send(events_topic, row.payload, False), {seq: row.id}):
                return
        while samples and len(self._unconfirmed) < limit:
            batch_rows = self.spool.oldest("sample", self.config.spool.batch_samples, busy)
            if not batch_rows:
                return
            decoded = [msgspec.json.decode(r.payload, type=TelemetrySample) for r in batch_rows]
            batch = encode(TelemetryBatch(device_id=self.device_id, samples=decoded))
            rows = {s.seq: r.id for s, r in zip(decoded, batch_rows, strict=True)}
            if not self._track("sample", self._send(telemetry_topic, batch, False), rows):
                return
            busy.update(rows.values())

    def _track(self, kind: Kind, delivery: Delivery | None, rows: dict[int, int]) -> bool:
        if delivery is None:
            return False
        attempts = 1 + max((self._attempts.pop(r, 0) for r in rows.values()), default=0)
        if attempts > 1:
            self.stats.resent += 1
        self._unconfirmed.sent(kind, rows, _Sent(rows, delivery), attempts)
        return True

    def _drained(self) -> bool:
        """Every spooled row was sent and the broker acknowledged all of it; and confirmed,
        when a controller has been confirming (else a stop would wait for nobody)."""
        if self.stats.confirmed:
            return self.spool.stats().rows == 0
        tracked = sum(len(p.item.rows) for p in self._unconfirmed)
        return self.spool.stats().rows <= tracked and all(p.item.delivery.acked() for p in self._unconfirmed)

    def _on_stored(self, msg: Inbound, document: msgspec.Struct) -> None:
        """The controller committed these seqs: their rows leave the spool, and the window
        they held opens for more."""
        assert isinstance(document, Stored)
        done: list[int] = []
        for kind, spans in (("event", document.events), ("sample", document.samples)):
            for pending, seqs in self._unconfirmed.confirm_ranges(kind, spans):  # type: ignore[arg-type]
                done.extend(pending.item.rows[seq] for seq in seqs)
        self.spool.ack(done)
        self.stats.confirmed += len(done)
        self.pump()

    def status_snapshot(self, api: ApiStatus | None = None) -> DaemonStatus:
        """What `fleetgen-agent status` shows (read from the API's thread: plain reads only)."""
        s = self.state
        power = self.power_report()
        last = self._last_sample
        draw = power.draw_w if power is not None else (last.power_w if last is not None else None)
        estimated = power.estimated if power is not None else (last.power_estimated if last is not None else False)
        return DaemonStatus(
            device_id=self.device_id,
            agent_version=__version__,
            uptime_s=round(time.monotonic() - self.started_at, 1),
            link="connected" if self.link.connected else "disconnected",
            broker=str(self.link.broker),
            active_bundle=s.active_bundle,
            previous_bundle=s.previous_bundle,
            update_phase=s.update.phase if s.update is not None else "idle",
            budget_w=power.budget_w if power is not None else None,
            draw_w=draw,
            power_estimated=estimated,
            spool_depth=self.spool.stats().rows,
            api=api,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        log.info("agent %s starting (fleetgen %s, broker %s)", self.device_id, __version__, self.link.broker)
        stats = self.spool.stats()
        self.emit("agent.started", f"fleetgen {__version__}", details={
            "spooled": stats.rows, "dropped_samples": stats.dropped_samples,
            "dropped_events": stats.dropped_events, "corrupt_spool_files": stats.corrupt_files})
        self.updates.start()
        self.link.start()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Serve until `stop()`; then say goodbye (retained offline) and disconnect."""
        t = self.config.telemetry
        next_sample = time.monotonic()
        next_flush = next_sample + t.publish_interval_s
        power_tick = self.power_tick_s if self.power is not None else None
        next_power = next_sample
        while not self._stop.is_set():
            for tick in self.on_tick:
                tick()
            now = time.monotonic()
            if power_tick is not None and now >= next_power:
                self._tick_power()
                next_power = now + power_tick
            if now >= next_sample:
                self.sample()
                next_sample = now + t.sample_interval_s
            if now >= next_flush:
                self.pump()
                next_flush = now + t.publish_interval_s
            if self._event_added.is_set():
                self._event_added.clear()
                self.pump(samples=False)
            wake = min(next_sample, next_flush, next_power if power_tick is not None else next_flush)
            resend = self._unconfirmed.next_due()
            if resend is not None:
                if resend <= now:
                    self.pump()
                else:
                    wake = min(wake, resend)
            timeout = max(0.0, wake - time.monotonic())
            try:
                item = self.inbox.get(timeout=min(timeout, 0.5))
            except queue.Empty:
                continue
            self.handle(item)
        self.shutdown()

    def _tick_power(self) -> None:
        assert self.power is not None
        try:
            self.power.tick()
        except FleetgenError as e:
            log.warning("power governor tick failed: %s", e)

    def shutdown(self, drain_s: float = 2.0) -> None:
        if self.link.connected:
            # Drain the spool (bounded): until the controller confirmed everything if it has
            # been confirming, else until the broker has it all. What is left then stays, and
            # the next start sends it again.
            deadline = time.monotonic() + drain_s
            self.pump()
            while not self._drained() and time.monotonic() < deadline:
                try:
                    item = self.inbox.get(timeout=0.02)
                except queue.Empty:
                    item = None
                if isinstance(item, Inbound) and item.topic == self.topic(Channel.STORED):
                    self._on_inbound(item)  # other messages wait for the next start
                self.pump()
            try:
                self.link.publish(self.topic(Channel.STATUS), self._status("offline"), qos=1, retain=True, wait=1.5)
            except FleetgenError as e:
                log.warning("could not say goodbye: %s", e)
        self.updates.stop(timeout=3.0)
        self.link.stop()
        self.spool.close()
        log.info("agent %s stopped", self.device_id)


def _details(d: Details) -> Details:
    return {k[:64]: v for k, v in list(d.items())[:64]}


def worker_settings_from(config: AgentConfig, state: DeviceState, board_root: str | None = None) -> WorkerSettings:
    from pathlib import Path

    from agent.update.conditions import UpdateConditions, parse_window
    from agent.update.machine import Policy

    u = config.update
    conditions = UpdateConditions(
        window=parse_window(u.window) if u.window else None,
        battery_floor_pct=u.battery_floor_pct,
        disk_reserve_mb=u.disk_reserve_mb,
        drain_timeout_s=u.drain_timeout_s,
    )
    policy = Policy(max_retries=u.max_retries, backoff_base_s=u.backoff_base_s, backoff_max_s=u.backoff_max_s,
                    recheck_s=u.recheck_s, max_trial_attempts=u.max_trial_attempts)
    return WorkerSettings(policy=policy, conditions=conditions, providers=tuple(state.providers),
                          board_root=Path(board_root or config.board.root))
