"""The API in its own thread and event loop: started by `serve` and by the daemon.

`start()` returns once the socket (and TCP port) listen, which is when the daemon says
READY=1; the model may still be loading (/health says so). `stop()` stops accepting,
lets requests in flight finish for `drain_s`, then cuts the rest. `healthy()` is false
when the event loop has not run its heartbeat lately (a stalled loop), which stops the
systemd watchdog pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

from agent.api.host import ModelHost
from agent.api.http import HttpServer, Limits
from agent.api.metrics import ApiMetrics
from agent.api.routes import Routes, StatusProvider
from agent.api.settings import ApiSettings, read_api_key
from agent.errors import FleetgenError

log = logging.getLogger(__name__)

_BEAT_S = 0.25


class ApiStartError(FleetgenError):
    """The API cannot listen (socket in use, permission denied, bad address)."""


class ApiService:
    def __init__(self, settings: ApiSettings, host: ModelHost, *, status: StatusProvider | None = None,
                 metrics: ApiMetrics | None = None, create_socket_dir: bool = True) -> None:
        self.settings = settings
        # the daemon does not create /run/fleetgen itself: systemd's RuntimeDirectory= does,
        # with the right owner and mode; `serve` makes the folder a user names
        self.create_socket_dir = create_socket_dir
        self.host = host
        self.metrics = metrics or ApiMetrics()
        api_key = read_api_key(settings.api_key_file) if settings.api_key_file else None
        self.routes = Routes(host, self.metrics, api_key=api_key, metrics_enabled=settings.metrics, status=status,
                             stream_interval_s=settings.stream_interval_ms / 1000)
        self.limits = Limits(max_body_bytes=settings.max_body_bytes, header_timeout_s=settings.header_timeout_s,
                             write_timeout_s=settings.write_timeout_s, max_connections=settings.max_connections)
        self._tcp = settings.tcp_address()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._start_error: str | None = None
        self._last_beat = time.monotonic()
        self.server: HttpServer | None = None
        self.tcp_port: int | None = None
        self.drained: bool | None = None

    @property
    def socket_path(self) -> Path:
        return Path(self.settings.socket)

    @property
    def addresses(self) -> list[str]:
        return list(self.server.addresses) if self.server else []

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="fleetgen-api", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise ApiStartError(f"API did not start within {timeout} s")
        if self._start_error is not None:
            self._thread.join(timeout)
            raise ApiStartError(self._start_error)
        log.info("API listening on %s", ", ".join(self.addresses))

    def begin_stop(self) -> None:
        """Stop listening and start draining; returns at once (safe from a signal handler), so
        the requests in flight drain while the daemon says goodbye to the broker."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait for the drain to end (at most `timeout`, default drain_s + 5 s)."""
        self.begin_stop()
        if self._thread is not None:
            self._thread.join(self.settings.drain_s + 5.0 if timeout is None else max(0.0, timeout))

    def healthy(self, max_age_s: float = 2.0) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and time.monotonic() - self._last_beat < max_age_s

    def call_in_loop(self, fn: object) -> None:
        """Run a callable on the API's loop (tests use it to stall the loop)."""
        assert self._loop is not None and callable(fn)
        self._loop.call_soon_threadsafe(fn)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:  # never silently: the watchdog notices too, as healthy() turns false
            log.exception("API loop failed")
            self._start_error = self._start_error or f"API loop failed: {e}"
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = HttpServer(self.routes.handle, self.limits)
        self.server = server
        try:
            if self.settings.socket:
                await server.listen_unix(self.socket_path, self.settings.socket_mode, self.create_socket_dir)
            if self._tcp is not None:
                host, port = self._tcp
                self.tcp_port = await server.listen_tcp(host, port)
        except OSError as e:
            where = self._tcp if self._tcp and str(e).find(str(self.socket_path)) < 0 else self.socket_path
            self._start_error = f"cannot listen on {where}: {e.strerror or e}"
            if e.filename is None and e.strerror and str(self.socket_path.parent) in e.strerror:
                self._start_error = f"cannot listen on {self.socket_path}: {e.strerror}"
            await server.close()
            self._started.set()
            return
        self._started.set()
        beat = asyncio.create_task(self._heartbeat())
        await self._stopping.wait()
        await server.close()
        self.drained = await server.drain(self.settings.drain_s)
        if not self.drained:
            log.warning("API: %d requests still running after %.0f s; cutting them off", server.busy,
                        self.settings.drain_s)
        await server.abort()
        beat.cancel()
        with contextlib.suppress(FileNotFoundError):
            if self.settings.socket:
                self.socket_path.unlink()

    async def _heartbeat(self) -> None:
        while True:
            self._last_beat = time.monotonic()
            await asyncio.sleep(_BEAT_S)
