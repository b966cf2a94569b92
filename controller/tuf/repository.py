"""The image repository on disk, built and signed with python-tuf's Metadata API.

    REPO/repo.json                   expiry settings
    REPO/metadata/N.root.json        every root version (clients walk the chain)
    REPO/metadata/N.targets.json     targets, snapshot: consistent snapshots, so a device
    REPO/metadata/N.snapshot.json    mid-update never mixes two releases
    REPO/metadata/timestamp.json     short-lived (default 1 day), re-signed on a schedule
    REPO/metadata/{root,targets,snapshot}.json   copies of the newest, for people
    REPO/targets/SHA256.NAME.fgb     published bundles (consistent-snapshot names)
    REPO/keys/...                    see controller.tuf.keystore

Root also carries the director's public key(s) (field `x-fleetgen-director`), so the
director key is pinned with root and rotated through root like the others.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from agent.errors import FleetgenError, UsageError
from agent.fsutil import atomic_write, fsync_dir
from agent.manifest import ManifestError, check_relative_path
from agent.protocol.messages import TargetRef
from agent.trust.director import ROOT_FIELD
from agent.trust.errors import TrustError
from agent.update.bundle import BUNDLE_SUFFIX, verify_bundle_file
from controller.tuf import keystore
from controller.tuf.keystore import KeyDirs, KeyFileError, PassphraseSource

log = logging.getLogger(__name__)

DAY = 86400
TOP_ROLES = ("root", "targets", "snapshot", "timestamp")


class RepositoryError(FleetgenError):
    """The repository is missing, inconsistent, or refuses the operation (message says why)."""


class RepoConfig(msgspec.Struct, kw_only=True, frozen=True):
    schema: int = 1
    root_expiry_s: int = 365 * DAY
    targets_expiry_s: int = 90 * DAY
    snapshot_expiry_s: int = 7 * DAY
    timestamp_expiry_s: int = 1 * DAY

    def expiry_s(self, role: str) -> int:
        value: int = getattr(self, f"{role}_expiry_s")
        return value


F = TypeVar("F", bound=Callable[..., Any])


def _exclusive(method: F) -> F:
    """Serialise changes to one repository across processes (CLI publish vs. the
    controller's re-signing): an flock on REPO/.lock, re-entrant within a process."""

    @functools.wraps(method)
    def wrapper(self: Repository, *args: Any, **kwargs: Any) -> Any:
        if self._lock_depth:
            self._lock_depth += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth = 0
        finally:
            os.close(fd)  # releases the lock

    return wrapper  # type: ignore[return-value]


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Published:
    path: str
    length: int
    sha256: str
    name: str
    version: str
    targets_version: int


class Repository:
    def __init__(
        self,
        path: Path,
        *,
        offline_keys: Path | None = None,
        passphrase: PassphraseSource | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / "metadata"
        self.targets_dir = self.path / "targets"
        self.keys = KeyDirs.for_repo(self.path, offline_keys)
        self._passphrase = passphrase or keystore.passphrase_source(None)
        self._clock = clock
        self._lock_depth = 0
        cfg = self.path / "repo.json"
        if not (self.metadata_dir / "root.json").is_file() or not cfg.is_file():
            raise RepositoryError(f"{self.path}: not a fleetgen repository (run `fleetgen keys init`)")
        self.config = msgspec.json.decode(cfg.read_bytes(), type=RepoConfig)

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        threshold: int = 1,
        keys: int | None = None,
        passphrase: bytes | None = None,
        config: RepoConfig | None = None,
        offline_keys: Path | None = None,
    ) -> Repository:
        """A new repository: keys for every role, root v1, empty targets, snapshot, timestamp."""
        path = Path(path)
        count = keys or threshold
        if not 1 <= threshold <= count <= 16:
            raise UsageError(f"threshold {threshold} of {count} keys: need 1 <= threshold <= keys <= 16")
        if (path / "metadata" / "1.root.json").exists():
            raise RepositoryError(f"{path}: already holds a repository")
        config = config or RepoConfig()
        dirs = KeyDirs.for_repo(path, offline_keys)
        (path / "metadata").mkdir(parents=True, exist_ok=True)
        (path / "targets").mkdir(exist_ok=True)
        atomic_write(path / "repo.json", msgspec.json.format(msgspec.json.encode(config)), 0o644)
        root = Root(expires=_now() + timedelta(seconds=config.root_expiry_s), consistent_snapshot=True)
        signers: dict[str, list[CryptoSigner]] = {}
        for role in TOP_ROLES:
            n = count if role in keystore.OFFLINE_ROLES else 1
            signers[role] = [keystore.generate() for _ in range(n)]
            for signer in signers[role]:
                root.add_key(signer.public_key, role)
                keystore.write_key(dirs, role, signer, passphrase)
            root.roles[role].threshold = threshold if role in keystore.OFFLINE_ROLES else 1
        director = keystore.generate()
        keystore.write_key(dirs, "director", director, passphrase)
        root.unrecognized_fields[ROOT_FIELD] = _director_field([director.public_key])
        _write(path / "metadata", "root", _signed(root, signers["root"]))
        repo = cls(path, offline_keys=offline_keys, passphrase=keystore.passphrase_source(passphrase))
        targets = Targets(expires=repo._expires("targets"))
        repo._write_role("targets", targets, signers["targets"])
        repo._update_snapshot(signers["snapshot"], signers["timestamp"])
        log.info("created repository %s (threshold %d of %d offline keys)", path, threshold, count)
        return repo

    # -- reading -----------------------------------------------------------------------

    def load(self, role: str) -> Metadata[Any]:
        name = "timestamp.json" if role == "timestamp" else f"{role}.json"
        try:
            return Metadata.from_bytes((self.metadata_dir / name).read_bytes())
        except FileNotFoundError:
            raise RepositoryError(f"{self.metadata_dir}: no {name}") from None

    def root(self) -> Root:
        signed: Root = self.load("root").signed
        return signed

    def targets(self) -> Targets:
        signed: Targets = self.load("targets").signed
        return signed

    def role_keys(self, role: str, root: Root | None = None) -> list[SSlibKey]:
        root = root or self.root()
        if role == "director":
            field = root.unrecognized_fields.get(ROOT_FIELD, {})
            return [SSlibKey.from_dict(k, dict(v)) for k, v in field.get("keys", {}).items()]
        return [root.keys[k] for k in root.roles[role].keyids]  # type: ignore[misc]

    def signers(self, role: str, *, root: Root | None = None, search: Iterable[Path] = ()) -> list[CryptoSigner]:
        """Signers for the keys of `role` whose files we have; at least the threshold."""
        root = root or self.root()
        found = keystore.find_signers(self.keys, role, self.role_keys(role, root), self._passphrase, search)
        needed = 1 if role == "director" else root.roles[role].threshold
        if len(found) < needed:
            where = self.keys.dir_for(role)
            raise KeyFileError(f"{role}: needs {needed} key(s), found {len(found)} key file(s) in {where}")
        return found

    def target_ref(self, path: str) -> TargetRef:
        info = self.targets().targets.get(path)
        if info is None:
            raise RepositoryError(f"{path} is not a published target (see `fleetgen bundle publish`)")
        return TargetRef(path=info.path, length=info.length, hashes=dict(info.hashes))

    # -- writing -----------------------------------------------------------------------

    def _expires(self, role: str) -> datetime:
        return self._clock() + timedelta(seconds=self.config.expiry_s(role))

    def _write_role(self, role: str, signed: Any, signers: Iterable[CryptoSigner]) -> bytes:
        return _write(self.metadata_dir, role, _signed(signed, signers))

    def _update_snapshot(
        self,
        snapshot_signers: list[CryptoSigner] | None = None,
        timestamp_signers: list[CryptoSigner] | None = None,
    ) -> None:
        """New snapshot naming the current targets, and a new timestamp naming it."""
        targets_bytes = (self.metadata_dir / "targets.json").read_bytes()
        targets_version = Metadata.from_bytes(targets_bytes).signed.version
        try:
            snapshot: Snapshot = self.load("snapshot").signed
            snapshot.version += 1
        except RepositoryError:
            snapshot = Snapshot()
        snapshot.expires = self._expires("snapshot")
        snapshot.meta["targets.json"] = MetaFile.from_data(targets_version, targets_bytes, ["sha256"])
        data = self._write_role("snapshot", snapshot, snapshot_signers or self.signers("snapshot"))
        self._update_timestamp(data, timestamp_signers)

    def _update_timestamp(
        self, snapshot_bytes: bytes | None = None, signers: list[CryptoSigner] | None = None
    ) -> None:
        if snapshot_bytes is None:
            snapshot_bytes = (self.metadata_dir / "snapshot.json").read_bytes()
        version = Metadata.from_bytes(snapshot_bytes).signed.version
        try:
            timestamp: Timestamp = self.load("timestamp").signed
            timestamp.version += 1
        except RepositoryError:
            timestamp = Timestamp()
        timestamp.expires = self._expires("timestamp")
        timestamp.snapshot_meta = MetaFile.from_data(version, snapshot_bytes, ["sha256"])
        self._write_role("timestamp", timestamp, signers or self.signers("timestamp"))

    @_exclusive
    def sign_targets(self, targets: Targets, signers: list[CryptoSigner] | None = None) -> None:
        """Bump, sign and write `targets`, then new snapshot and timestamp."""
        targets.version += 1
        targets.expires = self._expires("targets")
        self._write_role("targets", targets, signers or self.signers("targets"))
        self._update_snapshot()

    # -- publishing ----------------------------------------------------------------------

    @_exclusive
    def publish(self, bundle: Path, signers: list[CryptoSigner] | None = None) -> Published:
        """Add a bundle as a target (custom: name, version, boards) and re-sign."""
        bundle = Path(bundle)
        name = bundle.name
        if not name.endswith(BUNDLE_SUFFIX) or "/" in name:
            raise UsageError(f"{bundle}: a bundle file name ends in {BUNDLE_SUFFIX}")
        # Verify the copy we keep, not the source (which could change under us).
        tmp = self.targets_dir / f".{name}.tmp{os.getpid()}"
        try:
            check_relative_path(name)
            _copy(bundle, tmp)
            verified = verify_bundle_file(tmp)
            targets = self.targets()
            old = targets.targets.get(name)
            if old is not None and old.hashes.get("sha256") != verified.sha256:
                raise RepositoryError(
                    f"{name} is already published with other content; build it with a new version"
                )
            os.replace(tmp, self.targets_dir / f"{verified.sha256}.{name}")
            fsync_dir(self.targets_dir)
        except (ManifestError, TrustError) as e:
            raise RepositoryError(f"{bundle}: not a valid bundle ({e})") from None
        except OSError as e:
            raise RepositoryError(f"{bundle}: {e.strerror}") from None
        finally:
            tmp.unlink(missing_ok=True)
        manifest = verified.manifest
        targets.targets[name] = TargetFile(
            length=verified.length,
            hashes={"sha256": verified.sha256},
            path=name,
            unrecognized_fields={
                "custom": {"name": manifest.name, "version": manifest.version, "boards": list(manifest.boards)}
            },
        )
        self.sign_targets(targets, signers)
        version = self.targets().version
        log.info("published %s (sha256 %s) in targets v%d", name, verified.sha256, version)
        return Published(name, verified.length, verified.sha256, manifest.name, manifest.version, version)

    @_exclusive
    def resign_online(self, *, force: bool = False) -> list[str]:
        """Re-sign snapshot and timestamp when half their lifetime is gone (or `force`).

        The controller calls this on a schedule (every few minutes is plenty); devices
        refuse a timestamp past its expiry, so a repository left alone freezes nobody.
        """
        now = self._clock()
        done = []
        snapshot = self.load("snapshot").signed
        if force or snapshot.expires - now <= timedelta(seconds=self.config.snapshot_expiry_s / 2):
            self._update_snapshot()
            return ["snapshot", "timestamp"]
        timestamp = self.load("timestamp").signed
        if force or timestamp.expires - now <= timedelta(seconds=self.config.timestamp_expiry_s / 2):
            self._update_timestamp()
            done.append("timestamp")
        return done

    # -- keys through root -----------------------------------------------------------------

    def _new_root(self, root: Root, old_signers: list[CryptoSigner], extra: Iterable[CryptoSigner] = ()) -> None:
        root.version += 1
        root.expires = self._expires("root")
        signers = {s.public_key.keyid: s for s in [*old_signers, *extra]}
        _write(self.metadata_dir, "root", _signed(root, signers.values()))

    @_exclusive
    def rotate(self, role: str, passphrase: bytes | None = None) -> list[str]:
        """Replace every key of `role` with as many new ones; root v+1 signed by old and new."""
        if role not in keystore.ROLES:
            raise UsageError(f"unknown role {role!r}; one of {', '.join(keystore.ROLES)}")
        root = self.root()
        old_root_signers = self.signers("root", root=root)
        old_keys = self.role_keys(role, root)
        new = [keystore.generate() for _ in old_keys]
        if passphrase is None and role in keystore.OFFLINE_ROLES:
            passphrase = self._new_key_passphrase(role, old_keys)
        if role == "director":
            root.unrecognized_fields[ROOT_FIELD] = _director_field([s.public_key for s in new])
        else:
            for key in old_keys:
                root.revoke_key(key.keyid, role)
            for signer in new:
                root.add_key(signer.public_key, role)
        for signer in new:
            keystore.write_key(self.keys, role, signer, passphrase)
        self._new_root(root, old_root_signers, new if role == "root" else ())
        for key in old_keys:
            self._retire_key_file(role, key.keyid)
        self._resign_after_key_change(role, new)
        ids = [s.public_key.keyid for s in new]
        log.info("rotated %s: %s -> %s", role, [k.keyid[:12] for k in old_keys], [i[:12] for i in ids])
        return ids

    @_exclusive
    def revoke(self, keyid: str) -> str:
        """Remove one key (any role) through root; the role must keep its threshold."""
        root = self.root()
        matches = [(r, k) for r in keystore.ROLES for k in self.role_keys(r, root) if k.keyid.startswith(keyid)]
        if len(keyid) < 8 or not matches:
            raise UsageError(f"no key {keyid!r} in root (give at least 8 hex digits of its id)")
        if len(matches) > 1:
            raise UsageError(f"key id {keyid!r} matches {len(matches)} keys: give more digits")
        role, key = matches[0]
        remaining = len(self.role_keys(role, root)) - 1
        threshold = 1 if role == "director" else root.roles[role].threshold
        if remaining < threshold:
            raise UsageError(
                f"revoking {key.keyid[:12]} leaves {role} with {remaining} key(s) for threshold "
                f"{threshold}: use `fleetgen keys rotate {role}` instead"
            )
        old_root_signers = self.signers("root", root=root)
        if role == "director":
            rest = [k for k in self.role_keys(role, root) if k.keyid != key.keyid]
            root.unrecognized_fields[ROOT_FIELD] = _director_field(rest)
        else:
            root.revoke_key(key.keyid, role)
        self._new_root(root, old_root_signers)
        self._retire_key_file(role, key.keyid)
        self._resign_after_key_change(role, None)
        log.info("revoked %s key %s", role, key.keyid[:12])
        return role

    def _new_key_passphrase(self, role: str, old_keys: list[SSlibKey]) -> bytes | None:
        """The passphrase for a new offline key when none was given: asked for (prompt) if
        the keys it replaces are encrypted, so a rotation never leaves a key in the clear."""
        encrypted = [
            path
            for key in old_keys
            if (path := keystore.key_file(self.keys, role, key.keyid)).is_file()
            and keystore.is_encrypted(path.read_bytes())
        ]
        if not encrypted:
            return None
        secret = self._passphrase(encrypted[0])
        if not secret:
            raise KeyFileError(
                f"{encrypted[0]} is encrypted, and so must the new {role} key be: give "
                "--passphrase-file (or FLEETGEN_PASSPHRASE)"
            )
        return secret

    def _retire_key_file(self, role: str, keyid: str) -> None:
        src = keystore.key_file(self.keys, role, keyid)
        if src.exists():
            self.keys.revoked.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(src, self.keys.revoked / src.name)

    def _resign_after_key_change(self, role: str, new: list[CryptoSigner] | None) -> None:
        if role == "targets":
            self.sign_targets(self.targets(), new or None)
        elif role in ("snapshot", "timestamp", "root"):
            self._update_snapshot()

    # -- export ----------------------------------------------------------------------------

    @_exclusive  # a publish in between would export targets and snapshot of two releases
    def export(self, to: Path, *, bundles: bool = False) -> list[Path]:
        """Copy what an air-gapped device needs: every root, the current targets, snapshot
        and timestamp (and, with `bundles`, the bundle files under their plain names)."""
        to = Path(to)
        to.mkdir(parents=True, exist_ok=True)
        snapshot_v = self.load("snapshot").signed.version
        targets_v = self.load("targets").signed.version
        names = [p.name for p in self.metadata_dir.glob("*.root.json")]
        names += ["root.json", "timestamp.json", f"{snapshot_v}.snapshot.json", f"{targets_v}.targets.json"]
        names += ["snapshot.json", "targets.json"]
        written = []
        for name in sorted(set(names)):
            shutil.copyfile(self.metadata_dir / name, to / name)
            written.append(to / name)
        if bundles:
            for info in self.targets().targets.values():
                src = self.targets_dir / f"{info.hashes['sha256']}.{info.path}"
                shutil.copyfile(src, to / info.path)
                written.append(to / info.path)
        fsync_dir(to)
        return written


def _director_field(keys: list[SSlibKey]) -> dict[str, Any]:
    return {"keys": {k.keyid: k.to_dict() for k in keys}, "threshold": 1}


def _signed(signed: Any, signers: Iterable[CryptoSigner]) -> Metadata[Any]:
    md = Metadata(signed)
    for signer in signers:
        md.sign(signer, append=True)
    return md


def _write(metadata_dir: Path, role: str, md: Metadata[Any]) -> bytes:
    data = md.to_bytes(JSONSerializer(compact=False))
    if role == "timestamp":
        atomic_write(metadata_dir / "timestamp.json", data, 0o644)
        return data
    atomic_write(metadata_dir / f"{md.signed.version}.{role}.json", data, 0o644)
    atomic_write(metadata_dir / f"{role}.json", data, 0o644)
    return data


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
