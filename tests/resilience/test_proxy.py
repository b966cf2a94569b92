"""The fault proxy itself, against a plain TCP echo server and a real Mosquitto: each fault
does what it says, and a healed link carries bytes unchanged."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.demo.brokers import Mosquitto
from tests.resilience.proxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo: int) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo, seed=1) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return s


def recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        data = s.recv(n - len(out))
        if not data:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += data
    return out


def test_clean_link_carries_bytes_unchanged(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1000
    with connect(proxy) as s:
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
    # The proxy counts a piece once its write drained, which can be just after the client read it.
    deadline = time.monotonic() + 10
    while (proxy.stats.bytes_up, proxy.stats.bytes_down) != (len(payload), len(payload)):
        assert time.monotonic() < deadline, proxy.stats
        time.sleep(0.01)
    assert proxy.faults_injected == 0


def test_delay_holds_each_direction(proxy: FaultProxy) -> None:
    proxy.delay(0.2)
    with connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(b"ping")
        assert recv_exactly(s, 4) == b"ping"
        assert time.monotonic() - t0 >= 0.4  # 0.2 up + 0.2 down
    assert proxy.injected == {"delay": 1}


def test_throttle_paces_bytes(proxy: FaultProxy) -> None:
    proxy.throttle(100_000)
    payload = b"x" * 60_000
    with connect(proxy) as s:
        t0 = time.monotonic()
        s.sendall(payload)
        assert recv_exactly(s, len(payload)) == payload
        # 60 kB at 100 kB/s each way: not before 0.5 s (a lower bound; the machine is shared)
        assert time.monotonic() - t0 >= 0.5


def test_cut_resets_open_connections_and_new_ones_work(proxy: FaultProxy) -> None:
    s = connect(proxy)
    s.sendall(b"a")
    assert recv_exactly(s, 1) == b"a"
    proxy.wait_connections(1)
    assert proxy.cut() == 1
    with pytest.raises((ConnectionError, OSError)):
        s.sendall(b"b" * 100_000)
        if not s.recv(1):
            raise ConnectionError("closed")
    s.close()
    with connect(proxy) as s2:
        s2.sendall(b"c")
        assert recv_exactly(s2, 1) == b"c"


def test_refuse_closes_new_connections_until_healed(proxy: FaultProxy) -> None:
    proxy.refuse(True)
    with pytest.raises((ConnectionError, OSError)), connect(proxy) as s:
        s.sendall(b"x")
        if not s.recv(1):
            raise ConnectionError("closed")
    assert proxy.stats.refused == 1
    proxy.heal()
    with connect(proxy) as s:
        s.sendall(b"y")
        assert recv_exactly(s, 1) == b"y"


def test_blackhole_swallows_without_closing(proxy: FaultProxy) -> None:
    with connect(proxy) as s:
        proxy.wait_connections(1)
        proxy.blackhole(True)
        s.sendall(b"lost")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(1)
        assert proxy.open_connections == 1  # still open: only a keepalive can tell
        proxy.heal()
        s.settimeout(5)
        s.sendall(b"back")
        assert recv_exactly(s, 4) == b"back"
    assert proxy.stats.swallowed >= 4


def test_mqtt_client_reconnects_through_a_cut(mosquitto: Mosquitto) -> None:
    with FaultProxy("127.0.0.1", mosquitto.port) as proxy:
        connects: list[int] = []
        got = threading.Event()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="proxy-test", protocol=paho.MQTTv5)
        client.reconnect_delay_set(0.1, 0.5)

        def on_connect(c: paho.Client, u: object, f: object, rc: object, p: object = None) -> None:
            connects.append(1)
            c.subscribe("t/x", qos=1)

        def on_subscribe(c: paho.Client, u: object, mid: int, rc: object, p: object = None) -> None:
            c.publish("t/x", b"hello", qos=1)

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = lambda c, u, m: got.set()
        client.connect_async("127.0.0.1", proxy.port, keepalive=5)
        client.loop_start()
        try:
            assert got.wait(10)
            got.clear()
            proxy.cut()
            assert got.wait(15), "no message after the cut: the client did not come back"
            assert len(connects) >= 2
        finally:
            client.disconnect()
            client.loop_stop()
