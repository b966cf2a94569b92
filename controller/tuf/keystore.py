"""Key files of the image repository.

    REPO/keys/offline/ROLE-KEYID12.pem   root and targets keys: move them off the
                                         controller (USB stick, HSM-backed vault)
    REPO/keys/online/ROLE-KEYID12.pem    snapshot, timestamp, director: the controller
    REPO/keys/revoked/                   revoked keys, kept for the record

Private keys are PEM PKCS#8, encrypted (BestAvailableEncryption) when a passphrase is
given; files are created 0600. Key ids are python-tuf's (sha256 of the canonical key).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from agent.errors import FleetgenError, UsageError

OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp", "director")
ROLES = OFFLINE_ROLES + ONLINE_ROLES

PassphraseSource = Callable[[Path], bytes | None]


class KeyFileError(FleetgenError):
    """A key file is missing, unreadable or needs a passphrase we do not have."""


@dataclass(frozen=True, slots=True)
class KeyDirs:
    offline: Path
    online: Path
    revoked: Path

    @classmethod
    def for_repo(cls, repo: Path, offline: Path | None = None) -> KeyDirs:
        keys = Path(repo) / "keys"
        return cls(offline=offline or keys / "offline", online=keys / "online", revoked=keys / "revoked")

    def dir_for(self, role: str) -> Path:
        return self.offline if role in OFFLINE_ROLES else self.online


def generate() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def key_file(dirs: KeyDirs, role: str, keyid: str) -> Path:
    return dirs.dir_for(role) / f"{role}-{keyid[:12]}.pem"


def write_key(dirs: KeyDirs, role: str, signer: CryptoSigner, passphrase: bytes | None) -> Path:
    """Write `signer`'s private key for `role`; encrypted only for offline roles."""
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if passphrase and role in OFFLINE_ROLES:
        encryption = serialization.BestAvailableEncryption(passphrase)
    private = signer._private_key
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    path = key_file(dirs, role, signer.public_key.keyid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return path


def is_encrypted(pem: bytes) -> bool:
    return b"ENCRYPTED" in pem.split(b"\n", 1)[0]


def load_signer(path: Path, public: SSlibKey, passphrase: PassphraseSource) -> CryptoSigner:
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found") from None
    secret = passphrase(path) if is_encrypted(pem) else None
    if is_encrypted(pem) and not secret:
        raise KeyFileError(f"{path} is encrypted: give --passphrase-file (or FLEETGEN_PASSPHRASE)")
    try:
        private = serialization.load_pem_private_key(pem, secret)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: cannot load key (wrong passphrase?) ({e})") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return CryptoSigner(private, public)


def find_signers(
    dirs: KeyDirs,
    role: str,
    keys: Iterable[SSlibKey],
    passphrase: PassphraseSource,
    search: Iterable[Path] = (),
) -> list[CryptoSigner]:
    """Signers for those of `keys` whose private key file we have (role dir, then `search`)."""
    signers = []
    for key in keys:
        for base in (dirs.dir_for(role), *search):
            path = base / f"{role}-{key.keyid[:12]}.pem"
            if path.is_file():
                signers.append(load_signer(path, key, passphrase))
                break
    return signers


def read_passphrase_file(path: str | None) -> bytes | None:
    """Passphrase from a file (first line), else $FLEETGEN_PASSPHRASE, else None."""
    if path:
        try:
            return Path(path).read_bytes().splitlines()[0] if Path(path).stat().st_size else b""
        except OSError as e:
            raise UsageError(f"--passphrase-file {path}: {e.strerror}") from None
    env = os.environ.get("FLEETGEN_PASSPHRASE")
    return env.encode() if env else None


def passphrase_source(passphrase: bytes | None) -> PassphraseSource:
    """A source that returns `passphrase`, or prompts on a terminal when it is None."""

    def source(path: Path) -> bytes | None:
        if passphrase is not None:
            return passphrase
        import getpass
        import sys

        if not sys.stdin.isatty():
            return None
        return getpass.getpass(f"passphrase for {path.name}: ").encode()

    return source
