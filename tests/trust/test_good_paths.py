"""What must work: new bundles install, key rotation is followed, an operator can go back."""

from __future__ import annotations

import os
from pathlib import Path

from agent.trust.layout import load_director_version
from agent.update.install import Installer
from controller.tuf.repository import Repository
from tests.trust.conftest import World


def _current(device: Installer) -> str:
    cur = device.store.current()
    assert cur is not None
    return cur.name


def test_a_new_bundle_installs_and_the_previous_is_kept_until_the_next(world: World) -> None:
    world.publish("1.0.0")
    device = world.device()
    assert device.apply_desired(world.desired("1.0.0")).changed
    first = device.store.current()
    world.publish("2.0.0")
    assert device.apply_desired(world.desired("2.0.0")).changed
    assert "tiny-2.0.0" in _current(device)
    # The installed folder is a model folder: its manifest plus the files it lists.
    from agent.manifest import load_manifest, verify_files

    verify_files(device.store.current(), load_manifest(device.store.current()))  # type: ignore[arg-type]
    assert (device.store.root / os.readlink(device.store.previous_link)) == first
    assert first is not None and first.is_dir()
    assert (device.store.current() / "model.onnx").read_bytes() == (  # type: ignore[operator]
        world.tmp / "models" / "tiny-2.0.0" / "model.onnx"
    ).read_bytes()
    world.publish("3.0.0")
    device.apply_desired(world.desired("3.0.0"))
    assert not first.exists()  # pruned at the install after next
    names = sorted(p.name for p in device.store.bundles.iterdir())
    assert len(names) == 2 and any("3.0.0" in n for n in names) and any("2.0.0" in n for n in names)
    assert load_director_version(device.paths) == 3


def test_the_same_document_delivered_again_changes_nothing(world: World) -> None:
    world.publish("1.0.0")
    device = world.device()
    envelope = world.desired("1.0.0")
    assert device.apply_desired(envelope).changed
    again = device.apply_desired(envelope)
    assert not again.changed and again.director_version == 1


def test_operator_returns_to_an_older_still_signed_bundle(world: World) -> None:
    world.publish("1.0.0")
    world.publish("2.0.0")
    device = world.device()
    device.apply_desired(world.desired("1.0.0"))
    device.apply_desired(world.desired("2.0.0"))
    back = device.apply_desired(world.desired("1.0.0"))  # director v3 names the old target
    assert back.changed and back.director_version == 3
    assert "tiny-1.0.0" in _current(device)


def test_rotating_the_targets_key_the_device_follows(world: World) -> None:
    world.publish("1.0.0")
    device = world.device()
    device.apply_desired(world.desired("1.0.0"))
    world.repo.rotate("targets")
    world.publish("2.0.0")
    assert device.apply_desired(world.desired("2.0.0")).changed
    root = device.verifier.trusted_root()
    assert root["version"] == 2
    assert root["roles"]["targets"]["keyids"] == [s.public_key.keyid for s in world.repo.signers("targets")]


def test_rotating_root_and_director_keys_the_device_follows(world: World) -> None:
    world.publish("1.0.0")
    device = world.device()
    device.apply_desired(world.desired("1.0.0"))
    world.repo.rotate("root")
    world.repo.rotate("director")
    world.repo.rotate("timestamp")
    world.publish("2.0.0")
    assert device.apply_desired(world.desired("2.0.0")).changed  # signed by the new director key
    assert device.verifier.trusted_root()["version"] == 4


def test_online_roles_are_resigned_on_schedule(world: World, tmp_path: Path) -> None:
    before = world.repo.load("timestamp").signed.version
    assert world.repo.resign_online() == []  # fresh: nothing due
    later = world.repo._clock() + __import__("datetime").timedelta(hours=13)
    Repository(world.repo.path, clock=lambda: later).resign_online()
    assert world.repo.load("timestamp").signed.version == before + 1


def test_offline_install_from_an_export(world: World, tmp_path: Path) -> None:
    world.publish("1.0.0")
    world.publish("2.0.0")
    usb = tmp_path / "usb"
    world.repo.export(usb, bundles=True)
    device = world.device("offline-device")
    from agent.trust.fetch import LocalFetcher

    device.fetcher = LocalFetcher(usb)
    assert device.install_file(usb / "tiny-2.0.0.fgb").changed
    assert "tiny-2.0.0" in _current(device)


def test_resign_schedule_ticks(tmp_path: Path) -> None:
    import time as _time

    from controller.services.resign import ResignSchedule
    from controller.tuf.repository import RepoConfig

    repo = Repository.create(tmp_path / "short", config=RepoConfig(timestamp_expiry_s=2))
    schedule = ResignSchedule(repo.path, interval_s=0.05)
    assert schedule.tick() == []  # 2 s left of 2 s: not due
    before = repo.load("timestamp").signed.version
    schedule.start()
    # Due past half the lifetime (times are whole seconds); poll rather than guess on a busy machine.
    deadline = _time.monotonic() + 5
    while repo.load("timestamp").signed.version == before and _time.monotonic() < deadline:
        _time.sleep(0.1)
    schedule.stop()
    assert repo.load("timestamp").signed.version > before


def test_a_shipped_model_round_trips(world: World) -> None:
    """Build, publish and install a model that ships in models/ (skipped until one does)."""
    import pytest

    from agent.manifest import load_manifest, verify_files
    from agent.update.bundle import build_bundle

    root = Path(__file__).resolve().parents[2] / "models"
    folders = sorted((p.parent for p in root.glob("*/*/manifest.json")), key=lambda p: sum(
        f.stat().st_size for f in p.iterdir() if f.is_file()
    ))
    if not folders:
        pytest.skip("no shipped model in models/ yet")
    manifest = load_manifest(folders[0])
    out = world.tmp / f"{manifest.name}-{manifest.version}.fgb"
    build_bundle(folders[0], out)
    world.repo.publish(out)
    world.sync()
    device = world.device()
    result = device.apply_desired(world.director.desired("dev-1", out.name))
    assert result.changed
    current = device.store.current()
    assert current is not None
    verify_files(current, load_manifest(current))


def test_concurrent_publish_and_resign_keep_the_repository_consistent(world: World) -> None:
    import threading

    from tuf.api.metadata import Metadata

    bundles = [world.build(f"{i}.0.0") for i in range(1, 3)]
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for b in bundles:
                Repository(world.repo.path).publish(b)
        except BaseException as e:  # surfaced below
            errors.append(e)

    def resign() -> None:
        try:
            for _ in range(4):
                Repository(world.repo.path).resign_online(force=True)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=publish), threading.Thread(target=resign)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    meta = world.repo.metadata_dir
    for path in meta.glob("*.snapshot.json"):
        assert Metadata.from_bytes(path.read_bytes()).signed.version == int(path.name.split(".")[0])
    world.sync()
    device = world.device()
    for b in bundles:
        assert device.install_file(b).changed
