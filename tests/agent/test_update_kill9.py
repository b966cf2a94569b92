"""kill -9 during an install, with real processes and real bundles: at each step (after the
journal records it) and at 30 seeded random instants. After a restart the device always
ends serving the new bundle, committed, with a consistent journal and store; at the
instant of the kill it serves the old one or the new one, whole."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agent.manifest import load_manifest, verify_files
from tests.support.update_world import INT4, INT8, UpdateWorld, read_journal, variant

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["checking", "downloading", "unpacking", "switching", "trial", "committing"]


class Fleet1:
    """One device process at a time, alternating between two real bundles."""

    def __init__(self, tmp: Path) -> None:
        self.world = UpdateWorld(tmp)
        models = tmp / "models"
        self.targets = [self.world.publish(variant(models, "austen", "1.0.0", INT8)),
                        self.world.publish(variant(models, "austen", "2.0.0", INT4))]
        self.envelope = tmp / "desired.json"
        self.n = 0

    def next_desired(self) -> str:
        """A new director document naming the bundle that is not current."""
        current = self.current()
        target = self.targets[1] if current and current.startswith("austen-1.0.0-") else self.targets[0]
        self.envelope.write_bytes(msgspec.json.encode(self.world.desired(target)))
        return target

    def current(self) -> str | None:
        link = self.world.state / "current"
        return link.resolve().name if link.is_symlink() else None

    def start(self, crash_after: str | None = None) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "FLEETGEN_CRASH_AFTER_PHASE"}
        if crash_after:
            env["FLEETGEN_CRASH_AFTER_PHASE"] = crash_after
        argv = [sys.executable, "-m", "tests.support.update_child", str(self.world.state),
                *self.world.fetcher_args(), str(self.envelope)]
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish(self) -> None:
        """The restart: same retained document, no fault; must complete."""
        proc = self.start()
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]

    def check_whole(self, allowed: set[str]) -> str:
        current = self.current()
        assert current is not None and current.rsplit("-", 1)[0] in allowed, (current, allowed)
        verify_files(self.world.state / "current", load_manifest(self.world.state / "current"))
        return current

    def check_settled(self, target: str) -> None:
        journal = read_journal(self.world.state)
        assert journal["phase"] == "idle" and journal["last_result"] == "committed", journal
        assert journal["target"]["path"] == target
        current = self.check_whole({target.removesuffix(".fgb")})
        bundles = self.world.state / "bundles"
        names = sorted(p.name for p in bundles.iterdir())
        assert current in names and len(names) <= 2 and not [n for n in names if n.startswith(".")], names
        downloads = self.world.state / "downloads"
        assert not downloads.exists() or not list(downloads.iterdir())


def labels(fleet: Fleet1) -> set[str]:
    return {t.removesuffix(".fgb") for t in fleet.targets}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet1:
    f = Fleet1(tmp_path)
    target = f.next_desired()
    f.finish()
    f.check_settled(target)
    return f


@pytest.mark.timeout(600)
def test_kill_9_after_each_install_step_then_restart_commits(fleet: Fleet1) -> None:
    for step in STEPS:
        before = fleet.current()
        target = fleet.next_desired()
        proc = fleet.start(crash_after=step)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (step, err.decode()[-2000:])
        assert read_journal(fleet.world.state)["phase"] == step
        at_kill = fleet.check_whole(labels(fleet))
        if step in ("checking", "downloading", "unpacking", "switching"):
            assert at_kill == before, step  # the switch had not happened yet
        fleet.finish()
        fleet.check_settled(target)


@pytest.mark.timeout(900)
def test_kill_9_at_30_seeded_random_instants(fleet: Fleet1) -> None:
    target = fleet.next_desired()
    t0 = time.monotonic()
    fleet.finish()  # one whole install, uninterrupted: how long the window to hit is
    took = time.monotonic() - t0
    fleet.check_settled(target)
    rng = random.Random(9)
    seen: set[str] = set()
    for _ in range(30):
        before = fleet.current()
        target = fleet.next_desired()
        proc = fleet.start()
        time.sleep(rng.uniform(0, took))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        seen.add("new" if fleet.check_whole(labels(fleet)) != before else "old")
        fleet.finish()
        fleet.check_settled(target)
    assert "old" in seen  # some cuts fell before the switch
