"""Fetching repository files over MQTT: `dev/{id}/req` out, `dev/{id}/resp` in.

Each request (`Request(op="fetch", path, offset, length)`) asks for one chunk of at most
256 KiB; the answer is a binary frame (`ResponseHeader` + raw bytes) whose `total` is
the file's size. A window of requests stays in flight; chunks are yielded in order.
A request that gets no answer in `request_timeout_s` is sent again for the same offset
(resuming from the last good byte, not from zero), at most `max_retries` times. The
overall deadline and the throughput floor of `BoundedFetcher` apply throughout.
"""

from __future__ import annotations

import logging
import queue
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from tuf.api.exceptions import DownloadHTTPError

from agent.errors import FleetgenError, ProtocolError
from agent.protocol.codec import decode_response, encode
from agent.protocol.messages import Request, ResponseHeader
from agent.protocol.topics import Channel, device_topic
from agent.trust.errors import TransportError
from agent.trust.fetch import BoundedFetcher, Deadline, DownloadPolicy, url_path
from agent.trust.transport import Transport

log = logging.getLogger(__name__)

FETCH_OP = "fetch"
NOT_FOUND = "not found"


@dataclass
class _Pending:
    offset: int
    length: int
    sent_at: float
    attempts: int = 1
    ids: set[str] = field(default_factory=set)


class MqttFetcher(BoundedFetcher):
    """A python-tuf fetcher that asks the controller over MQTT (see module doc)."""

    def __init__(
        self, transport: Transport, device_id: str, policy: DownloadPolicy | None = None
    ) -> None:
        super().__init__(policy)
        self._transport = transport
        self._req_topic = device_topic(device_id, Channel.REQ)
        self._resp_topic = device_topic(device_id, Channel.RESP)
        self._inbox: queue.Queue[tuple[ResponseHeader, bytes]] = queue.Queue(
            maxsize=4 * self.policy.window + 8
        )
        self._prefix = secrets.token_hex(4)
        self._counter = 0
        transport.subscribe(self._resp_topic, self._on_response)

    def close(self) -> None:
        self._transport.unsubscribe(self._resp_topic)

    def _on_response(self, topic: str, payload: bytes) -> None:
        """Network thread: validate the frame and enqueue; never block."""
        try:
            header, body = decode_response(payload)
        except ProtocolError as e:
            log.warning("dropping malformed response on %s: %s", topic, e)
            return
        if not header.id.startswith(self._prefix):
            return
        try:
            self._inbox.put_nowait((header, body))
        except queue.Full:
            log.warning("response inbox full; dropping %s (it will be asked again)", header.id)

    def _send(self, path: str, pending: _Pending, ids: dict[str, _Pending]) -> None:
        self._counter += 1
        req_id = f"{self._prefix}-{self._counter}"
        pending.ids.add(req_id)
        pending.sent_at = time.monotonic()
        ids[req_id] = pending
        request = Request(id=req_id, op=FETCH_OP, path=path, offset=pending.offset, length=pending.length)
        try:
            self._transport.publish(self._req_topic, encode(request), qos=1)
        except TransportError:
            raise
        except FleetgenError as e:  # the link's own errors (LinkError), in this domain's terms
            raise TransportError(f"cannot send request for {request.path}: {e}") from None

    def _drain_stale(self) -> None:
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def _chunks(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        path = url_path(url)
        policy = self.policy
        self._drain_stale()
        end: int | None = None if limit is None else limit + 1
        total: int | None = None
        ids: dict[str, _Pending] = {}
        pending: dict[int, _Pending] = {}
        ready: dict[int, bytes] = {}
        next_offset = expect = offset

        def request_more() -> None:
            nonlocal next_offset
            # Until the first answer tells the size, ask for one chunk only.
            want = policy.window if total is not None else 1
            while len(pending) + len(ready) < want and (end is None or next_offset < end):
                length = policy.chunk_size if end is None else min(policy.chunk_size, end - next_offset)
                p = _Pending(offset=next_offset, length=length, sent_at=0.0)
                pending[next_offset] = p
                self._send(path, p, ids)
                next_offset += length

        request_more()
        while pending or ready:
            while expect in ready:
                data = ready.pop(expect)
                expect += len(data)
                yield data
            if end is not None and expect >= end:
                return
            request_more()
            if not pending:
                continue
            oldest = min(p.sent_at for p in pending.values())
            wait = min(oldest + policy.request_timeout_s - time.monotonic(), deadline.wait_budget())
            try:
                header, body = self._inbox.get(timeout=max(wait, 0.0))
            except queue.Empty:
                deadline.check()
                self._retry_late(path, pending, ids, url)
                continue
            p = ids.pop(header.id, None)
            if p is None or pending.get(p.offset) is not p:
                # A late duplicate of an answered request. Checked here too: a stream of
                # such frames must not keep a download alive past its floor or deadline.
                deadline.check()
                continue
            if not header.ok:
                if header.error.startswith(NOT_FOUND):
                    raise DownloadHTTPError(f"{url}: {header.error}", 404)
                raise TransportError(f"{url}: repository answered {header.error!r}")
            if header.offset != p.offset or header.total is None:
                raise TransportError(f"{url}: answer for offset {header.offset}, asked {p.offset}")
            if total is None:
                total = header.total
            elif header.total != total:
                raise TransportError(f"{url}: size changed from {total} to {header.total} mid-download")
            expected_len = max(0, min(p.length, total - p.offset))
            if len(body) != expected_len:
                raise TransportError(
                    f"{url}: chunk at {p.offset} has {len(body)} bytes, expected {expected_len}"
                )
            end = total if end is None else min(end, total)
            del pending[p.offset]
            for stale in p.ids:
                ids.pop(stale, None)
            # Requests past the end (sent before the size was known) are dropped.
            for off in [o for o in pending if o >= end]:
                for stale in pending.pop(off).ids:
                    ids.pop(stale, None)
            if body:
                ready[p.offset] = body
            next_offset = min(next_offset, end)

    def _retry_late(
        self, path: str, pending: dict[int, _Pending], ids: dict[str, _Pending], url: str
    ) -> None:
        now = time.monotonic()
        for p in list(pending.values()):
            if now - p.sent_at < self.policy.request_timeout_s:
                continue
            if p.attempts > self.policy.max_retries:
                raise TransportError(
                    f"{url}: no answer for offset {p.offset} after {p.attempts} requests"
                )
            p.attempts += 1
            log.info("no answer for %s at offset %d; asking again (try %d)", url, p.offset, p.attempts)
            self._send(path, p, ids)
