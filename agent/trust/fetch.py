"""Fetchers: how bytes reach python-tuf, bounded in time and size.

python-tuf only gives up after a 30 s silence between bytes, so a one-byte drip would keep
a download alive for ever (PITFALLS, TUF). Every fetcher here derives from
`BoundedFetcher`, which gives each download an overall deadline and a minimum-throughput
floor (average since the start, enforced after a short grace period) and raises
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
    """Bounds of one download. Defaults suit a slow cellular link and a 1 GB bundle."""

    deadline_s: float = 1800.0
    min_bytes_per_s: float = 4 * KiB
    # A lost request is asked again after request_timeout_s; the grace period must outlast
    # a few of those, or one lost MQTT req/resp ends the download as slow retrieval.
    grace_s: float = 30.0
    chunk_size: int = MAX_CHUNK
    # 16 x 256 KiB in flight: 4 MiB; at 4 a loopback transfer ran at ~23 MB/s, at 16 ~80 (bench).
    window: int = 16
    request_timeout_s: float = 5.0
    max_retries: int = 5

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk_size {self.chunk_size} must be in 1..{MAX_CHUNK}")
        if not 1 <= self.window <= 32:
            raise ValueError(f"window {self.window} must be in 1..32")
        if self.deadline_s <= 0 or self.request_timeout_s <= 0 or self.grace_s < 0:
            raise ValueError("deadline_s and request_timeout_s must be > 0, grace_s >= 0")
        if self.min_bytes_per_s < 0 or self.max_retries < 0:
            raise ValueError("min_bytes_per_s and max_retries must be >= 0")


class Deadline:
    """Time accounting of one download: overall deadline plus throughput floor."""

    def __init__(
        self, policy: DownloadPolicy, url: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy
        self.url = url
        self._clock = clock
        self.start = clock()
        self.received = 0

    def _floor_due(self) -> float:
        """The instant the average throughput drops under the floor, if nothing arrives."""
        floor = self.policy.min_bytes_per_s
        if floor <= 0:
            return float("inf")
        return self.start + max(self.policy.grace_s, self.received / floor)

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
            raise SlowRetrievalError(
                f"{self.url}: {self.received / elapsed:.0f} B/s is under the floor of "
                f"{self.policy.min_bytes_per_s:g} B/s after {elapsed:.1f} s"
            )

    def add(self, n: int) -> None:
        self.received += n
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
