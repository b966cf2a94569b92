"""The device's update flow: trusted metadata, the director's word, the bundle.

    apply_desired(envelope)   online: TUF refresh -> director document check (device,
                              version, expiry, signature by the key pinned in root) ->
                              the named target must be a signed TUF target with the same
                              length and hashes -> resumable download -> one-pass verify
                              and unpack -> flip `current`.
    install_offline(file)     air-gapped: the same TUF checks against an exported
                              repository directory, no director, no network.

python-tuf's ngclient does every TUF check (signatures, thresholds, expiry, rollback,
mix-and-match, root rotation); this module wires its fetcher, maps its errors onto the
trust family and adds what TUF leaves to the application. Every refusal raises a
TrustError naming its check; the active bundle is untouched and the download discarded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ProtocolError
from agent.protocol.codec import decode_as
from agent.protocol.messages import SignedEnvelope, TargetRef
from agent.store import BundleStore, InstalledBundle
from agent.trust.director import (
    check_claims,
    check_target_matches,
    director_keys_from_root,
    peek_desired,
    verify_desired,
)
from agent.trust.errors import (
    BundleFormatError,
    LengthExceededError,
    NotProvisionedError,
    TransportError,
    TrustError,
    UnknownTargetError,
)
from agent.trust.fetch import METADATA_URL, TARGETS_URL, BoundedFetcher, LocalFetcher
from agent.trust.layout import (
    TrustPaths,
    load_director_version,
    provision,
    save_director_version,
)
from agent.trust.tuf_errors import translate

if TYPE_CHECKING:
    from tuf.api.metadata import TargetFile
    from tuf.ngclient import Updater, UpdaterConfig

log = logging.getLogger(__name__)

MAX_ENVELOPE = 64 * 1024


@dataclass(frozen=True, slots=True)
class UpdateResult:
    target_path: str | None
    installed: InstalledBundle | None
    director_version: int | None = None

    @property
    def changed(self) -> bool:
        return self.installed is not None and self.installed.changed


@contextlib.contextmanager
def _tuf_errors() -> Iterator[None]:
    from tuf.api.exceptions import DownloadError, RepositoryError

    try:
        yield
    except (RepositoryError, DownloadError) as e:
        raise translate(e) from e


@contextlib.contextmanager
def _logged_refusal(what: str) -> Iterator[None]:
    try:
        yield
    except TrustError as e:
        log.warning("update refused (check: %s) for %s: %s", e.check, what, e)
        raise


class TrustedUpdater:
    """One device's updater. Not thread-safe: the daemon drives it from one worker."""

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
        self.store = BundleStore(Path(state_dir))
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
        with _tuf_errors():
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
        with _tuf_errors():
            info = updater.get_targetinfo(path)
        if info is None:
            raise UnknownTargetError(f"{path} is not a target in the signed targets metadata")
        if "sha256" not in info.hashes:
            raise UnknownTargetError(f"{path}: signed targets carry no sha256 for it")
        return info

    # -- online: the director's desired state --------------------------------------

    def apply_desired(self, envelope: SignedEnvelope | bytes) -> UpdateResult:
        """Act on a director document received on `dev/{id}/desired`.

        Raises a TrustError naming the failed check (also logged); nothing changes then.
        """
        with _logged_refusal("director document"):
            return self._apply_desired(envelope)

    def _apply_desired(self, envelope: SignedEnvelope | bytes) -> UpdateResult:
        if self.device_id is None:
            raise TrustError("apply_desired needs the device id")
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
            return UpdateResult(None, None, state.version)
        installed = self._install_target(updater, state.target)
        return UpdateResult(state.target.path, installed, state.version)

    def _install_target(self, updater: Updater, ref: TargetRef) -> InstalledBundle | None:
        info = self.targetinfo(updater, ref.path)
        check_target_matches(ref, info.length, info.hashes)
        sha256 = info.hashes["sha256"]
        if self.store.is_current(sha256):
            log.info("%s is already the current bundle", ref.path)
            return None
        with _tuf_errors():  # e.g. the repository has no such file (404)
            part = self._download(info)
        try:
            with open(part, "rb", buffering=0) as f:
                return self.store.install(
                    f,
                    origin=info.path,
                    expected_length=info.length,
                    expected_sha256=sha256,
                    board=self.board,
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def _target_url(self, info: TargetFile) -> str:
        path = info.path
        if self.trusted_root().get("consistent_snapshot", False):
            dirname, sep, basename = path.rpartition("/")
            path = f"{dirname}{sep}{next(iter(info.hashes.values()))}.{basename}"
        return TARGETS_URL + path

    def _download(self, info: TargetFile) -> Path:
        """Download a target into downloads/SHA.part, resuming a previous partial file.

        Stops one byte past the signed length. A transport failure keeps the partial
        file for the next attempt; any refusal deletes it.
        """
        sha256 = info.hashes["sha256"]
        part = self.paths.downloads_dir / f"{sha256}.part"
        for other in self.paths.downloads_dir.glob("*.part"):  # targets no longer wanted
            if other != part:
                other.unlink(missing_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > info.length:
            part.unlink()
            have = 0
        if have:
            log.info("resuming %s at byte %d of %d", info.path, have, info.length)
        if have == info.length:  # complete before an interruption; HTTPS would answer 416
            return part
        url = self._target_url(info)
        try:
            with open(part, "ab") as f:
                for chunk in self.fetcher.fetch_range(url, have, info.length):
                    have += len(chunk)
                    if have > info.length:
                        raise LengthExceededError(
                            f"{info.path}: download exceeds the {info.length} bytes signed "
                            "targets declare (stopped)"
                        )
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except TransportError:
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        return part

    # -- offline (air-gapped) --------------------------------------------------------

    def install_file(self, bundle: Path, target_path: str | None = None) -> UpdateResult:
        """Install a bundle file that must be a signed target (named by its file name)."""
        with _logged_refusal(str(bundle)):
            return self._install_file(bundle, target_path)

    def _install_file(self, bundle: Path, target_path: str | None) -> UpdateResult:
        updater = self.refresh()
        path = target_path or Path(bundle).name
        info = self.targetinfo(updater, path)
        with open(bundle, "rb", buffering=0) as f:
            installed = self.store.install(
                f,
                origin=str(bundle),
                expected_length=info.length,
                expected_sha256=info.hashes["sha256"],
                board=self.board,
            )
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
    updater = TrustedUpdater(state_dir, LocalFetcher(metadata_dir), board=board)
    return updater.install_file(bundle)

