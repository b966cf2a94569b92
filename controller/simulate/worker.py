"""One simulator process: many devices, one paho client each, one event loop for all.

Thousands of clients cannot each have a network thread, so the worker drives paho's
external loop itself (`loop_read`, `loop_write`, `loop_misc`) over a selector. Callbacks
run on this one thread; they only queue what the device answers.

Events and telemetry are kept until the controller confirms storing them (`dev/{id}/stored`)
and sent again when that is overdue or the connection comes back, as the agent's spool does
(ADR 0091): the numbers a simulated fleet reports then count what a real one would lose.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import selectors
import signal
import time
from dataclasses import dataclass, field
from types import FrameType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.errors import ProtocolError
from agent.mqtt.url import BrokerUrl
from agent.protocol import Channel, Stored, decode, device_topic, encode
from agent.protocol.topics import CHANNELS
from agent.spool import Kind
from agent.trust.director import DirectorKeys
from agent.unconfirmed import Unconfirmed, seq_of
from controller.simulate.boards import SimBoard
from controller.simulate.device import SimDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSetup:
    device_id: str
    board: SimBoard
    fails_health: bool
    goes_offline: bool
    bundle: str | None
    labels: dict[str, str]


@dataclass(frozen=True)
class WorkerSpec:
    broker: str
    devices: tuple[DeviceSetup, ...]
    director_keys: dict[str, bytes]
    director_threshold: int
    seed: int
    telemetry_interval_s: float = 2.0
    samples_per_batch: int = 2
    duration_s: float | None = None
    keepalive: int = 30


@dataclass
class WorkerStats:
    devices: int = 0
    samples_sent: int = 0
    batches_sent: int = 0
    events_sent: int = 0
    desired_received: int = 0
    connect_failures: int = 0
    resent: int = 0  # events and batches sent again (their confirmation was overdue or lost)
    confirmed: int = 0  # seqs the controller confirmed storing
    unconfirmed_at_exit: int = 0  # events still unconfirmed when the worker stopped (lost with it)


@dataclass
class _Sim:
    device: SimDevice
    client: paho.Client
    connected: bool = False
    gone: bool = False  # went offline on purpose
    next_telemetry: float = 0.0
    sock: object = None
    # Sent, not yet confirmed stored: (channel, payload) to send again.
    unconfirmed: Unconfirmed[tuple[Channel, bytes]] = field(default_factory=Unconfirmed)


@dataclass(order=True)
class _Due:
    at: float
    n: int
    sim: _Sim = field(compare=False)
    channel: Channel = field(compare=False)
    payload: bytes = field(compare=False)


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.broker = BrokerUrl.parse(spec.broker, "--broker")
        self.rng = random.Random(spec.seed)
        keys = DirectorKeys(spec.director_keys, spec.director_threshold)
        self.sims: list[_Sim] = []
        self.stats = WorkerStats(devices=len(spec.devices))
        self._due: list[_Due] = []
        self._n = itertools.count()
        self._stop = False
        self._selector = selectors.DefaultSelector()
        for setup in spec.devices:
            device = SimDevice(setup.device_id, setup.board, keys, random.Random(self.rng.random()),
                               load=self.rng.uniform(0.3, 0.8),
                               fails_health=setup.fails_health, goes_offline=setup.goes_offline,
                               active_bundle=setup.bundle, labels=dict(setup.labels))
            self.sims.append(_Sim(device, self._client(device)))

    def _client(self, device: SimDevice) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"fleetgen-{device.device_id}",
                             protocol=paho.MQTTv5)
        client.will_set(device_topic(device.device_id, Channel.STATUS),
                        encode(device.status("offline", time.time())), qos=1, retain=True)
        client.max_queued_messages_set(1000)
        return client

    # -- publishing -------------------------------------------------------------------

    def _publish(self, sim: _Sim, channel: Channel, payload: bytes) -> None:
        spec = CHANNELS[channel]
        sim.client.publish(device_topic(sim.device.device_id, channel), payload, qos=1, retain=spec.retained)

    def _send_kept(self, sim: _Sim, kind: Kind, seqs: list[int], channel: Channel, payload: bytes,
                   attempts: int = 1) -> None:
        """An event or a telemetry batch: kept until the controller confirms it stored."""
        self._publish(sim, channel, payload)
        sim.unconfirmed.sent(kind, seqs, (channel, payload), attempts)
        if attempts > 1:
            self.stats.resent += 1
        elif channel is Channel.EVENTS:
            self.stats.events_sent += 1

    def _resend_due(self) -> None:
        for sim in self.sims:
            if sim.gone:
                continue
            for pending in sim.unconfirmed.take_due():
                channel, payload = pending.item
                self._send_kept(sim, pending.kind, sorted(pending.seqs), channel, payload, pending.attempts + 1)

    def _schedule(self, sim: _Sim, delay: float, channel: Channel, payload: bytes) -> None:
        heapq.heappush(self._due, _Due(time.monotonic() + delay, next(self._n), sim, channel, payload))

    # -- callbacks (this thread) --------------------------------------------------------

    def _on_connect(self, sim: _Sim):
        def on_connect(client, userdata, flags, reason_code, properties) -> None:
            if reason_code.is_failure:
                self.stats.connect_failures += 1
                return
            sim.connected = True
            now = time.time()
            client.subscribe([(device_topic(sim.device.device_id, Channel.DESIRED), 1),
                              (device_topic(sim.device.device_id, Channel.STORED), 1)])
            sim.unconfirmed.all_due()  # a broker that restarted may have lost any of it
            self._publish(sim, Channel.STATUS, encode(sim.device.status("online", now)))
            self._publish(sim, Channel.REPORTED, encode(sim.device.reported(now)))
        return on_connect

    def _on_message(self, sim: _Sim):
        def on_message(client, userdata, message) -> None:
            if message.topic.endswith("/" + Channel.STORED.value):
                self._on_stored(sim, bytes(message.payload))
                return
            self.stats.desired_received += 1
            for out in sim.device.on_desired(bytes(message.payload), time.time()):
                self._schedule(sim, out.delay_s, out.channel, encode(out.message))
            if sim.device.offline and not sim.gone:
                sim.gone = True
                # MQTT 5 reason 0x04: disconnect and have the broker publish the Last Will.
                client.disconnect(reasoncode=ReasonCode(paho.PacketTypes.DISCONNECT, identifier=4))
        return on_message

    def _on_stored(self, sim: _Sim, payload: bytes) -> None:
        try:
            stored = decode(Channel.STORED, payload, sim.device.device_id)
        except ProtocolError as e:
            log.warning("%s: refused a stored confirmation: %s", sim.device.device_id, e)
            return
        assert isinstance(stored, Stored)
        for kind, spans in (("event", stored.events), ("sample", stored.samples)):
            for _pending, seqs in sim.unconfirmed.confirm_ranges(kind, spans):  # type: ignore[arg-type]
                self.stats.confirmed += len(seqs)

    def _on_disconnect(self, sim: _Sim):
        def on_disconnect(client, userdata, flags, reason_code, properties) -> None:
            sim.connected = False
        return on_disconnect

    # -- loop ---------------------------------------------------------------------------

    def _connect_all(self) -> None:
        for sim in self.sims:
            sim.client.on_connect = self._on_connect(sim)
            sim.client.on_message = self._on_message(sim)
            sim.client.on_disconnect = self._on_disconnect(sim)
            self._connect(sim)
            self._pump()

    def _connect(self, sim: _Sim) -> None:
        try:
            if sim.sock is None:
                sim.client.connect(self.broker.host, self.broker.port, self.spec.keepalive)
            else:
                sim.client.reconnect()
        except OSError as e:
            self.stats.connect_failures += 1
            log.debug("%s: connect failed: %s", sim.device.device_id, e)
            return
        sock = sim.client.socket()
        if sock is not None:
            if sim.sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sim.sock)  # type: ignore[arg-type]
            self._selector.register(sock, selectors.EVENT_READ, sim)
            sim.sock = sock
        sim.next_telemetry = time.monotonic() + self.rng.uniform(0, self.spec.telemetry_interval_s)

    def _pump(self, timeout: float = 0.0) -> None:
        for key, _ in self._selector.select(timeout):
            sim: _Sim = key.data
            if sim.client.loop_read() != paho.MQTT_ERR_SUCCESS:
                self._drop_socket(sim)

    def _drop_socket(self, sim: _Sim) -> None:
        sim.connected = False
        if sim.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sim.sock)  # type: ignore[arg-type]

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> WorkerStats:
        self._connect_all()
        started = time.monotonic()
        last_misc = 0.0
        last_retry = time.monotonic()
        while not self._stop:
            now = time.monotonic()
            if self.spec.duration_s is not None and now - started >= self.spec.duration_s:
                break
            while self._due and self._due[0].at <= now:
                due = heapq.heappop(self._due)
                # Disconnected too: paho keeps a QoS 1 message and sends it on reconnect, and the
                # event is kept until the controller confirms it, as a real agent's spool does
                # (dropping it here lost a device's `update.committed`: the wave timed out).
                if not due.sim.gone:
                    if due.channel is Channel.EVENTS:
                        self._send_kept(due.sim, "event", [seq_of(due.payload)], due.channel, due.payload)
                    else:
                        self._publish(due.sim, due.channel, due.payload)
            wall = time.time()
            for sim in self.sims:
                if sim.connected and now >= sim.next_telemetry:
                    sim.next_telemetry = now + self.spec.telemetry_interval_s
                    batch = sim.device.telemetry(wall, self.spec.samples_per_batch, self.spec.telemetry_interval_s)
                    self._send_kept(sim, "sample", [s.seq for s in batch.samples], Channel.TELEMETRY, encode(batch))
                    self.stats.batches_sent += 1
                    self.stats.samples_sent += len(batch.samples)
                if sim.client.want_write():
                    sim.client.loop_write()
            if now - last_misc >= 1.0:
                last_misc = now
                for sim in self.sims:
                    if sim.sock is not None and not sim.gone:
                        sim.client.loop_misc()
            if now - last_retry >= 1.0:
                last_retry = now
                self._resend_due()
                for sim in self.sims:
                    if not sim.connected and not sim.gone:
                        self._connect(sim)
            wait = 0.05
            if self._due:
                wait = max(0.0, min(wait, self._due[0].at - time.monotonic()))
            self._pump(wait)
        self._goodbye()
        return self.stats

    def _goodbye(self, drain_s: float = 8.0) -> None:
        """Send what is unconfirmed once more and wait (bounded) for its confirmation: a
        simulated device keeps nothing across runs, so this is its spool's last chance. Then
        say offline (retained) and disconnect cleanly, flushing what is queued."""
        for sim in self.sims:
            sim.unconfirmed.all_due()
        self._resend_due()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and any(len(s.unconfirmed) for s in self.sims if s.connected and not s.gone):
            for sim in self.sims:
                if sim.client.want_write():
                    sim.client.loop_write()
            self._pump(0.05)
        self.stats.unconfirmed_at_exit = sum(
            len(p.seqs) for s in self.sims for p in s.unconfirmed if p.kind == "event")
        for sim in self.sims:
            if sim.connected:
                self._publish(sim, Channel.STATUS, encode(sim.device.status("offline", time.time())))
                sim.client.disconnect()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(s.client.want_write() for s in self.sims if s.connected):
            for sim in self.sims:
                if sim.connected and sim.client.want_write():
                    sim.client.loop_write()
            self._pump(0.05)


def run_worker(spec: WorkerSpec, results) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    worker = Worker(spec)

    def _term(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    stats = worker.run()
    results.put(stats)
