"""Verification of the device's updates: trusted metadata and the director's word.

    verify_desired(envelope)  TUF refresh -> director document check (device, version,
                              expiry, signature by the key pinned in root) -> the named
                              target must be a signed TUF target with the same length
                              and hashes. Returns what to install; fetches no bundle.
    targetinfo(path)          the signed targets' entry for a bundle file (offline).

python-tuf's ngclient does every TUF check (signatures, thresholds, expiry, rollback,
mix-and-match, root rotation); this module wires its fetcher, maps its errors onto the
trust family and adds what TUF leaves to the application. Every refusal raises a
TrustError naming its check. Downloading, unpacking and switching are the update
lifecycle's (agent/update/): this package only verifies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ProtocolError
from agent.protocol.codec import decode_as
from agent.protocol.messages import DesiredState, SignedEnvelope
from agent.trust.director import (
    check_claims,
    check_target_matches,
    director_keys_from_root,
    peek_desired,
    verify_desired,
)
from agent.trust.errors import (
    BundleFormatError,
    TrustError,
    UnknownTargetError,
)
from agent.trust.fetch import METADATA_URL, TARGETS_URL, BoundedFetcher
from agent.trust.layout import (
    TrustPaths,
    load_director_version,
    save_director_version,
)
from agent.trust.target import Target
from agent.trust.tuf_errors import translate

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater, UpdaterConfig

log = logging.getLogger(__name__)

MAX_ENVELOPE = 64 * 1024


@dataclass(frozen=True, slots=True)
class VerifiedDesired:
    """A director document that passed every check, and the signed target it names."""

    desired: DesiredState
    target: Target | None
    info: TargetFile | None
    url: str | None


@contextlib.contextmanager
def tuf_errors() -> Iterator[None]:
    from tuf.api.exceptions import DownloadError, RepositoryError

    try:
        yield
    except (RepositoryError, DownloadError) as e:
        raise translate(e) from e


@contextlib.contextmanager
def logged_refusal(what: str) -> Iterator[None]:
    try:
        yield
    except TrustError as e:
        log.warning("update refused (check: %s) for %s: %s", e.check, what, e)
        raise


class TrustedUpdater:
    """One device's verifier of updates. Not thread-safe: the daemon drives it from one worker."""

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
        self.paths = TrustPaths(Path(state_dir))
        self.fetcher = fetcher
        self.board = board
        self.device_id = device_id
        self._config = config
        self._clock = clock

    # -- TUF metadata -------------------------------------------------------------

    def refresh(self) -> Updater:
        """A fresh ngclient Updater with top-level metadata refreshed (all TUF checks)."""
        from tuf.ngclient import Updater

        bootstrap = self.paths.root_bytes()
        self.paths.ensure()
        with tuf_errors():
            updater = Updater(
                metadata_dir=str(self.paths.metadata_dir),
                metadata_base_url=METADATA_URL,
                target_base_url=TARGETS_URL,
                fetcher=self.fetcher,
                config=self._config,
                bootstrap=bootstrap,
            )
            updater.refresh()
        return updater

    def trusted_root(self) -> dict[str, Any]:
        """The `signed` part of the newest root ngclient has verified and cached."""
        data = (self.paths.metadata_dir / "root.json").read_bytes()
        signed: dict[str, Any] = json.loads(data)["signed"]
        return signed

    def targetinfo(self, updater: Updater, path: str) -> TargetFile:
        with tuf_errors():
            info = updater.get_targetinfo(path)
        if info is None:
            raise UnknownTargetError(f"{path} is not a target in the signed targets metadata")
        if "sha256" not in info.hashes:
            raise UnknownTargetError(f"{path}: signed targets carry no sha256 for it")
        return info

    def target_url(self, info: TargetFile) -> str:
        return self.url_for(info.path, next(iter(info.hashes.values())))

    def url_for(self, path: str, first_hash: str) -> str:
        """Where a target is fetched (consistent snapshots prefix the name with its hash)."""
        if self.trusted_root().get("consistent_snapshot", False):
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{first_hash}.{basename}"
        return TARGETS_URL + path

    # -- online: the director's desired state --------------------------------------

    def verify_desired(self, envelope: SignedEnvelope | bytes) -> VerifiedDesired:
        """Check a director document received on `dev/{id}/desired` and the target it names.

        Raises a TrustError naming the failed check (also logged), TransportError when the
        repository cannot be reached; nothing changes then.
        """
        with logged_refusal("director document"):
            return self._verify_desired(envelope)

    def _verify_desired(self, envelope: SignedEnvelope | bytes) -> VerifiedDesired:
        if self.device_id is None:
            raise TrustError("verify_desired needs the device id")
        if isinstance(envelope, bytes):
            try:
                envelope = decode_as(SignedEnvelope, envelope, MAX_ENVELOPE)
            except ProtocolError as e:
                raise BundleFormatError(f"director document: {e}") from None
        highest = load_director_version(self.paths)
        device, now = self.device_id, self._clock()
        # Cheap refusals on the unverified claims, before any repository traffic.
        check_claims(peek_desired(envelope), device_id=device, now=now, highest_version=highest)
        updater = self.refresh()
        keys = director_keys_from_root(self.trusted_root())
        state = verify_desired(envelope, keys, device_id=device, now=now, highest_version=highest)
        save_director_version(self.paths, state.version)
        log.info("director document v%d for %s accepted", state.version, self.device_id)
        if state.target is None:
            return VerifiedDesired(state, None, None, None)
        info = self.targetinfo(updater, state.target.path)
        check_target_matches(state.target, info.length, info.hashes)
        target = Target(path=info.path, length=info.length, sha256=info.hashes["sha256"])
        return VerifiedDesired(state, target, info, self.target_url(info))

    # -- offline (air-gapped) --------------------------------------------------------

    def verify_file_target(self, target_path: str) -> Target:
        """The signed target entry for a bundle file, after a full TUF refresh."""
        with logged_refusal(target_path):
            info = self.targetinfo(self.refresh(), target_path)
        return Target(path=info.path, length=info.length, sha256=info.hashes["sha256"])
