"""A small world for trust tests: a controller-side image repository, bundles, a
network attacker's mirror of the repository, and devices that fetch from that mirror."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile

from agent.protocol.messages import SignedEnvelope
from agent.trust.fetch import BoundedFetcher, DownloadPolicy, LocalFetcher
from agent.trust.layout import TrustPaths, provision
from agent.update.bundle import build_bundle
from agent.update.install import Installer
from controller.director import Director
from controller.tuf.repository import RepoConfig, Repository
from tests.trust.models import make_model_dir

DEVICE = "dev-1"


@dataclass
class World:
    tmp: Path
    repo: Repository
    mirror: Path  # what the network serves; the attacker may change it
    bundles: dict[str, Path] = field(default_factory=dict)

    @property
    def director(self) -> Director:
        return Director(self.repo)

    def build(self, version: str, *, boards: tuple[str, ...] = ("*",), size: int = 4096) -> Path:
        model = make_model_dir(self.tmp / "models", version=version, boards=boards, size=size)
        out = self.tmp / "built" / f"tiny-{version}.fgb"
        out.parent.mkdir(exist_ok=True)
        build_bundle(model, out)
        self.bundles[version] = out
        return out

    def publish(self, version: str, **kw: Any) -> Path:
        path = self.bundles.get(version) or self.build(version, **kw)
        self.repo.publish(path)
        self.sync()
        return path

    def sync(self) -> None:
        """The mirror serves exactly what the controller has now."""
        shutil.rmtree(self.mirror, ignore_errors=True)
        shutil.copytree(self.repo.metadata_dir, self.mirror / "metadata")
        shutil.copytree(self.repo.targets_dir, self.mirror / "targets")

    def snapshot_mirror(self, name: str) -> Path:
        """A frozen copy of the mirror as it is now (for replay attacks)."""
        dst = self.tmp / f"frozen-{name}"
        shutil.copytree(self.mirror, dst)
        return dst

    def restore_mirror(self, frozen: Path, *roles: str) -> None:
        """Serve the given metadata files from a frozen copy (everything when none given)."""
        if not roles:
            shutil.rmtree(self.mirror)
            shutil.copytree(frozen, self.mirror)
            return
        for name in roles:
            shutil.copyfile(frozen / "metadata" / name, self.mirror / "metadata" / name)

    def target_file(self, version: str) -> Path:
        name = f"tiny-{version}.fgb"
        sha = self.repo.targets().targets[name].hashes["sha256"]
        return self.mirror / "targets" / f"{sha}.{name}"

    def device(
        self,
        state: str = "device",
        *,
        board: str = "generic",
        device_id: str = DEVICE,
        fetcher: BoundedFetcher | None = None,
        policy: DownloadPolicy | None = None,
    ) -> Installer:
        state_dir = self.tmp / state
        paths = TrustPaths(state_dir)
        if not paths.provisioned:
            provision(paths, (self.repo.metadata_dir / "1.root.json").read_bytes())
        fetcher = fetcher or LocalFetcher(self.mirror / "metadata", self.mirror / "targets", policy)
        return Installer(state_dir, fetcher, board=board, device_id=device_id)

    def desired(self, version: str | None, **kw: Any) -> SignedEnvelope:
        return self.director.desired(kw.pop("device_id", DEVICE), f"tiny-{version}.fgb" if version else None, **kw)

    # -- an attacker holding some keys writes metadata into the mirror ----------------

    def forge(self, role: str, md: Metadata[Any], signers: list[CryptoSigner]) -> bytes:
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data = md.to_bytes()
        meta = self.mirror / "metadata"
        if role == "timestamp":
            (meta / "timestamp.json").write_bytes(data)
        else:
            (meta / f"{md.signed.version}.{role}.json").write_bytes(data)
        return data

    def forge_timestamp(self, snapshot_bytes: bytes) -> None:
        """With the timestamp key: a newer timestamp naming the given snapshot."""
        ts = self.repo.load("timestamp")
        ts.signed.version += 1
        version = Metadata.from_bytes(snapshot_bytes).signed.version
        ts.signed.snapshot_meta = MetaFile.from_data(version, snapshot_bytes, ["sha256"])
        self.forge("timestamp", ts, self.repo.signers("timestamp"))

    def forge_snapshot(self, targets_meta: MetaFile) -> None:
        """With the snapshot and timestamp keys: a newer snapshot naming `targets_meta`."""
        snap = self.repo.load("snapshot")
        snap.signed.version += 1
        snap.signed.meta["targets.json"] = targets_meta
        self.forge_timestamp(self.forge("snapshot", snap, self.repo.signers("snapshot")))

    def forge_targets(self, md: Metadata[Any], signers: list[CryptoSigner]) -> None:
        """Targets signed by `signers`, made reachable with the (online) snapshot/timestamp keys."""
        data = self.forge("targets", md, signers)
        self.forge_snapshot(MetaFile.from_data(md.signed.version, data, ["sha256"]))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    repo = Repository.create(tmp_path / "repo", config=RepoConfig())
    w = World(tmp=tmp_path, repo=repo, mirror=tmp_path / "mirror")
    w.sync()
    yield w


@pytest.fixture
def world2(tmp_path: Path) -> Iterator[World]:
    """Root and targets with a threshold of 2 keys."""
    repo = Repository.create(tmp_path / "repo", threshold=2)
    w = World(tmp=tmp_path, repo=repo, mirror=tmp_path / "mirror")
    w.sync()
    yield w
