"""The bundle store on the device: verified bundles unpacked side by side, one `current`.

    STATE/bundles/NAME-VERSION-SHA16/   an unpacked, verified bundle (read-only by intent)
    STATE/current  -> bundles/...        the active bundle (a symlink, flipped by rename)
    STATE/previous -> bundles/...        the one before, kept until the next install

An install unpacks into `bundles/.incoming-*` while verifying (one pass), fsyncs every
file and directory, renames it into place, then flips `current` with a new link renamed
over the old one. A power cut at any instant leaves `current` on the old bundle or the
new one; `recover()` (at start, and before each install) removes what an interrupted
install left.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.bundle import VerifiedBundle, verify_bundle
from agent.fsutil import fsync_dir, replace_symlink
from agent.manifest import ModelManifest
from agent.trust.errors import BoardMismatchError

log = logging.getLogger(__name__)

_INCOMING = ".incoming-"


@dataclass(frozen=True, slots=True)
class InstalledBundle:
    path: Path
    bundle: VerifiedBundle
    changed: bool


def bundle_dir_name(manifest: ModelManifest, sha256: str) -> str:
    return f"{manifest.name}-{manifest.version}-{sha256[:16]}"


def board_check(board: str | None) -> Callable[[ModelManifest], None]:
    def check(manifest: ModelManifest) -> None:
        if board is None or "*" in manifest.boards or board in manifest.boards:
            return
        raise BoardMismatchError(
            f"bundle {manifest.name}-{manifest.version} suits boards {manifest.boards}, "
            f"this board is {board!r}"
        )

    return check


class BundleStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.bundles = self.root / "bundles"
        self.current_link = self.root / "current"
        self.previous_link = self.root / "previous"

    def _target(self, link: Path) -> Path | None:
        try:
            return self.root / os.readlink(link)
        except FileNotFoundError:
            return None

    def current(self) -> Path | None:
        """The directory of the active bundle, or None before the first install."""
        return self._target(self.current_link)

    def current_sha_prefix(self) -> str | None:
        cur = self.current()
        return cur.name.rsplit("-", 1)[-1] if cur is not None else None

    def is_current(self, sha256: str) -> bool:
        return self.current_sha_prefix() == sha256[:16]

    def recover(self) -> None:
        """Finish or undo an interrupted install (call at start): remove `.incoming-*`
        directories, half-made links, and bundles that neither `current` nor `previous`
        names (one renamed into place just before a crash)."""
        for link in (self.current_link, self.previous_link):
            for stale in self.root.glob(f".{link.name}.new*"):  # fsutil.replace_symlink's temp
                stale.unlink(missing_ok=True)
        if not self.bundles.is_dir():
            return
        keep = {p.name for p in (self.current(), self._target(self.previous_link)) if p}
        for entry in self.bundles.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)

    def install(
        self,
        source: BinaryIO,
        *,
        origin: str,
        expected_length: int,
        expected_sha256: str,
        board: str | None,
    ) -> InstalledBundle:
        """Verify `source` against the signed length/sha256 while unpacking; then switch.

        On any refusal the incoming directory is deleted and `current` is untouched.
        """
        self.bundles.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.recover()
        incoming = Path(tempfile.mkdtemp(prefix=_INCOMING, dir=self.bundles))
        try:
            verified = verify_bundle(
                source,
                origin=origin,
                expected_length=expected_length,
                expected_sha256=expected_sha256,
                dest=incoming,
                on_manifest=board_check(board),
            )
            _fsync_tree(incoming)
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        incoming.chmod(0o755)
        name = bundle_dir_name(verified.manifest, verified.sha256)
        final = self.bundles / name
        if self.is_current(verified.sha256):
            shutil.rmtree(incoming, ignore_errors=True)
            return InstalledBundle(path=final, bundle=verified, changed=False)
        if final.exists():  # `previous` (an operator going back) or a crash's leftover
            aside = self.bundles / f"{_INCOMING}replaced-{name}"
            shutil.rmtree(aside, ignore_errors=True)
            os.rename(final, aside)  # atomic: never a half-deleted bundle under its name
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(incoming, final)
        fsync_dir(self.bundles)
        # `previous` first: a crash between the two flips leaves both on the old bundle,
        # and recover() removes the new one (undo); after the second flip it is done.
        previous = self.current()
        if previous is not None and previous.name != name:
            replace_symlink(self.previous_link, f"bundles/{previous.name}")
        replace_symlink(self.current_link, f"bundles/{name}")
        self.recover()
        log.info("installed %s (sha256 %s) as current", name, verified.sha256)
        return InstalledBundle(path=final, bundle=verified, changed=True)


def _fsync_tree(top: Path) -> None:
    """fsync every directory under `top` (the files were fsynced as they were written)."""
    for dirpath, _dirs, _files in os.walk(top):
        fsync_dir(Path(dirpath))
