"""The steps of an install, as the update worker and the offline command use them.

    Installer.download(verified, cancelled)  resumable download into downloads/SHA.part
    Installer.unpack(target)                 one-pass verify + unpack into bundles/
    Installer.apply_desired(envelope)        verify -> download -> unpack -> switch, no trial
                                             (trust tests; the daemon uses worker.py)
    install_offline(...)                     `fleetgen-agent install-bundle`

Verification itself is agent.trust's (TrustedUpdater); this module moves bytes and
directories around it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.errors import FleetgenError
from agent.protocol.messages import SignedEnvelope
from agent.trust.errors import BundleFormatError, LengthExceededError, NotProvisionedError, TransportError
from agent.trust.fetch import BoundedFetcher, LocalFetcher
from agent.trust.layout import TrustPaths, provision
from agent.trust.target import Target
from agent.trust.updater import TrustedUpdater, VerifiedDesired, logged_refusal, tuf_errors
from agent.update.store import BundleStore, InstalledBundle

if TYPE_CHECKING:
    from tuf.ngclient import UpdaterConfig

log = logging.getLogger(__name__)

# Progress callback: (bytes so far, total).
Progress = Callable[[int, int], None]


class Cancelled(FleetgenError):
    """A newer desired document arrived; the step in progress stopped (nothing refused)."""


@dataclass(frozen=True, slots=True)
class UpdateResult:
    target_path: str | None
    installed: InstalledBundle | None
    director_version: int | None = None

    @property
    def changed(self) -> bool:
        return self.installed is not None and self.installed.changed


class Installer:
    def __init__(
        self,
        state_dir: Path,
        fetcher: BoundedFetcher,
        *,
        board: str | None,
        device_id: str | None = None,
        config: UpdaterConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = TrustedUpdater(state_dir, fetcher, board=board, device_id=device_id,
                                       config=config, clock=clock)
        self.paths: TrustPaths = self.verifier.paths
        self.store = BundleStore(Path(state_dir))
        self.board = board

    @property
    def fetcher(self) -> BoundedFetcher:
        return self.verifier.fetcher

    @fetcher.setter
    def fetcher(self, fetcher: BoundedFetcher) -> None:
        self.verifier.fetcher = fetcher

    def part_file(self, target: Target) -> Path:
        return self.paths.downloads_dir / f"{target.sha256}.part"

    def discard_downloads(self, keep: Target | None = None) -> None:
        if not self.paths.downloads_dir.is_dir():
            return
        for other in self.paths.downloads_dir.glob("*.part"):
            if keep is None or other != self.part_file(keep):
                other.unlink(missing_ok=True)

    def download(
        self,
        target: Target,
        url: str,
        *,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Path:
        """Download a target into downloads/SHA.part, resuming a previous partial file.

        Stops one byte past the signed length. A transport failure or a cancel keeps the
        partial file for the next attempt; any refusal deletes it.
        """
        self.paths.ensure()
        part = self.part_file(target)
        self.discard_downloads(keep=target)  # targets no longer wanted
        have = part.stat().st_size if part.exists() else 0
        if have > target.length:
            part.unlink()
            have = 0
        if have:
            log.info("resuming %s at byte %d of %d", target.path, have, target.length)
        if have == target.length:  # complete before an interruption; HTTPS would answer 416
            return part
        try:
            with open(part, "ab") as f:
                for chunk in self.fetcher.fetch_range(url, have, target.length):
                    have += len(chunk)
                    if have > target.length:
                        raise LengthExceededError(
                            f"{target.path}: download exceeds the {target.length} bytes signed "
                            "targets declare (stopped)"
                        )
                    f.write(chunk)
                    if progress is not None:
                        progress(have, target.length)
                    if cancelled():
                        f.flush()
                        raise Cancelled(f"download of {target.path} cancelled at byte {have}")
                f.flush()
                os.fsync(f.fileno())
        except (TransportError, Cancelled):
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        return part

    def unpack(self, target: Target, keep: tuple[str, ...] = ()) -> InstalledBundle:
        """Verify the downloaded file against the signed length and sha256 while unpacking
        it; the download is gone afterwards, whatever happened."""
        part = self.part_file(target)
        try:
            with open(part, "rb", buffering=0) as f:
                return self.store.unpack(f, origin=target.path, expected_length=target.length,
                                         expected_sha256=target.sha256, board=self.board, keep=keep)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    # -- the whole flow without a trial (tests of the trust checks, tools) ------------

    def apply_desired(self, envelope: SignedEnvelope | bytes) -> UpdateResult:
        verified: VerifiedDesired = self.verifier.verify_desired(envelope)
        version = verified.desired.version
        target = verified.target
        if target is None or verified.url is None:
            return UpdateResult(None, None, version)
        if self.store.is_current(target.sha256):
            log.info("%s is already the current bundle", target.path)
            return UpdateResult(target.path, None, version)
        with logged_refusal(target.path), tuf_errors():  # e.g. the repository has no such file (404)
            self.download(target, verified.url)
        with logged_refusal(target.path):
            installed = self.unpack(target)
        if installed.changed:
            self.store.switch(installed.path.name)
            self.store.recover()
        return UpdateResult(target.path, installed, version)

    def install_file(self, bundle: Path, target_path: str | None = None) -> UpdateResult:
        """Install a bundle file that must be a signed target (named by its file name)."""
        path = target_path or Path(bundle).name
        target = self.verifier.verify_file_target(path)
        with logged_refusal(str(bundle)), open(bundle, "rb", buffering=0) as f:
            installed = self.store.install(f, origin=str(bundle), expected_length=target.length,
                                           expected_sha256=target.sha256, board=self.board)
        return UpdateResult(path, installed)


def install_offline(
    state_dir: Path,
    bundle: Path,
    metadata_dir: Path,
    *,
    board: str | None,
    trust_root: bool = False,
) -> UpdateResult:
    """`fleetgen-agent install-bundle`: every TUF check, no network, atomic install.

    On a state dir with no pinned root, the root metadata in `metadata_dir` is trusted
    only when `trust_root` is set (and a warning says so).
    """
    paths = TrustPaths(Path(state_dir))
    if not paths.provisioned:
        if not trust_root:
            raise NotProvisionedError(
                f"{paths.state_dir}: not provisioned (no pinned root metadata); give "
                f"--trust-root to trust the root metadata in {metadata_dir}"
            )
        first = metadata_dir / "1.root.json"
        source = first if first.is_file() else metadata_dir / "root.json"
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            raise BundleFormatError(f"{metadata_dir}: no root metadata (1.root.json)") from None
        provision(paths, data, f"{source} (--trust-root)", warn=True)
    return Installer(state_dir, LocalFetcher(metadata_dir), board=board).install_file(bundle)
