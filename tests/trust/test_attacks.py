"""Each attack of DESIGN §4 with a real tampered artifact: the device refuses, names the
check, keeps its active bundle, and leaves no partial download behind."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile, TargetFile

from agent.protocol.messages import DesiredState, TargetRef
from agent.trust.errors import TransportError, TrustError
from agent.trust.fetch import Deadline, DownloadPolicy, LocalFetcher
from agent.update.install import Installer, install_offline
from controller.tuf import keystore
from controller.tuf.repository import RepoConfig, Repository
from tests.trust.conftest import DEVICE, World


def _tree(top: Path | None) -> dict[str, bytes] | None:
    """Every file under `top` with its content (the active bundle, byte for byte)."""
    if top is None:
        return None
    return {str(f.relative_to(top)): f.read_bytes() for f in sorted(top.rglob("*")) if f.is_file()}


def refused(device: Installer, action: Callable[[], Any], check: str) -> TrustError | TransportError:
    """Run `action`, expect a TrustError naming `check` (a TransportError for "transport":
    a failure, retried, not a refusal); the active bundle must be the same
    directory with the same bytes, and nothing of the attempt may be left on disk."""
    before = device.store.current()
    content = _tree(before)
    expected = TransportError if check == "transport" else TrustError
    with pytest.raises(expected) as info:
        action()
    assert not isinstance(info.value, TrustError) or check != "transport"
    assert info.value.check == check, f"{info.value.check}: {info.value}"
    assert device.store.current() == before
    assert _tree(device.store.current()) == content
    downloads = device.paths.downloads_dir
    if check != "transport":  # only a transport failure keeps the partial file to resume
        assert not downloads.exists() or not list(downloads.iterdir())
    incoming = device.store.bundles
    assert not incoming.exists() or not [p for p in incoming.iterdir() if p.name.startswith(".incoming")]
    return info.value


@pytest.fixture
def installed(world: World) -> Installer:
    """A device running tiny 1.0.0, installed through the director."""
    world.publish("1.0.0")
    device = world.device()
    assert device.apply_desired(world.desired("1.0.0")).changed
    return device


# -- arbitrary installation -------------------------------------------------------------


def test_unpublished_bundle_is_refused_offline(world: World, tmp_path: Path) -> None:
    world.publish("1.0.0")
    device = world.device()
    device.install_file(world.bundles["1.0.0"])
    evil = world.build("6.6.6")  # a well-formed bundle nobody signed
    refused(device, lambda: device.install_file(evil), "unknown-target")


def test_bundle_signed_by_unknown_keys_is_refused(installed: Installer, world: World, tmp_path: Path) -> None:
    # The attacker runs a complete repository of their own and serves it to the device.
    evil = Repository.create(tmp_path / "evil-repo")
    evil.publish(world.build("6.6.6"))
    shutil.rmtree(world.mirror)
    shutil.copytree(evil.metadata_dir, world.mirror / "metadata")
    shutil.copytree(evil.targets_dir, world.mirror / "targets")
    refused(installed, lambda: installed.install_file(world.bundles["6.6.6"]), "signature")


def test_director_document_signed_by_unknown_key_is_refused(installed: Installer, world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.protocol.codec import encode
    from agent.trust.dsse import DESIRED_PAYLOAD_TYPE, sign_envelope

    world.publish("2.0.0")
    state = DesiredState(
        device_id=DEVICE, version=99, expires=time.time() + 3600, target=world.repo.target_ref("tiny-2.0.0.fgb")
    )
    keyid = next(iter(world.director._keys))  # a known key id, but the wrong private key
    envelope = sign_envelope(DESIRED_PAYLOAD_TYPE, encode(state), {keyid: Ed25519PrivateKey.generate()})
    refused(installed, lambda: installed.apply_desired(envelope), "signature")


# -- tampered content ----------------------------------------------------------------------


def test_one_byte_flipped_in_the_bundle(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    served = world.target_file("2.0.0")
    data = bytearray(served.read_bytes())
    data[len(data) // 3] ^= 0x01
    served.write_bytes(bytes(data))
    refused(installed, lambda: installed.apply_desired(world.desired("2.0.0")), "hash")


def test_one_byte_flipped_offline(world: World, tmp_path: Path) -> None:
    world.publish("1.0.0")
    device = world.device()
    flipped = tmp_path / "tiny-1.0.0.fgb"
    data = bytearray(world.bundles["1.0.0"].read_bytes())
    data[700] ^= 0x80  # inside the first member's data
    flipped.write_bytes(bytes(data))
    refused(device, lambda: device.install_file(flipped), "hash")


class _Endless(LocalFetcher):
    """Serves the real bytes of a target, then zeros for ever, ignoring any limit."""

    sent = 0

    def _chunks(self, url: str, offset: int, deadline: Deadline, limit: int | None) -> Iterator[bytes]:
        if "/targets/" not in url:
            yield from super()._chunks(url, offset, deadline, limit)
            return
        yield from super()._chunks(url, offset, deadline, None)
        while True:
            self.sent += 65536
            yield bytes(65536)


def test_endless_data_is_stopped_at_the_declared_length(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    fetcher = _Endless(world.mirror / "metadata", world.mirror / "targets")
    installed.fetcher = fetcher
    refused(installed, lambda: installed.apply_desired(world.desired("2.0.0")), "length")
    assert fetcher.sent <= 65536  # stopped in the first chunk past the signed length


def test_bundle_longer_than_metadata_says_offline(world: World, tmp_path: Path) -> None:
    world.publish("1.0.0")
    device = world.device()
    longer = tmp_path / "tiny-1.0.0.fgb"
    longer.write_bytes(world.bundles["1.0.0"].read_bytes() + bytes(1 << 20))
    refused(device, lambda: device.install_file(longer), "length")


# -- rollback, freeze, mix-and-match ---------------------------------------------------------


def test_rollback_of_timestamp(installed: Installer, world: World) -> None:
    old = world.snapshot_mirror("v1")
    world.publish("2.0.0")
    installed.apply_desired(world.desired("2.0.0"))
    world.restore_mirror(old)  # replay everything as it was
    refused(installed, lambda: installed.verifier.refresh(), "rollback")


def test_rollback_of_snapshot(installed: Installer, world: World) -> None:
    old_snapshot = (world.mirror / "metadata" / "snapshot.json").read_bytes()
    world.publish("2.0.0")
    installed.apply_desired(world.desired("2.0.0"))
    # The attacker holds the (online) timestamp key and points it at the old snapshot.
    world.forge_timestamp(old_snapshot)
    refused(installed, lambda: installed.verifier.refresh(), "rollback")


def test_rollback_of_targets(installed: Installer, world: World) -> None:
    old_targets = Metadata.from_bytes((world.mirror / "metadata" / "targets.json").read_bytes())
    world.publish("2.0.0")
    installed.apply_desired(world.desired("2.0.0"))
    # With both online keys: a newer snapshot that names the older targets version.
    world.forge_snapshot(MetaFile(version=old_targets.signed.version))
    refused(installed, lambda: installed.verifier.refresh(), "rollback")


def test_expired_timestamp_freeze(installed: Installer, world: World) -> None:
    # The mirror keeps serving a timestamp whose life is over (indefinite freeze).
    past = world.repo._clock() - timedelta(days=3)
    stale = Repository(world.repo.path, clock=lambda: past)
    stale.resign_online(force=True)
    world.sync()
    refused(installed, lambda: installed.verifier.refresh(), "expired")


def test_frozen_metadata_expires(tmp_path: Path) -> None:
    # The mirror stops updating (indefinite freeze); once the timestamp's short life is
    # over, the very same files are refused.
    repo = Repository.create(tmp_path / "repo", config=RepoConfig(timestamp_expiry_s=3))
    w = World(tmp=tmp_path, repo=repo, mirror=tmp_path / "mirror")
    w.publish("1.0.0")
    device = w.device()
    device.install_file(w.bundles["1.0.0"])
    time.sleep(3.1)
    refused(device, lambda: device.verifier.refresh(), "expired")


def test_mix_and_match(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    release_b = world.snapshot_mirror("b")
    world.publish("3.0.0")
    # Current timestamp and snapshot, but the targets file of the previous release
    # served under the current version's name.
    targets_v = world.repo.targets().version
    shutil.copyfile(
        release_b / "metadata" / "targets.json", world.mirror / "metadata" / f"{targets_v}.targets.json"
    )
    # Snapshot pins the targets file's hash: the swapped file is refused on it.
    refused(installed, lambda: installed.apply_desired(world.desired("3.0.0")), "hash")


def test_target_missing_from_the_repository(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    world.target_file("2.0.0").unlink()
    err = refused(installed, lambda: installed.apply_desired(world.desired("2.0.0")), "transport")
    assert "404" in str(err) or "not found" in str(err)


# -- the director --------------------------------------------------------------------------


def test_director_document_for_another_device(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    refused(installed, lambda: installed.apply_desired(world.desired("2.0.0", device_id="dev-2")), "wrong-device")


class _Counting(LocalFetcher):
    """Counts what the device asks the repository for."""

    asked = 0

    def _chunks(self, url: str, offset: int, deadline: Deadline, limit: int | None) -> Iterator[bytes]:
        self.asked += 1
        yield from super()._chunks(url, offset, deadline, limit)


@pytest.mark.parametrize(
    ("make", "check"),
    [
        (lambda w: w.desired("1.0.0", device_id="dev-2"), "wrong-device"),
        (lambda w: w.desired("1.0.0", now=time.time() - 7200, expires_in_s=3600), "expired"),
    ],
)
def test_misrouted_or_stale_documents_cause_no_repository_traffic(
    installed: Installer, world: World, make: Callable[[World], Any], check: str
) -> None:
    envelope = make(world)
    installed.fetcher = fetcher = _Counting(world.mirror / "metadata", world.mirror / "targets")
    refused(installed, lambda: installed.apply_desired(envelope), check)
    assert fetcher.asked == 0


def test_replayed_older_director_document(world: World) -> None:
    world.publish("1.0.0")
    world.publish("2.0.0")
    device = world.device()
    old = world.desired("1.0.0")
    new = world.desired("2.0.0")
    assert device.apply_desired(new).changed
    refused(device, lambda: device.apply_desired(old), "rollback")
    assert "tiny-2.0.0" in device.store.current().name  # type: ignore[union-attr]


def test_an_unreadable_director_record_is_not_read_as_zero(installed: Installer, world: World) -> None:
    # Read as "no version seen yet", a damaged record would let any old document replay.
    old = world.desired("1.0.0")
    world.publish("2.0.0")
    installed.apply_desired(world.desired("2.0.0"))
    installed.paths.director_state.write_bytes(b"\x00garbage")
    refused(installed, lambda: installed.apply_desired(old), "metadata")


def test_expired_director_document(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    envelope = world.desired("2.0.0", now=time.time() - 7200, expires_in_s=3600)
    refused(installed, lambda: installed.apply_desired(envelope), "expired")


def test_director_naming_a_target_not_in_signed_targets(installed: Installer, world: World) -> None:
    # A stolen director key names a bundle the attacker serves, with its true length and hash.
    evil = world.build("6.6.6")
    shutil.copy(evil, world.mirror / "targets" / evil.name)
    sha = hashlib.sha256(evil.read_bytes()).hexdigest()
    ref = TargetRef(path=evil.name, length=evil.stat().st_size, hashes={"sha256": sha})
    state = DesiredState(device_id=DEVICE, version=50, expires=time.time() + 3600, target=ref)
    refused(installed, lambda: installed.apply_desired(world.director.sign(state)), "unknown-target")


def test_director_naming_a_signed_path_with_other_hashes(installed: Installer, world: World) -> None:
    world.publish("2.0.0")
    real = world.repo.target_ref("tiny-2.0.0.fgb")
    ref = TargetRef(path=real.path, length=real.length, hashes={"sha256": "f" * 64})
    state = DesiredState(device_id=DEVICE, version=50, expires=time.time() + 3600, target=ref)
    refused(installed, lambda: installed.apply_desired(world.director.sign(state)), "unknown-target")


# -- keys ------------------------------------------------------------------------------------


def _evil_targets(world: World) -> Metadata[Any]:
    evil = world.build("6.6.6")
    shutil.copy(evil, world.mirror / "targets" / evil.name)
    md = world.repo.load("targets")
    md.signed.version += 1
    md.signed.targets[evil.name] = TargetFile.from_file(evil.name, str(evil), ["sha256"])
    return md


def test_targets_signed_by_fewer_keys_than_threshold(world2: World) -> None:
    world = world2
    world.publish("1.0.0")
    device = world.device()
    device.apply_desired(world.desired("1.0.0"))
    one_key = world.repo.signers("targets")[:1]  # one of two targets keys is stolen
    world.forge_targets(_evil_targets(world), one_key)
    refused(device, lambda: device.install_file(world.bundles["6.6.6"]), "threshold")


def test_revoked_key_after_rotation(installed: Installer, world: World) -> None:
    old_key = world.repo.signers("targets")[0]
    world.repo.rotate("targets")
    world.sync()
    installed.verifier.refresh()  # the device follows the rotation
    world.forge_targets(_evil_targets(world), [old_key])
    refused(installed, lambda: installed.install_file(world.bundles["6.6.6"]), "signature")


def test_key_revoked_through_root_no_longer_counts(world: World, tmp_path: Path) -> None:
    repo = Repository.create(tmp_path / "repo3", threshold=1, keys=2)
    w = World(tmp=tmp_path / "w3", repo=repo, mirror=tmp_path / "w3" / "mirror")
    w.tmp.mkdir()
    w.publish("1.0.0")
    device = w.device()
    device.install_file(w.bundles["1.0.0"])
    signers = repo.signers("targets")
    repo.revoke(signers[0].public_key.keyid)
    w.sync()
    device.verifier.refresh()
    w.forge_targets(_evil_targets(w), [signers[0]])
    refused(device, lambda: device.install_file(w.bundles["6.6.6"]), "signature")


# -- slow retrieval --------------------------------------------------------------------------


class _Paced(LocalFetcher):
    """Serves targets `size` bytes every `pause` seconds (metadata at full speed)."""

    def __init__(self, world: World, size: int, pause: float, policy: DownloadPolicy) -> None:
        super().__init__(world.mirror / "metadata", world.mirror / "targets", policy)
        self.size, self.pause = size, pause
        self.served = 0  # target bytes handed out: how far the download got before it was stopped

    def _chunks(self, url: str, offset: int, deadline: Deadline, limit: int | None) -> Iterator[bytes]:
        for chunk in super()._chunks(url, offset, deadline, limit):
            if "/targets/" not in url:
                yield chunk
                continue
            for i in range(0, len(chunk), self.size):
                time.sleep(self.pause)
                self.served += len(chunk[i : i + self.size])
                yield chunk[i : i + self.size]


def test_drip_under_the_throughput_floor_is_aborted(installed: Installer, world: World) -> None:
    world.publish("2.0.0", size=64 * 1024)
    policy = DownloadPolicy(min_bytes_per_s=20_000, grace_s=0.3, deadline_s=60)
    installed.fetcher = paced = _Paced(world, size=1, pause=0.01, policy=policy)  # ~100 B/s
    err = refused(installed, lambda: installed.apply_desired(world.desired("2.0.0")), "slow-retrieval")
    assert "floor" in str(err)
    # Stopped early (the file would take ~11 minutes at this rate): no wall-clock bound,
    # which a busy machine could break, but the bytes it got before the floor ended it.
    assert 0 < paced.served < 16 * 1024, paced.served


def test_download_outlasting_its_deadline_is_aborted(installed: Installer, world: World) -> None:
    world.publish("2.0.0", size=256 * 1024)
    policy = DownloadPolicy(min_bytes_per_s=1_000, grace_s=0.1, deadline_s=0.8)
    installed.fetcher = paced = _Paced(world, size=8192, pause=0.05, policy=policy)  # ~160 KB/s, needs ~1.6 s
    err = refused(installed, lambda: installed.apply_desired(world.desired("2.0.0")), "slow-retrieval")
    assert "deadline" in str(err)
    assert 0 < paced.served < 256 * 1024, paced.served  # ended by the deadline, not by the end of the file


# -- offline install details ------------------------------------------------------------------


def test_offline_install_needs_trust_root_on_a_fresh_state_dir(world: World, tmp_path: Path) -> None:
    world.publish("1.0.0")
    usb = tmp_path / "usb"
    world.repo.export(usb, bundles=True)
    with pytest.raises(TrustError) as info:
        install_offline(tmp_path / "fresh", usb / "tiny-1.0.0.fgb", usb, board="generic")
    assert info.value.check == "provisioning"
    result = install_offline(tmp_path / "fresh", usb / "tiny-1.0.0.fgb", usb, board="generic", trust_root=True)
    assert result.changed


def test_bundle_for_another_board_is_refused(world: World) -> None:
    world.publish("1.0.0", boards=("jetson-orin-nano",))
    device = world.device(board="generic-x86_64")
    refused(device, lambda: device.install_file(world.bundles["1.0.0"]), "board")


def _signed_hostile_bundle(world: World, member: str) -> Path:
    """A bundle whose second member is `member`, published with the real targets key (a
    careless or malicious release engineer): signatures alone must not let it write there."""
    good = world.bundles.get("1.0.0") or world.build("1.0.0")
    evil = world.tmp / "hostile" / "tiny-6.6.6.fgb"
    evil.parent.mkdir(exist_ok=True)
    with tarfile.open(good) as src, tarfile.open(evil, "w", format=tarfile.PAX_FORMAT) as out:
        manifest = src.getmember("manifest.json")
        out.addfile(manifest, src.extractfile(manifest))
        payload = b'{"signed": "by the attacker"}'
        info = tarfile.TarInfo(member)
        info.size = len(payload)
        out.addfile(info, io.BytesIO(payload))
    shutil.copy(evil, world.mirror / "targets" / evil.name)
    md = world.repo.load("targets")
    md.signed.version += 1
    md.signed.targets[evil.name] = TargetFile.from_file(evil.name, str(evil), ["sha256"])
    world.forge_targets(md, world.repo.signers("targets"))
    return evil


@pytest.mark.parametrize("member", ["../../trust/root.pinned.json", "../../trust/metadata/root.json"])
def test_signed_bundle_cannot_overwrite_trusted_metadata(installed: Installer, world: World, member: str) -> None:
    trust = installed.paths.trust_dir
    pinned = installed.paths.pinned_root.read_bytes()
    evil = _signed_hostile_bundle(world, member)
    refused(installed, lambda: installed.install_file(evil), "format")
    assert installed.paths.pinned_root.read_bytes() == pinned
    state_files = [f for f in installed.paths.state_dir.rglob("*") if f.is_file()]
    assert not [f for f in state_files if b"by the attacker" in f.read_bytes()]
    assert os.stat(trust).st_mode & 0o077 == 0


def test_passphrase_protected_offline_keys(tmp_path: Path) -> None:
    repo = Repository.create(tmp_path / "r", passphrase=b"correct horse")
    pem = next((repo.keys.offline).glob("targets-*.pem")).read_bytes()
    assert b"ENCRYPTED" in pem
    locked = Repository(tmp_path / "r", passphrase=keystore.passphrase_source(b"wrong"))
    with pytest.raises(keystore.KeyFileError):
        locked.signers("targets")
    online = next((repo.keys.online).glob("timestamp-*.pem")).read_bytes()
    assert b"ENCRYPTED" not in online
    for key in (tmp_path / "r" / "keys").rglob("*.pem"):
        assert key.stat().st_mode & 0o777 == 0o600, key
    for folder in (repo.keys.offline, repo.keys.online):
        assert folder.stat().st_mode & 0o077 == 0, folder
