"""Fetchers: how bytes reach python-tuf, bounded in time and size.

python-tuf only gives up after a 30 s silence between bytes, so a one-byte drip would keep
a download alive for ever (PITFALLS, TUF). Every fetcher here derives from
`BoundedFetcher`, which gives each download an overall deadline and a minimum-throughput
floor (the bytes received over a sliding window of `grace_s`, enforced once the download is
that old, so a stall late in a long download is seen as soon as in a short one) and raises
`SlowRetrievalError` as soon as either is certain to be missed. A fetcher only implements
`_chunks(url, offset, deadline, limit)`, waiting at most `deadline.wait_budget()` for data.

URLs are logical: `fleetgen://repository/metadata/NAME` and
`fleetgen://repository/targets/PATH`; each fetcher maps them onto its transport.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient.fetcher import FetcherInterface

from agent.manifest import ManifestError, check_relative_path
from agent.trust.errors import SlowRetrievalError, TransportError

log = logging.getLogger(__name__)

KiB = 1024
MAX_CHUNK = 256 * KiB
REPOSITORY_URL = "fleetgen://repository/"
METADATA_URL = REPOSITORY_URL + "metadata/"
TARGETS_URL = REPOSITORY_URL + "targets/"


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """Bounds of one download. Defaults suit a slow cellular link and a 1 GB bundle.

    The MQTT fetcher's flow control (agent/trust/mqtt_fetcher.py) starts with
    `initial_window` chunks in flight and grows towards `window` while answers come;
    `request_timeout_s` is the retransmission timeout until a round trip was measured,
    then it adapts (clamped to `min_rto_s`..`max_rto_s`, doubled per retry)."""

    deadline_s: float = 1800.0
    min_bytes_per_s: float = 4 * KiB
    # The floor's sliding window: it must outlast a few lost requests, or one lost MQTT
    # req/resp (or a reconnect) ends the download as slow retrieval.
    grace_s: float = 30.0
    chunk_size: int = MAX_CHUNK
    # The most chunks in flight (16 x 256 KiB: 4 MiB); at 4 a loopback transfer ran at
    # ~23 MB/s, at 16 ~80 (bench, before ADR 0050).
    window: int = 16
    initial_window: int = 2
    # The timeout of a request until the link was measured: a 256 KiB chunk takes 5 s to
    # cross 50 kB/s plus the round trip (ADR 0053); then it adapts.
    request_timeout_s: float = 15.0
    min_rto_s: float = 0.2
    max_rto_s: float = 60.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size {self.chunk_size} must be in 1..{MAX_CHUNK}")
        if not 1 <= self.window <= 32:
            raise ValueError(f"window {self.window} must be in 1..32")
        if self.initial_window < 1:
            raise ValueError(f"initial_window {self.initial_window} must be >= 1")
        if self.deadline_s <= 0 or self.request_timeout_s <= 0 or self.grace_s < 0:
            raise ValueError("deadline_s and request_timeout_s must be > 0, grace_s >= 0")
        if not 0 < self.min_rto_s <= self.max_rto_s:
            raise ValueError("min_rto_s must be > 0 and <= max_rto_s")
        if self.min_bytes_per_s < 0 or self.max_retries < 0:
            raise ValueError("min_bytes_per_s and max_retries must be >= 0")


# The floor's window keeps at most this many buckets of arrivals, whatever the rate.
_BUCKETS = 32


class Deadline:
    """Time accounting of one download: overall deadline plus throughput floor.

    The floor is measured over a sliding window of `grace_s`: the download fails once the
    bytes that arrived in the last `grace_s` seconds are fewer than `min_bytes_per_s *
    grace_s` (and the download is at least that old). An average since the start would let
    a fast first half hide a dead link for as long again, and would make a resumed download
    that first drains stale answers look as slow as its whole history."""

    def __init__(
        self, policy: DownloadPolicy, url: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.url = url
        self._clock = clock
        self.start = clock()
        self.received = 0
        self._window = max(policy.grace_s, 1e-3)
        # (bucket number, time of its latest arrival, bytes), oldest first
        self._arrivals: deque[tuple[int, float, int]] = deque()

    def _floor_due(self) -> float:
        """The instant the bytes in the sliding window drop under the floor, if nothing arrives."""
        floor = self.policy.min_bytes_per_s
        if floor <= 0:
            return float("inf")
        need = floor * self._window
        acc = 0
        for _, t, n in reversed(self._arrivals):
            acc += n
            if acc >= need:
                return t + self._window
        return self.start + self._window

    def _in_window(self, now: float) -> int:
        return sum(n for _, t, n in self._arrivals if t > now - self._window)

    def wait_budget(self) -> float:
        """How long one may wait for more data before this download is certain to fail."""
        end = min(self.start + self.policy.deadline_s, self._floor_due())
        return end - self._clock()

    def check(self) -> None:
        now = self._clock()
        elapsed = now - self.start
        if elapsed > self.policy.deadline_s:
            raise SlowRetrievalError(
                f"{self.url}: download outlasted its deadline of {self.policy.deadline_s:g} s "
                f"({self.received} bytes received)"
            )
        if now > self._floor_due():
            span = min(elapsed, self._window)
            raise SlowRetrievalError(
                f"{self.url}: {self._in_window(now) / max(span, 1e-9):.0f} B/s over the last "
                f"{span:.1f} s is under the floor of {self.policy.min_bytes_per_s:g} B/s "
                f"({self.received} bytes in {elapsed:.1f} s)"
            )

    def add(self, n: int) -> None:
        now = self._clock()
        self.received += n
        key = int(now * _BUCKETS / self._window)
        if self._arrivals and self._arrivals[-1][0] == key:
            had = self._arrivals[-1][2]
            self._arrivals[-1] = (key, now, had + n)  # its latest time: lenient by at most a bucket
        else:
            self._arrivals.append((key, now, n))
        while self._arrivals and self._arrivals[0][1] <= now - self._window:
            self._arrivals.popleft()
        self.check()


def url_path(url: str) -> str:
    """`fleetgen://repository/metadata/x.json` -> `metadata/x.json` (validated)."""
    if not url.startswith(REPOSITORY_URL):
        raise TransportError(f"{url}: not a fleetgen repository URL")
    path = url[len(REPOSITORY_URL) :]
    try:
        check_relative_path(path)
    except ManifestError as e:
        raise TransportError(f"{url}: {e}") from None
    if path.split("/", 1)[0] not in ("metadata", "targets"):
        raise TransportError(f"{url}: only metadata/ and targets/ are served")
    return path


class BoundedFetcher(FetcherInterface):
    """A python-tuf fetcher whose downloads obey a `DownloadPolicy`.

    Also offers `fetch_range` (resume a target download from an offset). Subclasses
    implement `_chunks`; they must never request more than `limit + 1` bytes in all
    (the caller stops one byte past the signed length) when `limit` is given.
    """

    def __init__(self, policy: DownloadPolicy | None = None) -> None:
        self.policy = policy or DownloadPolicy()
        self._limit: int | None = None

    @abc.abstractmethod
    def _chunks(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        """Yield the bytes of `url` from `offset` on, in order."""

    def _guarded(self, url: str, offset: int, limit: int | None) -> Iterator[bytes]:
        deadline = Deadline(self.policy, url)
        for chunk in self._chunks(url, offset, deadline, limit):
            deadline.add(len(chunk))
            yield chunk

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._guarded(url, 0, self._limit)

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        self._limit = max_length
        try:
            with super().download_file(url, max_length) as f:
                yield f
        finally:
            self._limit = None

    def fetch_range(self, url: str, offset: int, length: int) -> Iterator[bytes]:
        """Bytes of `url` from `offset`; stops after `length + 1` bytes in all."""
        return self._guarded(url, offset, length)


class LocalFetcher(BoundedFetcher):
    """Serves repository URLs from local directories (an exported repository on a USB
    stick, or the controller's repository itself). A missing file is an HTTP 404 for
    python-tuf (which is how it learns there is no newer root)."""

    def __init__(
        self,
        metadata_dir: Path,
        targets_dir: Path | None = None,
        policy: DownloadPolicy | None = None,
    ) -> None:
        super().__init__(policy)
        self._dirs: Mapping[str, Path | None] = {"metadata": metadata_dir, "targets": targets_dir}

    def _resolve(self, url: str) -> Path:
        kind, _, rel = url_path(url).partition("/")
        base = self._dirs.get(kind)
        if base is None:
            raise DownloadHTTPError(f"{url}: no {kind} directory", 404)
        return Path(base) / rel

    def _chunks(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        path = self._resolve(url)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise DownloadHTTPError(f"{url}: not found", 404) from None
        except OSError as e:
            raise TransportError(f"{url}: cannot read {path} ({e.strerror})") from None
        end = None if limit is None else limit + 1
        try:
            pos = offset
            while end is None or pos < end:
                size = self.policy.chunk_size if end is None else min(self.policy.chunk_size, end - pos)
                data = os.pread(fd, size, pos)
                if not data:
                    return
                pos += len(data)
                yield data
        finally:
            os.close(fd)
