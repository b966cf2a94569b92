"""The tiny publish/subscribe interface that the MQTT fetcher and the controller's
responder need, and an adapter on plain paho-mqtt 2.x.

Contract of `Transport` (the agent's MQTT link implements the same three methods):

- `publish(topic, payload, qos=1, retain=False)`: queue a message; never blocks for
  long (the outgoing queue is bounded); raises `TransportError` if it cannot queue.
- `subscribe(topic_filter, handler)`: from now on, and again after every reconnect,
  call `handler(topic, payload)` for each message matching the filter. Handlers run on
  the network thread: they only validate and enqueue, never block, never raise.
- `unsubscribe(topic_filter)`: stop delivering to that filter's handler.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from agent.trust.errors import TransportError

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]


class Transport(Protocol):
    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None: ...

    def subscribe(self, topic_filter: str, handler: Handler) -> None: ...

    def unsubscribe(self, topic_filter: str) -> None: ...


class PahoTransport:
    """`Transport` on paho-mqtt 2.x (MQTT 3.1.1, so any broker will do).

    connect_async + loop_start + reconnect_delay_set (PITFALLS: the first connect does
    not retry), subscriptions re-sent in on_connect, bounded outgoing queue, callbacks
    that only dispatch to handlers (which only enqueue).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str | None = None,
        keepalive: int = 30,
        max_queued: int = 1000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fleetgen-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.max_queued_messages_set(max_queued)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_disconnect = self._on_disconnect
        self._handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._host, self._port, self._keepalive = host, port, keepalive
        self._last: Any = None  # MQTTMessageInfo of the latest publish

    def start(self, timeout: float = 10.0) -> None:
        """Connect (retrying in the background) and wait up to `timeout` for the first CONNACK."""
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise TransportError(f"mqtt://{self._host}:{self._port}: no connection in {timeout:g} s")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused: %s", reason)
            return
        with self._lock:
            filters = list(self._handlers)
        for topic_filter in filters:
            client.subscribe(topic_filter, qos=1)
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            handlers = [
                h for f, h in self._handlers.items() if self._mqtt.topic_matches_sub(f, message.topic)
            ]
        for handler in handlers:
            try:
                handler(message.topic, bytes(message.payload))
            except Exception:  # a handler bug must not kill paho's network thread
                log.exception("handler for %s failed", message.topic)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} failed: {self._mqtt.error_string(info.rc)}")
        self._last = info

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until the broker acknowledged the last QoS 1 publish."""
        last = self._last
        if last is None:
            return
        try:
            last.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as e:
            raise TransportError(f"publish not acknowledged: {e}") from None
        if not last.is_published():
            raise TransportError(f"publish not acknowledged within {timeout:g} s")

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        with self._lock:
            self._handlers[topic_filter] = handler
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos=1)

    def unsubscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._handlers.pop(topic_filter, None)
        if self._connected.is_set():
            self._client.unsubscribe(topic_filter)

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Round-trip a ping through the broker so earlier SUBSCRIBEs are in force."""
        topic = f"fleetgen/v1/_sync/{uuid.uuid4().hex}"
        done = threading.Event()
        self.subscribe(topic, lambda _t, _p: done.set())
        self.publish(topic, b"", qos=1)
        ok = done.wait(timeout)
        self.unsubscribe(topic)
        if not ok:
            raise TransportError(f"broker round-trip took more than {timeout:g} s")
