"""The one-device update harness of the resilience scenarios: the update worker as a
process (tests/resilience/update_child.py) alternating between two real bundles.
(tests/agent/test_update_kill9.py now runs the whole daemon against a controller.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec

from agent.manifest import load_manifest, verify_files
from tests.support.update_world import INT4, INT8, UpdateWorld, read_journal, variant

ROOT = Path(__file__).resolve().parents[2]


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
        argv = [sys.executable, "-m", "tests.resilience.update_child", str(self.world.state),
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
