"""HTTP/1.1 on asyncio + h11: Unix socket and TCP listeners, limits, timeouts, streaming.

h11 does the protocol (framing, keep-alive, chunked bodies); this module adds what a
server on a device needs around it: a bound on header and body sizes (413/431), a
deadline for the request head and body (a client sending headers forever is cut off),
a deadline for every write (a client that never reads its stream is cut off), a cap on
connections, and a `disconnected` event per request so a handler can stop generating
for a client that went away. One slow client never stalls the others: each connection
is its own task. Why h11 and not uvicorn/starlette: ADR 0055.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import socket
import stat
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11

from agent.api.errors import error_body

log = logging.getLogger(__name__)

_READ_SIZE = 65536


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    header_timeout_s: float = 10.0  # the whole request head must arrive within this
    body_timeout_s: float = 30.0
    write_timeout_s: float = 30.0  # each write to the client (a stream chunk included)
    keepalive_timeout_s: float = 30.0
    max_connections: int = 64


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class StreamResponse:
    """A response sent as it is produced (server-sent events). The server closes `chunks`
    (aclose) whatever happens, so the producer's `finally` can stop its work."""

    status: int
    chunks: AsyncGenerator[bytes, None]
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


class _ClientGone(Exception):
    pass


class HttpServer:
    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._busy = 0  # requests being handled or answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.addresses: list[str] = []

    async def listen_unix(self, path: Path, mode: int = 0o660, create_dir: bool = True) -> None:
        path = Path(path)
        if create_dir:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise FileNotFoundError(2, f"{path.parent} does not exist (systemd's RuntimeDirectory= makes it)")
        _remove_stale_socket(path)
        server = await asyncio.start_unix_server(self._accept, path=str(path), limit=self.limits.max_header_bytes)
        os.chmod(path, mode)
        self._servers.append(server)
        self.addresses.append(f"unix:{path}")

    async def listen_tcp(self, host: str, port: int) -> int:
        server = await asyncio.start_server(self._accept, host=host, port=port, limit=self.limits.max_header_bytes)
        bound = int(server.sockets[0].getsockname()[1])
        self._servers.append(server)
        self.addresses.append(f"http://{host}:{bound}")
        return bound

    async def close(self) -> None:
        """Stop accepting; connections idle between requests are closed."""
        self._closing = True
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()

    async def drain(self, timeout: float) -> bool:
        """Wait for requests in flight to finish; True if they all did within `timeout`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def abort(self) -> None:
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    @property
    def busy(self) -> int:
        return self._busy

    # -- per connection ------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.limits.max_connections:
            with contextlib.suppress(OSError, TimeoutError):
                await self._write_raw(writer, 503, error_body(503, "too many connections"))
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, _ClientGone):
            pass
        except asyncio.CancelledError:
            # abort() at shutdown; ending normally keeps asyncio from logging the task's
            # cancellation as an error (3.11's start_server callback asks for its exception)
            pass
        except Exception:  # a bug in one connection must not take the server down
            log.exception("connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            # CancelledError too: abort() may cancel this task here, and a task that ends
            # cancelled makes asyncio's start_server callback log an error
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _write_raw(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        conn.next_event()
        writer.write(conn.send(_head(status, "application/json", [("content-length", str(len(body)))], True)))
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        first = True
        while not self._closing or first:
            timeout = limits.header_timeout_s if first else limits.keepalive_timeout_s
            first = False
            try:
                event = await asyncio.wait_for(_next_event(conn, reader), timeout)
            except TimeoutError:
                if conn.their_state is h11.SEND_BODY or (conn.their_state is h11.IDLE and _has_partial(conn)):
                    await self._refuse(conn, writer, 408, "request head not received in time")
                return
            except h11.RemoteProtocolError as e:
                status = e.error_status_hint
                message = "request header too large" if status == 431 else f"malformed HTTP request: {e}"
                await self._refuse(conn, writer, status, message)
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            if await self._exchange(conn, reader, writer, event) is False:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _exchange(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: h11.Request
    ) -> bool:
        limits = self.limits
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            await self._refuse(conn, writer, 413, f"request body of {length} bytes exceeds {limits.max_body_bytes}")
            return False
        try:
            body = await asyncio.wait_for(_read_body(conn, reader, limits.max_body_bytes), limits.body_timeout_s)
        except _BodyTooLarge:
            await self._refuse(conn, writer, 413, f"request body exceeds {limits.max_body_bytes} bytes")
            return False
        except TimeoutError:
            await self._refuse(conn, writer, 408, "request body not received in time")
            return False
        except h11.RemoteProtocolError as e:
            await self._refuse(conn, writer, 400, f"malformed HTTP request: {e}")
            return False
        target = head.target.decode("latin-1")
        path, _, query = target.partition("?")
        request = Request(head.method.decode("ascii", "replace").upper(), path, query, headers, body)
        self._busy += 1
        self._idle.clear()
        watcher = asyncio.create_task(_watch_disconnect(reader, conn, request.disconnected))
        try:
            response = await self.handler(request)
            await self._respond(conn, writer, response, request)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()
        return not request.disconnected.is_set()

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = error_body(status, message)
        try:
            writer.write(conn.send(_head(status, "application/json", [("content-length", str(len(body)))], True))
                         or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:
            # h11 will not answer before it has parsed a request line; say it raw
            writer.write(_raw_response(status, body))
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.drain(), self.limits.write_timeout_s)

    async def _respond(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response | StreamResponse, request: Request
    ) -> None:
        close = self._closing
        timeout = self.limits.write_timeout_s
        if isinstance(response, Response):
            extra = [("content-length", str(len(response.body))), *response.headers]
            writer.write(conn.send(_head(response.status, response.content_type, extra, close)) or b"")
            writer.write(conn.send(h11.Data(data=response.body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await asyncio.wait_for(writer.drain(), timeout)
            return
        extra = [("cache-control", "no-cache"), *response.headers]
        async with contextlib.aclosing(response.chunks) as chunks:
            writer.write(conn.send(_head(response.status, response.content_type, extra, close)) or b"")
            await asyncio.wait_for(writer.drain(), timeout)
            transport = writer.transport
            async for chunk in chunks:
                if request.disconnected.is_set():
                    raise _ClientGone
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
                # write() sends at once what the socket takes; only what it could not take
                # needs a drain (a task and a timer each: skipped while the client keeps up).
                # A client that stops reading fills the socket buffer; drain then times out
                if transport.get_write_buffer_size():
                    await asyncio.wait_for(writer.drain(), timeout)
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await asyncio.wait_for(writer.drain(), timeout)


class _BodyTooLarge(Exception):
    pass


def _head(status: int, content_type: str, extra: list[tuple[str, str]], close: bool) -> h11.Response:
    headers = [("content-type", content_type), ("server", "fleetgen"), *extra]
    if close:
        headers.append(("connection", "close"))
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    return h11.Response(status_code=status, headers=headers, reason=reason)


def _raw_response(status: int, body: bytes) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _has_partial(conn: h11.Connection) -> bool:
    data, _closed = conn.trailing_data
    return bool(data)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ_SIZE))
            continue
        return event  # type: ignore[return-value]


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        event = await _next_event(conn, reader)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise _BodyTooLarge
            parts.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(parts)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("client closed the connection mid-body")


async def _watch_disconnect(reader: asyncio.StreamReader, conn: h11.Connection, gone: asyncio.Event) -> None:
    """While a request is handled, notice the client closing its end (EOF). Data it sends
    meanwhile (a pipelined request) is handed to h11, which keeps it for the next cycle."""
    try:
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                gone.set()
                return
            conn.receive_data(data)
            if len(conn.trailing_data[0]) > 4 * _READ_SIZE:
                return  # enough buffered; reading more would only grow memory
    except (ConnectionError, h11.RemoteProtocolError):
        gone.set()


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a process that died is removed; a live one is an error."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"{path} is in use by a running process")
