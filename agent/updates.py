"""Runs signed updates off the daemon loop.

The daemon hands each verified-shape `desired` envelope to `UpdateWorker.submit`; one
worker thread applies them in order (only the newest pending one matters: a director
document supersedes the ones before it) through `agent.trust.updater.TrustedUpdater`,
which does every TUF and director check, and posts an `UpdateOutcome` back to the
daemon's inbox, where events and the reported state are published.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FleetgenError
from agent.manifest import load_manifest
from agent.protocol.messages import SignedEnvelope
from agent.trust.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActiveBundle:
    name: str
    version: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.name}-{self.version}"


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """What one director document led to; `error` is set when it was refused or failed."""

    director_version: int | None
    active: ActiveBundle | None
    installed_sha256: str | None = None  # set when this outcome installed a new bundle
    error: FleetgenError | None = None


def active_bundle(state_dir: Path) -> ActiveBundle | None:
    """The bundle `current` points at, if any (the store flips it atomically)."""
    from agent.store import BundleStore

    path = BundleStore(state_dir).current()
    if path is None:
        return None
    try:
        manifest = load_manifest(path)
    except FleetgenError as e:
        log.error("active bundle at %s is unreadable: %s", path, e)
        return None
    return ActiveBundle(manifest.name, manifest.version, path)


class UpdateWorker:
    def __init__(
        self,
        state_dir: Path,
        transport: Transport,
        device_id: str,
        board: str | None,
        post: Callable[[UpdateOutcome], None],
    ) -> None:
        self.state_dir = Path(state_dir)
        self.transport = transport
        self.device_id = device_id
        self.board = board
        self.post = post
        self._pending: queue.Queue[SignedEnvelope | None] = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="updates", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._replace(None)
        self._thread.join(timeout)

    def submit(self, envelope: SignedEnvelope) -> None:
        self._replace(envelope)

    def _replace(self, item: SignedEnvelope | None) -> None:
        # Newest wins: drop a pending, not yet started document.
        with contextlib.suppress(queue.Empty):
            self._pending.get_nowait()
        self._pending.put_nowait(item)

    def _run(self) -> None:
        while True:
            envelope = self._pending.get()
            if envelope is None:
                return
            # python-tuf and cryptography cost ~15 MB: imported with the first update, so an
            # idle daemon stays small (issue 10's 40 MB target)
            from agent.trust.mqtt_fetcher import MqttFetcher
            from agent.trust.updater import TrustedUpdater

            try:
                fetcher = MqttFetcher(self.transport, self.device_id)
                try:
                    updater = TrustedUpdater(self.state_dir, fetcher, board=self.board, device_id=self.device_id)
                    result = updater.apply_desired(envelope)
                finally:
                    fetcher.close()
                sha = result.installed.bundle.sha256 if result.changed and result.installed else None
                self.post(UpdateOutcome(result.director_version, active_bundle(self.state_dir), sha))
            except FleetgenError as e:
                self.post(UpdateOutcome(None, active_bundle(self.state_dir), error=e))
            except Exception as e:
                # A bug in an update must not stop later updates; it is reported like a failure.
                log.exception("update failed unexpectedly")
                error = FleetgenError(f"internal error: {type(e).__name__}: {e}")
                self.post(UpdateOutcome(None, active_bundle(self.state_dir), error=error))
