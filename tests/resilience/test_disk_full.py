"""The device's disk fills up during a download and during an unpack: the state directory
lives on a small tmpfs (we are root here; otherwise the scenario is skipped, and says so),
and another writer fills it at the instant the worker reports the step. The device keeps
running the old bundle, whole; the update fails with an event naming the disk, then waits
(update.waiting, check disk) and rechecks; once the filler is removed the same update
proceeds and commits, without a new document."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.trust.layout import TrustPaths, provision
from agent.update.conditions import UpdateConditions
from agent.update.machine import Policy
from agent.update.worker import Notice, Snapshot, UpdateWorker, WorkerPost, WorkerSettings
from tests.resilience.report import ScenarioResult, Sized
from tests.support.update_world import INT4, INT8, UpdateWorld, variant


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("disk-full scenario needs root to mount a small tmpfs (fallback: not run)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "fleetgen-disk-full", str(mnt)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}): disk-full scenario not run")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Write until the filesystem refuses another byte."""
    path = mnt / "filler"
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return path


class Device:
    def __init__(self, world: UpdateWorld, state: Path) -> None:
        self.world, self.state = world, state
        self.notices: list[Notice] = []
        self.fill_on: str | None = None  # a notice kind or "phase:NAME": fill the disk then
        self.lock = threading.Lock()
        settings = WorkerSettings(policy=Policy(max_retries=2, backoff_base_s=0.2, backoff_max_s=1.0,
                                                recheck_s=0.2),
                                  conditions=UpdateConditions(disk_reserve_mb=0))
        self.worker = UpdateWorker(state, world.fetcher, "dev-1", "generic", self.post, settings)
        self.worker.recover()
        self.worker.start()

    def post(self, item: WorkerPost) -> None:
        key = None
        if isinstance(item, Notice):
            with self.lock:
                self.notices.append(item)
            key = item.kind
        elif isinstance(item, Snapshot):
            key = f"phase:{item.phase}"
        if key is not None and key == self.fill_on:
            self.fill_on = None
            fill(self.state.parent)

    def submit(self, target: str) -> int:
        before = len(self.notices)
        self.worker.submit(msgspec.json.decode(msgspec.json.encode(self.world.desired(target)),
                                               type=type(self.world.desired(None))))
        return before

    def settle(self, before: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        time.sleep(0.05)
        while not self.worker.settled():
            assert time.monotonic() < deadline, [n.kind for n in self.notices[before:]]
            time.sleep(0.05)
        self.last = self.notices[before:]

    def wait_for_disk(self, before: int, timeout: float = 180) -> None:
        """Until the update says it waits for free disk (the event, not a sleep)."""
        deadline = time.monotonic() + timeout
        while not any(n.kind == "update.waiting" and n.details.get("check") == "disk"
                      for n in self.notices[before:]):
            assert time.monotonic() < deadline, [f"{n.kind}: {n.message}" for n in self.notices[before:]]
            time.sleep(0.05)
        self.last = self.notices[before:]

    def apply(self, target: str, timeout: float = 180) -> None:
        self.settle(self.submit(target), timeout)

    def current(self) -> str | None:
        link = self.state / "current"
        return link.resolve().name if link.is_symlink() else None


@pytest.mark.timeout(600)
def test_disk_full_during_download_and_unpack(tmp_path: Path, small_disk: Path, scenario: ScenarioResult,
                                              size: Sized) -> None:
    world = UpdateWorld(tmp_path)
    models = tmp_path / "models"
    v1 = world.publish(variant(models, "austen", "1.0.0", INT8))
    v2 = world.publish(variant(models, "austen", "2.0.0", INT4))
    state = small_disk / "device"
    provision(TrustPaths(state), (world.repo.metadata_dir / "1.root.json").read_bytes())
    device = Device(world, state)
    try:
        device.apply(v1)
        old = device.current()
        assert old is not None and old.startswith("austen-1.0.0")
        steps = ["update.downloading", "phase:unpacking"]
        rounds = steps[:size(1, 2)]
        for step in rounds:
            device.fill_on = step
            before = device.submit(v2)
            device.wait_for_disk(before)
            scenario.faults += 1
            scenario.runs += 1
            kinds = [n.kind for n in device.last]
            assert device.fill_on is None, f"never reached {step}: {kinds}"
            why = [f"{n.kind}: {n.message}" for n in device.last if n.kind in ("update.failed", "update.refused")]
            assert why and "update.refused" not in kinds, kinds
            if device.current() == old:
                scenario.installs_old += 1
            else:
                scenario.installs_broken += 1
            from agent.manifest import load_manifest, verify_files

            verify_files(state / "current", load_manifest(state / "current"))  # the old one, whole
            scenario.note(f"disk filled at {step}: {why[-1][:120]}")
            (small_disk / "filler").unlink()
            t0 = time.monotonic()
            device.settle(before)  # room again: the same update proceeds, no new document
            assert device.current() is not None and device.current().startswith("austen-2.0.0"), \
                [f"{n.kind}: {n.message}" for n in device.last]
            assert "update.committed" in [n.kind for n in device.last]
            scenario.installs_new += 1
            scenario.recovered(time.monotonic() - t0)
            if step != rounds[-1]:
                device.apply(v1)  # back to the old one for the next round
    finally:
        device.worker.stop()
    assert scenario.installs_broken == 0
