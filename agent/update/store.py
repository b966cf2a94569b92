"""The bundle store on the device: verified bundles unpacked side by side, one `current`.

    STATE/bundles/NAME-VERSION-SHA16/   an unpacked, verified bundle (read-only by intent)
    STATE/current  -> bundles/...        the active bundle (a symlink, flipped by rename)
    STATE/previous -> bundles/...        the one before, kept until the next install

`unpack` writes into `bundles/.incoming-*` while verifying (one pass), fsyncs every
file and directory and renames it into place; `switch` flips `current` with a new link
renamed over the old one; `rollback` flips it back; `commit` drops all but current and
previous. Which of these steps is due is the update journal's business
(agent/update/journal.py): the store never guesses it from the directory listing, and
`recover(keep=...)` removes only what neither the links nor the journal name.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.fsutil import fsync_dir, replace_symlink
from agent.manifest import ModelManifest
from agent.trust.errors import BoardMismatchError
from agent.update.bundle import VerifiedBundle, verify_bundle

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

    def previous(self) -> Path | None:
        return self._target(self.previous_link)

    def recover(self, keep: Iterable[str] = ()) -> None:
        """Finish or undo an interrupted install (call at start): remove `.incoming-*`
        directories, half-made links, and bundles that neither `current`, `previous` nor
        `keep` (the update journal's bundle in progress) names."""
        for link in (self.current_link, self.previous_link):
            for stale in self.root.glob(f".{link.name}.new*"):  # fsutil.replace_symlink's temp
                stale.unlink(missing_ok=True)
        if not self.bundles.is_dir():
            return
        wanted = {p.name for p in (self.current(), self.previous()) if p} | set(keep)
        for entry in self.bundles.iterdir():
            if entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)

    def unpack(
        self,
        source: BinaryIO,
        *,
        origin: str,
        expected_length: int,
        expected_sha256: str,
        board: str | None,
        keep: Iterable[str] = (),
    ) -> InstalledBundle:
        """Verify `source` against the signed length/sha256 while unpacking it into
        bundles/NAME-VERSION-SHA16 (fsynced); `current` is not touched. `changed` is False
        when that bundle is already current."""
        self.bundles.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.recover(keep)
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
        return InstalledBundle(path=final, bundle=verified, changed=True)

    def switch(self, name: str) -> None:
        """`current` -> bundles/NAME, the old current becoming `previous`. Idempotent: a
        restart after a crash mid-switch calls it again."""
        if not (self.bundles / name).is_dir():
            raise FileNotFoundError(f"bundle {name} is not in {self.bundles}")
        current = self.current()
        if current is not None and current.name == name:
            return
        # `previous` first: a crash between the two flips leaves both on the old bundle.
        if current is not None:
            replace_symlink(self.previous_link, f"bundles/{current.name}")
        replace_symlink(self.current_link, f"bundles/{name}")
        log.info("current -> %s", name)

    def rollback(self, failed: str | None, back_to: str | None) -> None:
        """`current` back to `back_to` (the bundle before the switch; None: no bundle at
        all, as before the first install); the failed bundle is deleted."""
        if back_to is not None and (self.bundles / back_to).is_dir():
            replace_symlink(self.current_link, f"bundles/{back_to}")
        elif self.current() is not None and (failed is None or self.current().name == failed):  # type: ignore[union-attr]
            self.current_link.unlink(missing_ok=True)
            fsync_dir(self.root)
        prev = self.previous()
        if prev is not None and (prev.name == back_to or prev.name == failed):
            self.previous_link.unlink(missing_ok=True)
            fsync_dir(self.root)
        if failed is not None and failed != back_to:
            shutil.rmtree(self.bundles / failed, ignore_errors=True)
        log.warning("rolled back from %s to %s", failed, back_to)

    def commit(self) -> None:
        """Keep the active and the previous bundle only."""
        self.recover()

    def install(
        self,
        source: BinaryIO,
        *,
        origin: str,
        expected_length: int,
        expected_sha256: str,
        board: str | None,
    ) -> InstalledBundle:
        """Unpack and switch at once, without a trial: the air-gapped `install-bundle` and
        the trust tests. The daemon goes through agent.update.worker (trial + commit)."""
        installed = self.unpack(source, origin=origin, expected_length=expected_length,
                                expected_sha256=expected_sha256, board=board)
        if installed.changed:
            self.switch(installed.path.name)
            self.recover()
            log.info("installed %s (sha256 %s) as current", installed.path.name, installed.bundle.sha256)
        return installed


def _fsync_tree(top: Path) -> None:
    """fsync every directory under `top` (the files were fsynced as they were written)."""
    for dirpath, _dirs, _files in os.walk(top):
        fsync_dir(Path(dirpath))
