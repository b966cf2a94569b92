"""Where trusted state lives under the agent's state directory, and provisioning.

    STATE/trust/root.pinned.json   root metadata pinned at provisioning (the trust anchor)
    STATE/trust/metadata/          python-tuf's trusted metadata cache (root_history/, ...)
    STATE/trust/director.json      highest director document version accepted
    STATE/downloads/               partial bundle downloads (resumable, discarded on refusal)
    STATE/bundles/, STATE/current  the bundle store (agent.update.store)

Bundles are only ever unpacked into fresh directories under STATE/bundles/ by a writer
that refuses any path leaving that directory, so bundle contents can never overwrite
trusted metadata.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import msgspec

from agent.fsutil import atomic_write
from agent.trust.errors import MetadataError, NotProvisionedError, SignatureError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrustPaths:
    state_dir: Path

    @property
    def trust_dir(self) -> Path:
        return self.state_dir / "trust"

    @property
    def pinned_root(self) -> Path:
        return self.trust_dir / "root.pinned.json"

    @property
    def metadata_dir(self) -> Path:
        return self.trust_dir / "metadata"

    @property
    def director_state(self) -> Path:
        return self.trust_dir / "director.json"

    @property
    def downloads_dir(self) -> Path:
        return self.state_dir / "downloads"

    def ensure(self) -> None:
        for d in (self.state_dir, self.trust_dir, self.metadata_dir, self.downloads_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def provisioned(self) -> bool:
        return self.pinned_root.is_file()

    def root_bytes(self) -> bytes:
        try:
            return self.pinned_root.read_bytes()
        except FileNotFoundError:
            raise NotProvisionedError(
                f"{self.state_dir}: not provisioned (no pinned root metadata at {self.pinned_root})"
            ) from None


def check_root(data: bytes, origin: str) -> int:
    """Parse root metadata and check it is signed by its own threshold; return its version."""
    from tuf.api.exceptions import UnsignedMetadataError
    from tuf.api.metadata import Metadata, Root
    from tuf.api.serialization import DeserializationError

    try:
        md = Metadata[Root].from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ValueError("not root metadata")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except UnsignedMetadataError as e:
        raise SignatureError(f"{origin}: {e}") from None
    except (ValueError, KeyError, TypeError, DeserializationError) as e:
        raise SignatureError(f"{origin}: not valid root metadata ({e})") from None
    return md.signed.version


def provision(paths: TrustPaths, root: bytes, origin: str = "root metadata", *, warn: bool = False) -> int:
    """Pin `root` as this device's trust anchor (provisioning or first offline install)."""
    version = check_root(root, origin)
    paths.ensure()
    atomic_write(paths.pinned_root, root)
    level = logging.WARNING if warn else logging.INFO
    log.log(level, "pinned root metadata v%d from %s as the trust anchor of %s", version, origin, paths.state_dir)
    return version


class DirectorRecord(msgspec.Struct, frozen=True):
    version: int = 0


def load_director_version(paths: TrustPaths) -> int:
    """The highest director version accepted so far (0 before the first).

    An unreadable record is refused rather than read as 0, which would accept replays.
    """
    try:
        return msgspec.json.decode(paths.director_state.read_bytes(), type=DirectorRecord).version
    except FileNotFoundError:
        return 0
    except (msgspec.DecodeError, OSError) as e:
        raise MetadataError(f"{paths.director_state}: unreadable director record ({e})") from None


def save_director_version(paths: TrustPaths, version: int) -> None:
    """Persist the highest director version (atomically; never lowers it)."""
    if version > load_director_version(paths):
        atomic_write(paths.director_state, msgspec.json.encode(DirectorRecord(version=version)))
