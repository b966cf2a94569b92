"""Answers devices' `req` messages from the image repository (metadata, bundle chunks).

Subscribes to `fleetgen/v1/dev/+/req`. The network thread only validates the topic and
enqueues (bounded queue; overflow is dropped and the device asks again). A few worker
threads answer: each `fetch` reads at most one chunk (≤ 256 KiB) from disk with
`os.pread` and publishes one binary frame on `dev/{id}/resp`, so memory stays bounded by
queue size x request size plus workers x chunk size, whatever the bundle size.

Only `metadata/NAME` and `targets/PATH` under the repository are served; anything else
(absolute paths, `..`, links, other directories) is answered "not found".

Answers go out at QoS 0 (ADR 0050): the device asks again for any chunk that does not come
(agent/trust/mqtt_fetcher.py), so a broker acknowledgement per chunk buys nothing but a
round trip, an in-flight slot of this one client shared by every device, and chunks queued
in an absent device's session that it will ask for again anyway.
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from pathlib import Path

from agent.errors import FleetgenError, ProtocolError
from agent.manifest import ManifestError, check_relative_path
from agent.protocol.codec import decode, encode_response
from agent.protocol.messages import Request, ResponseHeader
from agent.protocol.topics import Channel, device_topic, fleet_filter, parse_topic
from agent.trust.mqtt_fetcher import FETCH_OP, NOT_FOUND
from agent.trust.transport import Transport

log = logging.getLogger(__name__)

MAX_CHUNK = 256 * 1024
SERVED = ("metadata", "targets")


class RepositoryResponder:
    def __init__(
        self,
        transport: Transport,
        repo_dir: Path,
        *,
        workers: int = 2,
        max_queue: int = 256,
        shared: bool = False,
        qos: int = 0,
    ) -> None:
        self._transport = transport
        self._qos = qos
        self._root = Path(repo_dir).resolve()
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=max_queue)
        self._filter = fleet_filter(Channel.REQ, shared=shared)
        self._threads = [
            threading.Thread(target=self._work, name=f"responder-{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._transport.subscribe(self._filter, self._on_request)

    def stop(self) -> None:
        self._transport.unsubscribe(self._filter)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def _on_request(self, topic: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((topic, payload))
        except queue.Full:
            log.warning("request queue full; dropping a request on %s", topic)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            topic, payload = item
            try:
                answer = self.handle(topic, payload)
            except Exception:  # one bad request must not stop the worker
                log.exception("answering %s failed", topic)
                continue
            if answer is None:
                continue
            try:
                self._transport.publish(answer[0], answer[1], qos=self._qos)
            except FleetgenError as e:  # a full queue or a lost link: the device asks again
                log.warning("could not answer on %s: %s", answer[0], e)

    def handle(self, topic: str, payload: bytes) -> tuple[str, bytes] | None:
        """The (topic, frame) answering one request, or None when it cannot be answered."""
        try:
            device_id, channel = parse_topic(topic)
            if channel is not Channel.REQ:
                raise ProtocolError(f"{topic}: not a request topic")
            request = decode(Channel.REQ, payload, device_id)
        except ProtocolError as e:
            log.warning("ignoring request on %s: %s", topic, e)
            return None
        assert isinstance(request, Request)
        resp_topic = device_topic(device_id, Channel.RESP)
        if request.op != FETCH_OP:
            return resp_topic, encode_response(
                ResponseHeader(id=request.id, ok=False, error=f"unknown op {request.op!r}")
            )
        header, body = self._read(request)
        return resp_topic, encode_response(header, body)

    def _resolve(self, rel: str) -> Path | None:
        try:
            check_relative_path(rel)
        except ManifestError:
            return None
        if rel.split("/", 1)[0] not in SERVED:
            return None
        path = self._root / rel
        if not path.resolve().is_relative_to(self._root):
            return None
        return path

    def _read(self, request: Request) -> tuple[ResponseHeader, bytes]:
        path = self._resolve(request.path)
        if path is None:
            return ResponseHeader(id=request.id, ok=False, error=f"{NOT_FOUND}: {request.path}"), b""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return ResponseHeader(id=request.id, ok=False, error=f"{NOT_FOUND}: {request.path}"), b""
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return ResponseHeader(id=request.id, ok=False, error=f"{NOT_FOUND}: {request.path}"), b""
            length = min(request.length or MAX_CHUNK, MAX_CHUNK)
            body = os.pread(fd, length, request.offset) if request.offset < st.st_size else b""
        finally:
            os.close(fd)
        return ResponseHeader(id=request.id, ok=True, offset=request.offset, total=st.st_size), body
