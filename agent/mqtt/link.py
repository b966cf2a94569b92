"""The MQTT link: a small adapter over paho-mqtt 2.x, used by the agent and the controller.

Paho's callbacks run on the network thread. Here they only enqueue typed items into
the owner's inbox (`Inbound`, `LinkUp`, `LinkDown`) and never block or raise, so a bad
message can never kill that thread (PITFALLS). The owner consumes the inbox on its own
loop and publishes from there; `publish` is safe from any thread except paho callbacks.

The network loop is ours (not `loop_start`) so that reconnects use exponential backoff
with jitter and the very first connection is retried too. Sessions are persistent
(MQTT 5: clean_start off + session expiry; 3.1.1: clean_session off), so QoS 1 messages
sent while we are away are delivered when we return.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import FleetgenError
from agent.mqtt.backoff import Backoff
from agent.mqtt.settings import MqttSettings

log = logging.getLogger(__name__)


class LinkError(FleetgenError):
    """Publishing failed (not connected and the queue is full, or a timeout)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    retained: bool
    qos: int
    mid: int = 0  # for `MqttLink.ack` when the link acknowledges manually


@dataclass(frozen=True, slots=True)
class LinkUp:
    session_present: bool


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str


LinkItem = Inbound | LinkUp | LinkDown


class Delivery:
    """One QoS 1 publish: `acked()` turns true once the broker's PUBACK for it arrived."""

    __slots__ = ("_info",)

    def __init__(self, info: paho.MQTTMessageInfo) -> None:
        self._info = info

    def acked(self) -> bool:
        try:
            return bool(self._info.is_published())
        except (ValueError, RuntimeError):  # paho: the message was dropped from its queue
            return False

class Inbox(Protocol):
    """Where the link puts what it receives (a `queue.Queue` of the owner's items)."""

    def put_nowait(self, item: LinkItem) -> None: ...


# A handler runs on paho's network thread: it only validates and enqueues, never blocks.
Handler = Callable[[str, bytes], None]


def _match_filter(topic_filter: str) -> str:
    """The filter messages are matched against: `$share/GROUP/F` delivers topics matching F."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else topic_filter
    return topic_filter


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _network_thread_writes(client: paho.Client, userdata: object, sock: object) -> None:
    """paho's socket-write hook: nothing to do, `loop()` in the network thread writes."""


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        inbox: Inbox,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
    ) -> None:
        self.settings = settings.check()
        # With manual acks, a QoS 1 message that goes to the inbox is acknowledged only when
        # the owner calls `ack` (e.g. after committing it), so the broker keeps it until then.
        self.manual_ack = manual_ack
        # MQTT 5 Receive Maximum: how many unacknowledged QoS 1 messages the broker may send
        # us. Without it Mosquitto sends 20, so an owner that acks a batch after committing it
        # gets 20 messages per commit.
        self.receive_maximum = receive_maximum
        self.broker = settings.broker()
        self.client_id = client_id
        self.inbox = inbox
        self.subscriptions = list(subscriptions)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self.dropped_inbound = 0
        self._handlers: dict[str, Handler] = {}
        self._handlers_lock = threading.Lock()
        self._last_publish: paho.MQTTMessageInfo | None = None
        self._client = self._make_client(will)

    @classmethod
    def open(cls, settings: MqttSettings, client_id: str | None = None, wait: float = 10.0) -> MqttLink:
        """A started link for a short-lived tool (a CLI, a test): no inbox consumer, handlers only."""
        # A tool's session ends with it, so it leaves nothing queued on the broker.
        settings = msgspec.structs.replace(settings, session_expiry=0)
        link = cls(settings, client_id or f"fleetgen-tool-{uuid.uuid4().hex[:12]}", queue.Queue(maxsize=1000))
        link.start(wait=wait)
        return link

    # -- setup ---------------------------------------------------------------------

    @property
    def v5(self) -> bool:
        return self.settings.protocol == "5"

    def _make_client(self, will: Will | None) -> paho.Client:
        s = self.settings
        if self.v5:
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5
            )
        else:
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=paho.MQTTv311,
                # 3.1.1 has no expiry: a persistent session unless expiry 0 asks for none.
                clean_session=s.session_expiry == 0,
            )
        client.max_queued_messages_set(s.max_queued)
        if self.manual_ack:
            client.manual_ack_set(True)
        client.max_inflight_messages_set(s.max_inflight)
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        if self.broker.tls:
            client.tls_set(
                ca_certs=s.ca_file,
                certfile=s.cert_file,
                keyfile=s.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # Only the network thread writes to the socket. paho takes our own loop for "not
        # threaded" and has publish()/ack() from other threads write the socket themselves,
        # concurrently with loop(): over TLS that corrupts the stream ("bad record mac", the
        # broker drops the link), and in plain TCP interleaved packets stalled a busy
        # controller's ingest (tests/bench/controller.py). With a socket-write hook set, paho
        # only queues the packet and wakes loop() through its socket pair.
        client.on_socket_register_write = _network_thread_writes
        return client

    # -- paho callbacks (network thread: enqueue only) ------------------------------

    def _put(self, item: LinkItem) -> None:
        try:
            self.inbox.put_nowait(item)
        except queue.Full:
            self.dropped_inbound += 1
            log.warning("inbox full: dropped %s", type(item).__name__)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker %s refused the connection: %s", self.broker, reason_code)
            return
        self._connected.set()
        self._backoff.reset()
        with self._handlers_lock:
            filters = [*self.subscriptions, *((f, 1) for f in self._handlers)]
        if filters:
            client.subscribe(filters)
        log.info(
            "connected to %s (MQTT %s, session present: %s)",
            self.broker, self.settings.protocol, flags.session_present,
        )
        self._put(LinkUp(session_present=bool(flags.session_present)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected:
            if self._stop.is_set():  # the disconnect stop() asked for: nothing is wrong
                log.debug("disconnected from %s: %s", self.broker, reason_code)
            else:
                log.warning("disconnected from %s: %s", self.broker, reason_code)
            self._put(LinkDown(reason=str(reason_code)))

    def _on_message(self, client, userdata, message) -> None:
        with self._handlers_lock:
            handlers = [h for f, h in self._handlers.items() if paho.topic_matches_sub(_match_filter(f), message.topic)]
        if not handlers:
            self._put(Inbound(message.topic, bytes(message.payload), bool(message.retain), message.qos,
                              message.mid))
            return
        for handler in handlers:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:
                # A handler bug must not kill paho's network thread.
                log.exception("handler for %s failed", message.topic)
        if self.manual_ack:
            client.ack(message.mid, message.qos)

    # -- network loop ---------------------------------------------------------------

    def _connect_once(self, first: bool) -> None:
        if not first:
            self._client.reconnect()
            return
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.session_expiry
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
            self._client.connect(
                self.broker.host, self.broker.port, self.settings.keepalive,
                clean_start=False, properties=props,
            )
        else:
            self._client.connect(self.broker.host, self.broker.port, self.settings.keepalive)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                # paho stores host/port/properties on the first call even when it fails,
                # so every later attempt is a plain reconnect().
                attempt_first, first = first, False
                self._connect_once(attempt_first)
            except (OSError, ssl.SSLError) as e:
                delay = self._backoff.next()
                log.warning("cannot reach broker %s (%s); retrying in %.1fs", self.broker, e, delay)
                self._stop.wait(delay)
                continue
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.2)
                if rc != paho.MQTT_ERR_SUCCESS:
                    break
            if self._stop.is_set():
                break
            self._connected.clear()
            delay = self._backoff.next()
            log.info("connection to %s lost; reconnecting in %.1fs", self.broker, delay)
            self._stop.wait(delay)

    def start(self, wait: float | None = None) -> None:
        """Start the network thread; with `wait`, raise LinkError if not connected in time."""
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.client_id}", daemon=True)
        self._thread.start()
        if wait is not None and not self._connected.wait(wait):
            self.stop()
            raise LinkError(f"no connection to {self.broker} within {wait:g}s")

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (the broker discards the Last Will) and stop the thread."""
        # Set first, so that the disconnect below reads as asked for, not as a lost link.
        self._stop.set()
        if self._connected.is_set():
            try:
                self._client.disconnect()
                self._client.loop(timeout=0.2)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._connected.clear()

    # -- owner API ------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages matching `topic_filter` to `handler` (not the inbox), now and
        after every reconnect."""
        with self._handlers_lock:
            self._handlers[topic_filter] = handler
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._handlers_lock:
            self._handlers.pop(topic_filter, None)
        if self._connected.is_set():
            self._client.unsubscribe(topic_filter)

    def ack(self, mid: int, qos: int) -> None:
        """Acknowledge an inbox message (manual-ack links only); a no-op for QoS 0."""
        if self.manual_ack and qos > 0:
            self._client.ack(mid, qos)

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Round-trip a message through the broker so that earlier SUBSCRIBEs are in force."""
        topic = f"fleetgen/v1/_sync/{uuid.uuid4().hex}"
        done = threading.Event()
        self.subscribe(topic, lambda _t, _p: done.set())
        try:
            self.publish(topic, b"", qos=1)
            if not done.wait(timeout):
                raise LinkError(f"broker round-trip took more than {timeout:g}s")
        finally:
            self.unsubscribe(topic)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the broker acknowledged the latest QoS 1 publish."""
        if self._last_publish is not None:
            self._wait_ack(self._last_publish, "latest publish", timeout)

    @staticmethod
    def _wait_ack(info: paho.MQTTMessageInfo, what: str, timeout: float) -> None:
        try:
            info.wait_for_publish(timeout=timeout)
        except (ValueError, RuntimeError) as e:
            raise LinkError(f"{what} not acknowledged: {e}") from None
        if not info.is_published():
            raise LinkError(f"{what} not acknowledged within {timeout:g}s")

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *,
        wait: float | None = None,
    ) -> Delivery:
        """Queue a message (paho queues it while disconnected, up to `max_queued`).

        With `wait`, block up to that many seconds for the broker's acknowledgement. The
        returned `Delivery` tells when the broker acknowledged it (the spool deletes a row
        only then).
        """
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise LinkError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        self._last_publish = info
        if wait is not None:
            self._wait_ack(info, f"publish to {topic}", wait)
        return Delivery(info)
