"""Fetchers and the responder: windows, retries from the last good offset, bounded
chunks, the repository's jail, and the time bounds (deadline, throughput floor)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.protocol.codec import decode_response, encode
from agent.protocol.messages import Request
from agent.protocol.topics import CHANNELS, Channel
from agent.trust.dsse import pae
from agent.trust.errors import SlowRetrievalError, TransportError
from agent.trust.fetch import METADATA_URL, TARGETS_URL, Deadline, DownloadPolicy
from agent.trust.https_fetcher import HttpsFetcher
from agent.trust.mqtt_fetcher import MqttFetcher
from controller.services.responder import RepositoryResponder
from tests.trust.conftest import World
from tests.trust.fakes import Bus, Tap

KiB = 1024


def test_dsse_pae_matches_the_spec_vector() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_deadline_floor_and_budget() -> None:
    clock = _Clock()
    d = Deadline(DownloadPolicy(min_bytes_per_s=1000, grace_s=2, deadline_s=10), "u", clock)
    assert d.wait_budget() == pytest.approx(2)  # nothing yet: the grace period
    clock.t += 1.5
    d.add(5000)  # 5 KB in 1.5 s: fine, and it counts until it leaves the 2 s window
    assert d.wait_budget() == pytest.approx(2)
    clock.t += 2.1
    with pytest.raises(SlowRetrievalError, match="floor"):
        d.check()
    fast = Deadline(DownloadPolicy(min_bytes_per_s=0, deadline_s=1), "u", clock)
    clock.t += 1.01
    with pytest.raises(SlowRetrievalError, match="deadline"):
        fast.check()


def test_floor_is_over_a_sliding_window_not_the_average() -> None:
    """A fast start does not hide a stall: an average would allow 50 s of silence here."""
    clock = _Clock()
    d = Deadline(DownloadPolicy(min_bytes_per_s=1000, grace_s=5, deadline_s=1000), "u", clock)
    for _ in range(10):
        clock.t += 1
        d.add(6000)  # 6 kB/s for 10 s
    assert d.wait_budget() == pytest.approx(5)  # the last chunk alone holds the window up
    clock.t += 5.1
    with pytest.raises(SlowRetrievalError, match=r"over the last 5\.0 s is under the floor"):
        d.check()


def test_policy_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        DownloadPolicy(chunk_size=512 * KiB)
    with pytest.raises(ValueError):
        DownloadPolicy(window=0)


def _bus_pair(
    root: Path, drop: Callable[[str, bytes], bool] | None = None
) -> tuple[RepositoryResponder, Tap]:
    bus = Bus()
    responder = RepositoryResponder(bus.client(), root)
    responder._transport.subscribe(responder._filter, lambda t, p: _answer(responder, t, p))
    agent = Tap(bus.client(), drop=drop or (lambda t, p: False))
    return responder, agent


def _answer(responder: RepositoryResponder, topic: str, payload: bytes) -> None:
    answer = responder.handle(topic, payload)
    if answer is not None:
        responder._transport.publish(*answer)


def _requests(tap: Tap) -> list[Request]:
    return [msgspec.json.decode(p, type=Request) for t, p in tap.sent if t.endswith("/req")]


def test_mqtt_fetcher_windows_and_reassembles(world: World) -> None:
    bundle = world.publish("1.0.0", size=700 * KiB)
    _, agent = _bus_pair(world.repo.path)
    fetcher = MqttFetcher(agent, "dev-1", DownloadPolicy(chunk_size=64 * KiB, window=4))
    name = bundle.name
    sha = world.repo.targets().targets[name].hashes["sha256"]
    data = b"".join(fetcher.fetch_range(f"{TARGETS_URL}{sha}.{name}", 0, bundle.stat().st_size))
    assert data == bundle.read_bytes()
    reqs = _requests(agent)
    assert all(r.length <= 64 * KiB for r in reqs)
    assert len(reqs) == -(-len(data) // (64 * KiB))  # one request per chunk, no waste


def test_mqtt_fetcher_asks_again_from_the_last_good_offset(world: World) -> None:
    bundle = world.publish("1.0.0", size=300 * KiB)
    seen: set[int] = set()

    def drop_first_try_of_every_third(topic: str, payload: bytes) -> bool:
        req = msgspec.json.decode(payload, type=Request)
        if req.offset in seen or (req.offset // (32 * KiB)) % 3 != 1:
            return False
        seen.add(req.offset)
        return True

    _, agent = _bus_pair(world.repo.path, drop_first_try_of_every_third)
    policy = DownloadPolicy(chunk_size=32 * KiB, window=3, request_timeout_s=0.2, grace_s=5)
    fetcher = MqttFetcher(agent, "dev-1", policy)
    sha = world.repo.targets().targets[bundle.name].hashes["sha256"]
    data = b"".join(fetcher.fetch_range(f"{TARGETS_URL}{sha}.{bundle.name}", 0, bundle.stat().st_size))
    assert data == bundle.read_bytes()
    assert agent.dropped >= 2
    offsets = [r.offset for r in _requests(agent)]
    assert offsets.count(0) == 1  # never restarted from zero
    assert {o for o in offsets if offsets.count(o) > 1} == seen  # only the lost chunks, again


class _SlowLink:
    """The responder behind a serial link: answers cross one at a time, each taking its
    length / rate (plus a fixed latency), the way a throttled TCP connection delivers them."""

    def __init__(self, root: Path, rate: float, latency: float = 0.0) -> None:
        import queue

        self.bus = Bus()
        self.responder = RepositoryResponder(self.bus.client(), root)
        self.rate, self.latency = rate, latency
        self.sent = 0
        self.delivered = 0
        self.max_in_flight = 0
        self._q: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.responder._transport.subscribe(self.responder._filter, self._on_request)
        self._thread = threading.Thread(target=self._deliver, daemon=True)
        self._thread.start()

    def _on_request(self, topic: str, payload: bytes) -> None:
        self.sent += 1
        self.max_in_flight = max(self.max_in_flight, self.sent - self.delivered)
        answer = self.responder.handle(topic, payload)
        if answer is not None:
            self._q.put(answer)

    def _deliver(self) -> None:
        while (item := self._q.get()) is not None:
            time.sleep(self.latency + len(item[1]) / self.rate)
            self.delivered += 1
            self.responder._transport.publish(*item)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)


def test_mqtt_fetcher_waits_for_a_busy_slow_link_instead_of_asking_again(world: World) -> None:
    """A window of chunks takes far longer to cross than the initial request timeout: the
    timers restart on every answer and the timeout learns the chunk's crossing time, so no
    chunk is asked twice (the re-asks that piled duplicate answers on a 50 kB/s link), and
    the window grows from its initial size (slow start) without passing its maximum."""
    bundle = world.publish("1.0.0", size=640 * KiB)
    link = _SlowLink(world.repo.path, rate=2_000_000, latency=0.002)  # 16 KiB: ~10 ms each
    try:
        tap = Tap(link.bus.client())
        policy = DownloadPolicy(chunk_size=16 * KiB, window=12, initial_window=2, request_timeout_s=0.05, grace_s=5)
        fetcher = MqttFetcher(tap, "dev-1", policy)
        sha = world.repo.targets().targets[bundle.name].hashes["sha256"]
        data = b"".join(fetcher.fetch_range(f"{TARGETS_URL}{sha}.{bundle.name}", 0, bundle.stat().st_size))
    finally:
        link.close()
    assert data == bundle.read_bytes()
    offsets = [r.offset for r in _requests(tap)]
    assert len(offsets) == len(set(offsets)) == -(-len(data) // (16 * KiB))  # none asked twice
    assert 2 < link.max_in_flight <= 12


def test_stale_answers_are_dropped_on_the_network_thread(world: World) -> None:
    """An answer to a request no longer wanted (a chunk already had, a re-ask's twin) never
    reaches the inbox, where it would queue ahead of the answers awaited."""
    from agent.protocol.codec import encode_response
    from agent.protocol.messages import ResponseHeader

    fetcher = MqttFetcher(Bus().client(), "dev-1")
    frame = encode_response(ResponseHeader(id=f"{fetcher._prefix}-7", ok=True, offset=0, total=3), b"abc")
    fetcher._on_response("fleetgen/v1/dev/dev-1/resp", frame)
    assert fetcher._inbox.empty() and fetcher.stale_dropped == 1
    fetcher._live.add(f"{fetcher._prefix}-7")
    fetcher._on_response("fleetgen/v1/dev/dev-1/resp", frame)
    assert fetcher._inbox.qsize() == 1


def test_mqtt_fetcher_gives_up_when_nobody_answers(world: World) -> None:
    _, agent = _bus_pair(world.repo.path, lambda t, p: True)
    fetcher = MqttFetcher(agent, "dev-1", DownloadPolicy(request_timeout_s=0.05, max_retries=2, grace_s=5))
    with pytest.raises(TransportError, match="no answer"):
        b"".join(fetcher.fetch(f"{METADATA_URL}timestamp.json"))


def test_mqtt_fetcher_reports_not_found_as_404(world: World) -> None:
    from tuf.api.exceptions import DownloadHTTPError

    _, agent = _bus_pair(world.repo.path)
    fetcher = MqttFetcher(agent, "dev-1")
    with pytest.raises(DownloadHTTPError) as info:
        b"".join(fetcher.fetch(f"{METADATA_URL}9.root.json"))
    assert info.value.status_code == 404


@pytest.mark.parametrize(
    "path",
    ["keys/online/x.pem", "metadata/../keys/online/x.pem", "/etc/passwd", "repo.json", "targets/../repo.json"],
)
def test_responder_serves_only_metadata_and_targets(world: World, path: str) -> None:
    responder = RepositoryResponder(Bus().client(), world.repo.path)
    req = Request(id="r1", op="fetch", path=path, length=1024)
    _topic, frame = responder.handle("fleetgen/v1/dev/dev-1/req", encode(req))  # type: ignore[misc]
    header, body = decode_response(frame)
    assert not header.ok and header.error.startswith("not found") and body == b""


def test_responder_chunks_are_bounded(world: World) -> None:
    bundle = world.publish("1.0.0", size=600 * KiB)
    responder = RepositoryResponder(Bus().client(), world.repo.path)
    sha = world.repo.targets().targets[bundle.name].hashes["sha256"]
    req = Request(id="r1", op="fetch", path=f"targets/{sha}.{bundle.name}", offset=1000, length=256 * KiB)
    topic, frame = responder.handle("fleetgen/v1/dev/dev-1/req", encode(req))  # type: ignore[misc]
    assert topic == "fleetgen/v1/dev/dev-1/resp"
    assert len(frame) <= CHANNELS[Channel.RESP].max_bytes
    header, body = decode_response(frame)
    assert header.ok and header.total == bundle.stat().st_size and len(body) == 256 * KiB
    assert body == bundle.read_bytes()[1000 : 1000 + 256 * KiB]


def test_responder_ignores_requests_naming_another_device(world: World) -> None:
    responder = RepositoryResponder(Bus().client(), world.repo.path)
    assert responder.handle("fleetgen/v1/dev/dev-1/req", b"{not json") is None
    assert responder.handle("fleetgen/v1/dev/BAD ID/req", encode(Request(id="x", op="fetch"))) is None


# -- HTTPS fetcher over a real socket ------------------------------------------------------


class _Server:
    def __init__(self, root: Path, drip: float | None) -> None:
        stop = self.stop_event = threading.Event()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                if drip is None or "/targets/" not in self.path:
                    return super().do_GET()
                data = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for i in range(len(data)):
                    if stop.is_set():
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(drip)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(world: World) -> Iterator[_Server]:
    server = _Server(world.mirror, drip=None)
    yield server
    server.close()


def test_https_fetcher_installs(world: World, http_server: _Server) -> None:
    world.publish("1.0.0", size=300 * KiB)
    device = world.device(fetcher=HttpsFetcher(http_server.url))
    assert device.apply_desired(world.desired("1.0.0")).changed


def test_https_drip_under_the_floor_is_aborted(world: World) -> None:
    world.publish("1.0.0", size=64 * KiB)
    server = _Server(world.mirror, drip=0.005)
    try:
        policy = DownloadPolicy(min_bytes_per_s=10_000, grace_s=0.5, deadline_s=30)
        device = world.device(fetcher=HttpsFetcher(server.url, policy))
        # The floor ends it (not the 30 s deadline): what the error says, no wall-clock bound.
        with pytest.raises(SlowRetrievalError, match="under the floor"):
            device.apply_desired(world.desired("1.0.0"))
        assert device.store.current() is None
        assert not list(device.paths.downloads_dir.iterdir())
    finally:
        server.close()


def test_mqtt_download_stops_at_the_signed_length(world: World) -> None:
    """The repository (or whoever answers) claims and serves a longer file: the agent asks
    for at most one byte past the signed length and refuses."""
    from agent.trust.errors import TrustError

    world.publish("1.0.0", size=200 * KiB)
    device = world.device()
    device.install_file(world.bundles["1.0.0"])
    world.publish("2.0.0", size=200 * KiB)
    served = world.target_file("2.0.0")
    signed_length = served.stat().st_size
    with open(served, "ab") as f:
        f.write(bytes(5 * 1024 * KiB))
    _, agent = _bus_pair(world.mirror)
    device.fetcher = MqttFetcher(agent, "dev-1", DownloadPolicy(chunk_size=64 * KiB))
    before = device.store.current()
    with pytest.raises(TrustError) as info:
        device.apply_desired(world.desired("2.0.0"))
    assert info.value.check == "length"
    asked = sum(r.length for r in _requests(agent) if r.path.startswith("targets/"))
    assert asked == signed_length + 1
    assert device.store.current() == before


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_https_fetcher_over_tls(world: World, tmp_path: Path) -> None:
    import ssl

    world.publish("1.0.0", size=100 * KiB)
    cert, key = _self_signed(tmp_path)
    server = _Server(world.mirror, drip=None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.httpd.socket = ctx.wrap_socket(server.httpd.socket, server_side=True)
    try:
        url = server.url.replace("http://", "https://")
        device = world.device(fetcher=HttpsFetcher(url, ca_certs=str(cert)))
        assert device.apply_desired(world.desired("1.0.0")).changed
        untrusted = world.device("other", fetcher=HttpsFetcher(url))  # system CAs: refused
        with pytest.raises(TransportError):
            untrusted.apply_desired(world.desired("1.0.0"))
    finally:
        server.close()


def test_mqtt_silence_is_cut_by_the_floor_not_the_request_timeout(world: World) -> None:
    """Nobody answers and retries are slow (30 s): the throughput floor ends it first."""
    _, agent = _bus_pair(world.repo.path, lambda t, p: True)
    policy = DownloadPolicy(request_timeout_s=30, min_bytes_per_s=1000, grace_s=0.5, deadline_s=60)
    fetcher = MqttFetcher(agent, "dev-1", policy)
    # Cut by the floor (its message), not by a retry after the 30 s request timeout.
    with pytest.raises(SlowRetrievalError, match="under the floor"):
        b"".join(fetcher.fetch(f"{METADATA_URL}timestamp.json"))


def test_mqtt_slow_responder_under_the_floor_is_aborted(world: World) -> None:
    bundle = world.publish("1.0.0", size=256 * KiB)
    bus = Bus()
    responder = RepositoryResponder(bus.client(), world.repo.path)

    def slow_answer(topic: str, payload: bytes) -> None:
        answer = responder.handle(topic, payload)
        if answer is not None:
            threading.Timer(0.2, responder._transport.publish, answer).start()

    responder._transport.subscribe(responder._filter, slow_answer)
    policy = DownloadPolicy(chunk_size=4 * KiB, window=1, min_bytes_per_s=50_000, grace_s=0.5, deadline_s=60)
    fetcher = MqttFetcher(bus.client(), "dev-1", policy)  # 4 KiB per 0.2 s = 20 KB/s
    sha = world.repo.targets().targets[bundle.name].hashes["sha256"]
    with pytest.raises(SlowRetrievalError, match="under the floor"):
        b"".join(fetcher.fetch_range(f"{TARGETS_URL}{sha}.{bundle.name}", 0, bundle.stat().st_size))


def test_mqtt_stream_of_stale_answers_does_not_outlive_the_floor(world: World) -> None:
    """Whoever can publish on `resp` keeps the inbox full of frames answering nothing we
    wait for: the floor must still end the download (it is checked on every frame, not
    only when the inbox runs dry)."""
    import queue

    from agent.protocol.messages import ResponseHeader

    fetcher = MqttFetcher(Bus().client(), "dev-1", DownloadPolicy(request_timeout_s=30, grace_s=0.3))
    stale = ResponseHeader(id=f"{fetcher._prefix}-999999", ok=True, offset=0, total=1)

    class NeverEmpty:
        def get(self, timeout: float | None = None) -> tuple[ResponseHeader, bytes]:
            time.sleep(0.0001)
            return stale, b"x"

        def get_nowait(self) -> None:
            raise queue.Empty

    fetcher._inbox = NeverEmpty()  # type: ignore[assignment]
    # Cut by the floor (its message), not by a retry after the 30 s request timeout.
    with pytest.raises(SlowRetrievalError, match="under the floor"):
        b"".join(fetcher.fetch(f"{METADATA_URL}timestamp.json"))


def test_a_complete_partial_download_is_installed_without_asking_again(world: World, http_server: _Server) -> None:
    """Interrupted after the last byte but before the install: resuming over HTTPS would ask
    for `bytes=LENGTH-`, which a server answers 416; nothing is asked, the file is verified."""
    world.publish("1.0.0", size=64 * KiB)
    device = world.device(fetcher=HttpsFetcher(http_server.url))
    device.paths.ensure()
    sha = world.repo.targets().targets["tiny-1.0.0.fgb"].hashes["sha256"]
    (device.paths.downloads_dir / f"{sha}.part").write_bytes(world.target_file("1.0.0").read_bytes())
    assert device.apply_desired(world.desired("1.0.0")).changed


def test_resuming_from_a_server_that_ignores_range(world: World, http_server: _Server) -> None:
    """http.server answers a Range request with the whole file (200): the bytes already
    had are skipped, and the download finishes instead of failing on every retry."""
    world.publish("1.0.0", size=200 * KiB)
    device = world.device(fetcher=HttpsFetcher(http_server.url))
    device.paths.ensure()
    sha = world.repo.targets().targets["tiny-1.0.0.fgb"].hashes["sha256"]
    data = world.target_file("1.0.0").read_bytes()
    (device.paths.downloads_dir / f"{sha}.part").write_bytes(data[: len(data) // 2])
    assert device.apply_desired(world.desired("1.0.0")).changed
