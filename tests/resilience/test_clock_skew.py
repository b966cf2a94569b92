"""A device clock off by days, forward and back (tests/resilience/skewed_child.py): expired
metadata is refused while the clock is ahead, an older director document is refused while
it is behind (the persisted version, not the clock, stops a replay), and once the clock is
right again the same device installs the next document: nothing was bricked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.resilience.report import ScenarioResult, Sized
from tests.resilience.update_harness import ROOT, Fleet1

DAY = 86400.0


def run_skewed(fleet: Fleet1, skew_s: float, envelope: bytes) -> list[dict[str, object]]:
    """One start of the device with its clock `skew_s` off; the notices it wrote."""
    fleet.envelope.write_bytes(envelope)
    notices = fleet.world.state.parent / "notices.jsonl"
    notices.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "tests.resilience.skewed_child", str(skew_s), str(fleet.world.state),
            *fleet.world.fetcher_args(), str(fleet.envelope)]
    env = {k: v for k, v in os.environ.items() if k != "FLEETGEN_CRASH_AFTER_PHASE"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return [json.loads(line) for line in notices.read_text().splitlines()] if notices.exists() else []


def refusal(notices: list[dict[str, object]]) -> str:
    found = [f"{n['kind']}: {n['message']}" for n in notices if n["kind"] in ("update.refused", "update.failed")]
    return found[0] if found else ""


@pytest.mark.timeout(600)
def test_clock_skew_forward_and_back_by_days(tmp_path: Path, scenario: ScenarioResult, size: Sized) -> None:
    full = size(0, 1) == 1  # the short run: ahead by 10 days, then right again
    fleet = Fleet1(tmp_path)
    first = fleet.next_desired()
    fleet.finish()
    fleet.check_settled(first)
    old_envelope = fleet.envelope.read_bytes()  # director v1, for the replay below

    def attempt(skew_s: float, envelope: bytes, want: str, why: str) -> None:
        t0 = time.monotonic()
        before = fleet.current()
        notices = run_skewed(fleet, skew_s, envelope)
        scenario.faults += 1 if skew_s else 0
        scenario.runs += 1
        now = fleet.check_whole({t.removesuffix(".fgb") for t in fleet.targets})
        if now == before:
            scenario.installs_old += 1
            assert want == "old", (skew_s, refusal(notices))
            assert why in refusal(notices), (skew_s, refusal(notices))
            scenario.note(f"skew {skew_s / DAY:+.0f} d: {refusal(notices)[:110]}")
        else:
            scenario.installs_new += 1
            assert want == "new", (skew_s, notices)
            scenario.recovered(time.monotonic() - t0)

    # Ahead by 3 days: the TUF timestamp (1 day) has expired; by 10: the director document (7) too.
    if full:
        fleet.next_desired()
        attempt(3 * DAY, fleet.envelope.read_bytes(), "old", "expired")
    fleet.next_desired()
    attempt(10 * DAY, fleet.envelope.read_bytes(), "old", "expired")
    # Behind by 10 days: every expiry looks far away. A current document is good (neither TUF
    # nor the director has a "not before"): it installs.
    if full:
        fleet.next_desired()
        attempt(-10 * DAY, fleet.envelope.read_bytes(), "new", "")
        # Still behind, the replay of the older document: only the persisted director version stops it.
        attempt(-10 * DAY, old_envelope, "old", "version")
    # The clock right again: the next document installs; nothing the skew left blocks it.
    target = fleet.next_desired()
    attempt(0.0, fleet.envelope.read_bytes(), "new", "")
    fleet.check_settled(target)
    assert scenario.installs_broken == 0
