"""A TCP fault proxy for the resilience scenarios: clients connect to it instead of the
broker, and the test degrades the link on command.

    proxy = FaultProxy("127.0.0.1", broker.port, seed=7)
    proxy.start()                      # its own asyncio loop, in a thread
    proxy.delay(0.5); proxy.throttle(50_000)   # a slow link: 500 ms each way, 50 kB/s
    proxy.cut()                        # every open connection reset now
    proxy.refuse(True)                 # new connections closed at once (a host that answers RST)
    proxy.blackhole(True)              # bytes swallowed both ways, connections kept open
    proxy.heal()                       # back to a clean link

`tc netem` is not available here (PITFALLS), so faults go through this proxy on loopback.
Each fault switched on is counted (`faults`), so the report says what was injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_CHUNK = 16 * 1024


@dataclass
class LinkFaults:
    """What the link does now; read by the pipes on every chunk, so a change acts at once."""

    delay_s: float = 0.0          # one-way latency added to every chunk
    jitter_s: float = 0.0         # plus a seeded uniform 0..jitter_s
    rate_bps: float | None = None  # bytes per second each way; None: unlimited
    refuse: bool = False          # new connections are closed as soon as they are accepted
    blackhole: bool = False       # bytes are read and discarded; nothing is closed


@dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0             # client -> upstream, delivered
    bytes_down: int = 0           # upstream -> client, delivered
    swallowed: int = 0            # bytes eaten by the black hole


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 0,
                 listen_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.faults = LinkFaults()
        self.stats = ProxyStats()
        self.injected: dict[str, int] = {}
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[_Connection] = set()
        self.port = 0

    # -- life ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._accept, self.listen_host, 0))
            self.port = int(self._server.sockets[0].getsockname()[1])
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- faults, from the test's thread ---------------------------------------------------

    def _count(self, fault: str) -> None:
        self.injected[fault] = self.injected.get(fault, 0) + 1

    @property
    def faults_injected(self) -> int:
        return sum(self.injected.values())

    def delay(self, seconds: float, jitter: float = 0.0) -> None:
        self.faults.delay_s, self.faults.jitter_s = seconds, jitter
        if seconds or jitter:
            self._count("delay")

    def throttle(self, bytes_per_s: float | None) -> None:
        self.faults.rate_bps = bytes_per_s
        if bytes_per_s:
            self._count("throttle")

    def refuse(self, on: bool = True) -> None:
        self.faults.refuse = on
        if on:
            self._count("refuse")

    def blackhole(self, on: bool = True) -> None:
        self.faults.blackhole = on
        if on:
            self._count("blackhole")

    def cut(self) -> int:
        """Reset every open connection now (a cable pulled, a NAT that forgot us); returns how many."""
        self._count("cut")
        return self._call(self._cut_all())

    def heal(self) -> None:
        self.faults = LinkFaults()

    def wait_connections(self, n: int, timeout: float = 15.0) -> None:
        """Until at least `n` connections are open through the proxy."""
        deadline = time.monotonic() + timeout
        while len(self._conns) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self._conns)} of {n} connections through the proxy after {timeout:g} s")
            time.sleep(0.02)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the loop --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.faults.refuse:
            self.stats.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError as e:
            log.info("fault proxy: upstream %s:%d unreachable: %s", *self.upstream, e)
            _reset(writer)
            return
        self.stats.connections += 1
        conn = _Connection(self, reader, writer, up_reader, up_writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)

    async def _cut_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.reset()
        self.stats.cut += len(conns)
        return len(conns)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.reset()

    def jitter(self) -> float:
        f = self.faults
        return f.delay_s + (self._rng.uniform(0, f.jitter_s) if f.jitter_s else 0.0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a cut link or a dead host looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort() if sock is not None else writer.close()


class _Connection:
    """One client connection and its upstream twin: a pipe each way."""

    def __init__(self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.server = (up_reader, up_writer)
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        self._tasks = [asyncio.ensure_future(self._pipe(self.client[0], self.server[1], "up")),
                       asyncio.ensure_future(self._pipe(self.server[0], self.client[1], "down"))]
        _done, pending = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        self.close()

    def reset(self) -> None:
        for task in self._tasks:
            task.cancel()
        _reset(self.client[1])
        _reset(self.server[1])

    def close(self) -> None:
        for writer in (self.client[1], self.server[1]):
            with contextlib.suppress(Exception):
                writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str) -> None:
        """Copy src to dst, chunk by chunk, each chunk delivered at (read time + delay) and
        paced at the rate: a queue keeps the order while a chunk waits for its time."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.ensure_future(self._deliver(queue, dst, direction))
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if self.proxy.faults.blackhole:
                    self.proxy.stats.swallowed += len(data)
                    continue
                await queue.put((time.monotonic() + self.proxy.jitter(), data))
            await queue.put(None)
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None], dst: asyncio.StreamWriter,
                       direction: str) -> None:
        try:
            while (item := await queue.get()) is not None:
                at, data = item
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                rate = self.proxy.faults.rate_bps
                # Paced in slices of a tenth of a second's worth, so a throttled link trickles
                # as a slow one does instead of bursting once a second.
                step = max(1, int(rate / 10)) if rate else len(data)
                for i in range(0, len(data), step):
                    piece = data[i:i + step]
                    if self.proxy.faults.blackhole:
                        self.proxy.stats.swallowed += len(piece)
                        continue
                    dst.write(piece)
                    await dst.drain()
                    if direction == "up":
                        self.proxy.stats.bytes_up += len(piece)
                    else:
                        self.proxy.stats.bytes_down += len(piece)
                    rate = self.proxy.faults.rate_bps
                    if rate:
                        await asyncio.sleep(len(piece) / rate)
            with contextlib.suppress(OSError):
                if dst.can_write_eof():
                    dst.write_eof()
        except (ConnectionError, OSError):
            pass
