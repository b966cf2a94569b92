"""Fetching repository files over HTTPS (the alternative to MQTT).

`HttpsFetcher(base_url)` maps `fleetgen://repository/metadata/X` to `{base_url}metadata/X`
(the layout `fleetgen bundle export` writes and any static web server can serve).
Resuming uses a `Range` request (a server that ignores it costs the bytes already had,
which are skipped). Reads return as soon as any bytes arrive (`read1`), so
`BoundedFetcher`'s throughput floor sees a drip for what it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from tuf.api.exceptions import DownloadHTTPError

from agent.trust.errors import TransportError
from agent.trust.fetch import BoundedFetcher, Deadline, DownloadPolicy, url_path

log = logging.getLogger(__name__)


class HttpsFetcher(BoundedFetcher):
    def __init__(
        self,
        base_url: str,
        policy: DownloadPolicy | None = None,
        *,
        ca_certs: str | None = None,
    ) -> None:
        import urllib3

        super().__init__(policy)
        if not base_url.startswith(("https://", "http://")):
            raise TransportError(f"{base_url}: expected an https:// URL")
        self._base = base_url if base_url.endswith("/") else base_url + "/"
        self._pool = urllib3.PoolManager(
            ca_certs=ca_certs, retries=urllib3.Retry(total=2, redirect=0, read=0)
        )

    def _chunks(
        self, url: str, offset: int, deadline: Deadline, limit: int | None
    ) -> Iterator[bytes]:
        import urllib3

        target = self._base + url_path(url)
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        timeout = max(0.1, min(self.policy.request_timeout_s, deadline.wait_budget()))
        try:
            resp = self._pool.request(
                "GET",
                target,
                headers=headers,
                preload_content=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
            )
        except urllib3.exceptions.HTTPError as e:
            raise TransportError(f"{target}: {e}") from None
        try:
            if resp.status >= 400:
                raise DownloadHTTPError(f"{target}: HTTP {resp.status}", resp.status)
            # A server without Range support sends the whole file (200): skip what we have,
            # or a partial download could never be resumed nor finished.
            skip = offset if resp.status == 200 else 0
            left = None if limit is None else limit + 1 - offset
            while left is None or left > 0:
                size = self.policy.chunk_size if left is None else min(left + skip, self.policy.chunk_size)
                try:
                    data = resp.read1(size)
                except urllib3.exceptions.HTTPError as e:
                    deadline.check()
                    raise TransportError(f"{target}: {e}") from None
                if not data:
                    return
                if skip:
                    dropped = min(skip, len(data))
                    skip -= dropped
                    data = data[dropped:]
                    if not data:
                        deadline.check()
                        continue
                if left is not None:
                    left -= len(data)
                yield data
        finally:
            resp.release_conn()
