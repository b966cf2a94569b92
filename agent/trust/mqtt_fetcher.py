"""Fetching repository files over MQTT: `dev/{id}/req` out, `dev/{id}/resp` in.

Each request (`Request(op="fetch", path, offset, length)`) asks for one chunk of at most
256 KiB; the answer is a binary frame (`ResponseHeader` + raw bytes) whose `total` is
the file's size. Chunks are yielded in order; the overall deadline and the throughput
floor of `BoundedFetcher` apply throughout.

Answers come at QoS 0 (ADR 0050), so this side does what TCP does for its segments
(ADR 0053):
- a congestion window: `initial_window` chunks in flight, one more per answer (slow
  start), then one more per window of answers, up to `window`; it stops growing once the
  round trip is queueing (the measured RTT well over the smallest one: the link is full,
  more in flight would only queue answers that a cut then throws away), and halves on a
  loss (to one chunk on a timeout);
- an adaptive retransmission timeout (RFC 6298 on the round trip less the chunk's own
  serialisation time at the measured bandwidth, see `_Flow`; measured on chunks answered
  at their first request only, Karn), doubled per retry of a chunk; a chunk's timer
  restarts whenever any answer of ours arrives, so chunks queued behind others on a slow
  link are not asked again while the link is busy delivering;
- fast retransmit: a chunk overtaken by three answers to requests sent after it is
  asked again at once (from its own offset, never from zero);
- answers to requests no longer wanted (a chunk already received, a re-ask's twin, an
  earlier attempt) are dropped on the network thread, before the inbox.
A chunk asked `max_retries` times more without an answer ends the download.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import statistics
import time
from collections import deque
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


# Answers to later requests that overtake a chunk before it counts as lost (TCP's three
# duplicate ACKs; the responder's two workers may swap neighbours, never more).
DUPTHRESH = 3
# Queueing the window may add to the smallest round trip before it stops growing (loopback
# round trips are milliseconds: there the window always grows to its maximum).
QUEUE_SLACK_S = 0.25
# Delivery-rate samples the bandwidth estimate takes its maximum over.
BW_SAMPLES = 16


@dataclass
class _Pending:
    offset: int
    length: int
    sent_at: float = 0.0
    seq: int = 0  # the send order of its latest request
    attempts: int = 0
    overtaken: int = 0  # answers to requests sent after its latest one
    ids: set[str] = field(default_factory=set)


class _Flow:
    """Congestion window and retransmission timer (TCP-like, see module doc).

    A 256 KiB chunk is no TCP segment: on a 50 kB/s link it alone takes 5 s to cross, on
    loopback 2 ms. So the round trip is modelled as `base + length / bandwidth`: the
    bandwidth is the median recent delivery rate (each answer gives one: its length over the
    time since it was sent or since the answer before it, whichever is later; a median, not
    BBR's max, because two answers a broker hands over together would claim any speed:
    an underestimate only makes the timeout longer), the base is what remains of each sample, smoothed as RFC 6298
    smooths a TCP round trip. The timeout of a chunk is base + 4 x its variation + its own
    serialisation time. The estimates outlive one download (a resumed download starts with
    what the link showed); the window starts small again for each."""

    def __init__(self, policy: DownloadPolicy) -> None:
        self.policy = policy
        self.sbase: float | None = None
        self.basevar = 0.0
        self.bandwidth: float | None = None  # bytes/s
        self._bw_samples: deque[float] = deque(maxlen=BW_SAMPLES)
        self.min_rtt = math.inf
        self.avg_rtt: float | None = None
        self.cwnd = float(policy.initial_window)
        self.ssthresh = float(policy.window)
        self.recover_seq = 0  # one window decrease per loss event (sends up to this seq)
        self.last_answer_at = 0.0

    def restart(self) -> None:
        self.cwnd = float(min(self.policy.initial_window, self.policy.window))
        self.ssthresh = float(self.policy.window)
        self.min_rtt, self.avg_rtt = math.inf, None

    def window(self) -> int:
        return max(1, min(self.policy.window, int(self.cwnd)))

    def timeout(self, length: int, attempts: int) -> float:
        pol = self.policy
        if self.sbase is None or self.bandwidth is None:
            # Nothing measured yet: a bound that a full chunk over a slow link meets.
            return min(pol.max_rto_s, pol.request_timeout_s * 2 ** max(0, attempts - 1))
        base = min(pol.max_rto_s, max(min(pol.min_rto_s, pol.request_timeout_s), self.sbase + 4 * self.basevar))
        return min(pol.max_rto_s, (base + length / self.bandwidth) * 2 ** max(0, attempts - 1))

    def answered(self, length: int, sent_at: float, now: float, first_try: bool) -> None:
        """An answer arrived: bandwidth always; round trip only when unambiguous (Karn)."""
        since = now - max(sent_at, self.last_answer_at)
        self.last_answer_at = now
        if length > 0 and since > 0:
            self._bw_samples.append(length / since)
            self.bandwidth = statistics.median(self._bw_samples)
        if not first_try:
            return
        rtt = now - sent_at
        base = max(0.0, rtt - (length / self.bandwidth if self.bandwidth else 0.0))
        if self.sbase is None:
            self.sbase, self.basevar = base, base / 2
        else:
            self.basevar = 0.75 * self.basevar + 0.25 * abs(self.sbase - base)
            self.sbase = 0.875 * self.sbase + 0.125 * base
        self.min_rtt = min(self.min_rtt, rtt)
        self.avg_rtt = rtt if self.avg_rtt is None else 0.75 * self.avg_rtt + 0.25 * rtt

    def progress(self) -> None:
        """One chunk answered: grow, unless the round trip shows the link already queueing."""
        if self.avg_rtt is not None and self.min_rtt < math.inf:
            queueing = self.avg_rtt - self.min_rtt
            limit = max(self.min_rtt, QUEUE_SLACK_S)
            if queueing > 2 * limit:
                self.cwnd = max(1.0, self.cwnd - 1)
                return
            if queueing > limit:
                return
        if self.cwnd < self.ssthresh:
            self.cwnd += 1
        else:
            self.cwnd += 1 / self.cwnd
        self.cwnd = min(self.cwnd, float(self.policy.window))

    def loss(self, seq: int, sent: int, timeout: bool) -> None:
        if seq <= self.recover_seq:
            return  # this loss event already shrank the window
        self.recover_seq = sent
        self.ssthresh = max(1.0, self.cwnd / 2)
        self.cwnd = 1.0 if timeout else self.ssthresh


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
        self._flow = _Flow(self.policy)
        # Request ids still wanted: written by the fetching thread, read by the network
        # thread (set membership and add/discard are atomic under the GIL).
        self._live: set[str] = set()
        self._heard_at = 0.0  # the last answer of ours to arrive, wanted or not
        self.stale_dropped = 0
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
        # Even a stale answer shows the link delivering to us: the timers restart on it.
        self._heard_at = time.monotonic()
        if header.id not in self._live:
            self.stale_dropped += 1  # a duplicate, or a chunk already had: dropped here
            return
        try:
            self._inbox.put_nowait((header, body))
        except queue.Full:
            log.warning("response inbox full; dropping %s (it will be asked again)", header.id)

    def _send(self, path: str, pending: _Pending, ids: dict[str, tuple[_Pending, int]]) -> None:
        self._counter += 1
        req_id = f"{self._prefix}-{self._counter}"
        pending.ids.add(req_id)
        pending.sent_at = time.monotonic()
        pending.seq = self._counter
        pending.attempts += 1
        pending.overtaken = 0
        ids[req_id] = (pending, self._counter)
        self._live.add(req_id)  # before the publish: a synchronous transport answers within it
        request = Request(id=req_id, op=FETCH_OP, path=path, offset=pending.offset, length=pending.length)
        try:
            self._transport.publish(self._req_topic, encode(request), qos=1)
        except TransportError:
            raise
        except FleetgenError as e:  # the link's own errors (LinkError), in this domain's terms
            raise TransportError(f"cannot send request for {request.path}: {e}") from None

    def _forget(self, p: _Pending, ids: dict[str, tuple[_Pending, int]]) -> None:
        for stale in p.ids:
            ids.pop(stale, None)
            self._live.discard(stale)

    def _drain_stale(self) -> None:
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def _chunks(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        self._live.clear()
        self._drain_stale()
        self._flow.restart()
        try:
            yield from self._transfer(url, offset, deadline, limit)
        finally:
            self._live.clear()

    def _transfer(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        path = url_path(url)
        policy, flow = self.policy, self._flow
        end: int | None = None if limit is None else limit + 1
        total: int | None = None
        ids: dict[str, tuple[_Pending, int]] = {}
        pending: dict[int, _Pending] = {}
        ready: dict[int, bytes] = {}
        next_offset = expect = offset

        def request_more() -> None:
            nonlocal next_offset
            # Until the first answer tells the size, ask for one chunk only.
            want = flow.window() if total is not None else 1
            while len(pending) + len(ready) < want and (end is None or next_offset < end):
                length = policy.chunk_size if end is None else min(policy.chunk_size, end - next_offset)
                p = _Pending(offset=next_offset, length=length)
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
            heard = self._heard_at
            due = min(max(p.sent_at, heard) + flow.timeout(p.length, p.attempts) for p in pending.values())
            wait = min(due - time.monotonic(), deadline.wait_budget())
            try:
                header, body = self._inbox.get(timeout=max(wait, 0.0))
            except queue.Empty:
                deadline.check()
                self._retry_late(path, pending, ids, url)
                continue
            p, answered_seq = ids.get(header.id, (None, 0))
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
            # Karn: an answer to a re-asked chunk says nothing of the round trip
            flow.answered(len(body), p.sent_at, time.monotonic(), p.attempts == 1)
            flow.progress()
            end = total if end is None else min(end, total)
            del pending[p.offset]
            self._forget(p, ids)
            # Requests past the end (sent before the size was known) are dropped.
            for off in [o for o in pending if o >= end]:
                self._forget(pending.pop(off), ids)
            if body:
                ready[p.offset] = body
            next_offset = min(next_offset, end)
            self._fast_retransmit(path, pending, ids, url, answered_seq)

    def _fast_retransmit(
        self, path: str, pending: dict[int, _Pending], ids: dict[str, tuple[_Pending, int]], url: str,
        answered_seq: int,
    ) -> None:
        for q in list(pending.values()):
            if q.seq >= answered_seq:
                continue
            q.overtaken += 1
            if q.overtaken >= DUPTHRESH:
                self._again(path, q, ids, url, timeout=False)

    def _again(self, path: str, p: _Pending, ids: dict[str, tuple[_Pending, int]], url: str,
               timeout: bool) -> None:
        if p.attempts > self.policy.max_retries:
            raise TransportError(f"{url}: no answer for offset {p.offset} after {p.attempts} requests")
        self._flow.loss(p.seq, self._counter, timeout)
        log.info("no answer for %s at offset %d (%s); asking again (try %d)", url, p.offset,
                 "timeout" if timeout else "overtaken", p.attempts + 1)
        self._send(path, p, ids)

    def _retry_late(
        self, path: str, pending: dict[int, _Pending], ids: dict[str, tuple[_Pending, int]], url: str
    ) -> None:
        now, heard = time.monotonic(), self._heard_at
        for p in list(pending.values()):
            if now - max(p.sent_at, heard) >= self._flow.timeout(p.length, p.attempts):
                self._again(path, p, ids, url, timeout=True)
