"""The web face as one of `fleetgen serve`'s services: uvicorn in a thread of its own.

The socket is bound in `start()`, so a taken port fails the start with one line instead
of a log message from a thread; `port 0` picks a free port (tests), and `url` says which.
"""

from __future__ import annotations

import logging
import socket
import threading

from agent.errors import ConfigError
from controller.web.app import create_app
from controller.web.context import WebContext
from controller.web.settings import parse_listen

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, ctx: WebContext, listen: str) -> None:
        self.ctx = ctx
        self.host, self.port = parse_listen(listen)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._server: object | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # uvicorn writes a response's head and body separately; with Nagle on, every answer on a
        # kept-alive connection waited for the client's delayed ACK (~40 ms). Accepted sockets
        # inherit the option from the listener (Linux).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"http.listen: cannot listen on {self.host}:{self.port} ({e.strerror})") from None
        sock.listen(256)
        sock.setblocking(False)
        return sock

    def start(self) -> None:
        import uvicorn

        self._sock = self._bind()
        self.port = self._sock.getsockname()[1]
        # A dashboard left open keeps connections alive; stopping waits for them at most 5 s.
        config = uvicorn.Config(create_app(self.ctx), log_level="warning", access_log=False,
                                timeout_keep_alive=5, timeout_graceful_shutdown=5, lifespan="off")
        server = uvicorn.Server(config)
        self._server = server
        ready = threading.Event()
        sock = self._sock

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            finally:
                ready.set()

        self._thread = threading.Thread(target=serve, name="http", daemon=True)
        self._thread.start()
        while not server.started and not ready.wait(0.02):
            pass
        if not server.started:
            raise ConfigError(f"http: the server on {self.url} did not start")
        log.info("http: dashboard and API on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        import uvicorn

        server = self._server
        if isinstance(server, uvicorn.Server):
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
