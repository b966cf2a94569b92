"""Messages sent and not yet confirmed stored by the controller (ADR 0091).

A broker's PUBACK says only that the broker took the message: Mosquitto acknowledges a
QoS 1 message before it persists it, so a broker that dies loses what it acknowledged, and
a broker whose queue for an absent controller is full drops it. What a device sends stays
its responsibility until the controller answers on `dev/{id}/stored` with the seqs it
committed. This table tracks those messages: which seqs each carried, when to send it again
if no confirmation came (the timeout doubles per attempt, up to a cap), and it answers a
confirmation with what it confirmed. The daemon's spool and the simulator both use it; the
controller stores each (device, seq) once, so sending again is always safe.

Pure bookkeeping with an injected clock: no I/O, no threads.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from agent.spool import Kind

T = TypeVar("T")


class _Seq(msgspec.Struct):
    seq: int


def seq_of(payload: bytes) -> int:
    """The `seq` of an encoded event or sample, the rest of it left undecoded."""
    return msgspec.json.decode(payload, type=_Seq).seq


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Inclusive (first, last) ranges covering `seqs`, in order (how `stored` carries them)."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def expand(spans: Iterable[tuple[int, int]], limit: int = 1_000_000) -> Iterator[int]:
    """The seqs of inclusive ranges; stops after `limit` of them (a hostile range is huge)."""
    n = 0
    for first, last in spans:
        for seq in range(first, last + 1):
            if n >= limit:
                return
            n += 1
            yield seq


@dataclass
class Pending(Generic[T]):
    """One message: what it carries (`item`: row ids, or the payload to send again)."""

    kind: Kind
    seqs: set[int]
    item: T
    due: float
    attempts: int = 1


@dataclass
class Unconfirmed(Generic[T]):
    timeout_s: float = 10.0
    max_timeout_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _by_seq: dict[tuple[Kind, int], Pending[T]] = field(default_factory=dict)
    _pending: dict[int, Pending[T]] = field(default_factory=dict)  # id(pending) -> pending

    def __len__(self) -> int:
        return len(self._pending)

    def __iter__(self) -> Iterator[Pending[T]]:
        return iter(list(self._pending.values()))

    def sent(self, kind: Kind, seqs: Iterable[int], item: T, attempts: int = 1) -> Pending[T]:
        """Track a message just sent; a seq already tracked moves to it (it was sent again)."""
        wait = min(self.max_timeout_s, self.timeout_s * 2 ** (attempts - 1))
        pending = Pending(kind, set(seqs), item, self.clock() + wait, attempts)
        for seq in pending.seqs:
            old = self._by_seq.get((kind, seq))
            if old is not None:
                old.seqs.discard(seq)
                if not old.seqs:
                    self._pending.pop(id(old), None)
            self._by_seq[(kind, seq)] = pending
        self._pending[id(pending)] = pending
        return pending

    def confirm(self, kind: Kind, seqs: Iterable[int]) -> list[tuple[Pending[T], list[int]]]:
        """The controller stored these: each message they belong to with the seqs confirmed
        now (a message is forgotten once all its seqs are). Seqs nobody tracks are ignored:
        a confirmation can come after the message was given up and sent again."""
        hits: dict[int, tuple[Pending[T], list[int]]] = {}
        for seq in seqs:
            pending = self._by_seq.pop((kind, seq), None)
            if pending is None:
                continue
            pending.seqs.discard(seq)
            hits.setdefault(id(pending), (pending, []))[1].append(seq)
            if not pending.seqs:
                self._pending.pop(id(pending), None)
        return list(hits.values())

    def next_due(self) -> float | None:
        """When the earliest overdue message falls due (the clock's time), if any is tracked."""
        return min((p.due for p in self._pending.values()), default=None)

    def confirm_ranges(self, kind: Kind, spans: list[tuple[int, int]]) -> list[tuple[Pending[T], list[int]]]:
        """`confirm` for inclusive ranges, in time bounded by the smaller of the ranges' width
        and what is tracked (a range may span billions of seqs)."""
        width = sum(last - first + 1 for first, last in spans)
        if width <= len(self._by_seq):
            return self.confirm(kind, expand(spans))
        ordered = sorted(spans)
        starts = [first for first, _ in ordered]

        def covered(seq: int) -> bool:
            i = bisect.bisect_right(starts, seq) - 1
            return i >= 0 and seq <= ordered[i][1]

        return self.confirm(kind, [seq for k, seq in list(self._by_seq) if k == kind and covered(seq)])

    def take_due(self) -> list[Pending[T]]:
        """Messages whose confirmation is overdue, no longer tracked: the caller sends them
        again (and tracks them with `sent(..., attempts=p.attempts + 1)`)."""
        now = self.clock()
        due = [p for p in self._pending.values() if p.due <= now]
        for pending in due:
            self._forget(pending)
        return due

    def all_due(self) -> None:
        """A new connection: the broker may have lost anything not yet confirmed, so all of it
        is due now (at the attempt it had reached)."""
        now = self.clock()
        for pending in self._pending.values():
            pending.due = now

    def _forget(self, pending: Pending[T]) -> None:
        self._pending.pop(id(pending), None)
        for seq in pending.seqs:
            if self._by_seq.get((pending.kind, seq)) is pending:
                del self._by_seq[(pending.kind, seq)]
