"""kill -9 during an install, with real processes end to end: the agent daemon (`fleetgen-agent
run`) fetching over a real Mosquitto from the controller (`fleetgen serve`), real bundles and
the health check in its child. At each step (after the journal records it) and at 30 seeded
random instants: at the instant of the kill the device serves the old bundle or the new one,
whole; after a restart it always ends serving the new bundle, committed, with a consistent
journal and store, and the controller sees that final state: `reported` names the bundle
with the update idle and committed, and every step's event of that director version is in
its store (the spool kept them across the kill)."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.manifest import load_manifest, verify_files
from agent.protocol import Channel, DesiredState, device_topic, encode
from agent.trust.layout import TrustPaths, provision
from controller.demo.brokers import Mosquitto
from controller.demo.fleetproc import DeviceSpec, FleetProcesses
from tests.integration.test_fleet_mqtt import publish_once
from tests.support.update_world import DEVICE, INT4, INT8, UpdateWorld, read_journal, variant

STEPS = ["checking", "downloading", "unpacking", "switching", "trial", "committing"]
# Every event the machine emits on the way to a commit names the director version: all of
# them reach the controller, whichever instant the agent was killed at.
STEP_EVENTS = {"update.started", "update.verified", "update.switched", "update.health", "update.committed"}
SETTLE_S = 120


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> UpdateWorld:
    """One repository with both bundles, built once for the module (building measures each
    variant's probe perplexity: seconds apiece)."""
    tmp = tmp_path_factory.mktemp("kill9")
    w = UpdateWorld(tmp)
    models = tmp / "models"
    w.targets = [w.publish(variant(models, "austen", "1.0.0", INT8)),  # type: ignore[attr-defined]
                 w.publish(variant(models, "austen", "2.0.0", INT4))]
    return w


class Device:
    """One agent daemon at a time, alternating between the two bundles; the controller's
    store is read as the operator would (its SQLite file)."""

    def __init__(self, world: UpdateWorld, mosquitto: Mosquitto, tmp: Path) -> None:
        self.world, self.mosquitto = world, mosquitto
        self.targets: list[str] = world.targets  # type: ignore[attr-defined]
        self.fleet = FleetProcesses(tmp / "fleet", mosquitto.url, repository=world.repo.path,
                                    sample_interval_s=5.0, publish_interval_s=0.2)
        self.state = self.fleet.workdir / "agents" / DEVICE
        provision(TrustPaths(self.state), (world.repo.metadata_dir / "1.root.json").read_bytes())
        self.fleet.start_controller()

    # -- the device ---------------------------------------------------------------------

    def current(self) -> str | None:
        link = self.state / "current"
        return link.resolve().name if link.is_symlink() else None

    def next_desired(self) -> tuple[str, int]:
        """Publish (retained) a director document naming the bundle that is not current."""
        current = self.current()
        target = self.targets[1] if current and current.startswith("austen-1.0.0-") else self.targets[0]
        envelope = self.world.desired(target)
        version = msgspec.json.decode(envelope.payload, type=DesiredState).version
        publish_once(self.mosquitto.port, device_topic(DEVICE, Channel.DESIRED), encode(envelope), retain=True)
        return target, version

    def start(self, crash_after: str | None = None) -> None:
        self.fleet.env.pop("FLEETGEN_CRASH_AFTER_PHASE", None)
        if crash_after:
            self.fleet.env["FLEETGEN_CRASH_AFTER_PHASE"] = crash_after
        self.fleet.start_agent(DeviceSpec(DEVICE))

    def wait_killed(self, what: str) -> None:
        proc = self.fleet.agents.pop(DEVICE)
        rc = proc.wait(SETTLE_S)
        assert rc == -signal.SIGKILL, (what, rc, self.fleet.log_text(DEVICE)[-2000:])

    def kill(self) -> None:
        proc = self.fleet.agents.pop(DEVICE)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def check_whole(self, allowed: set[str]) -> str:
        current = self.current()
        assert current is not None and current.rsplit("-", 1)[0] in allowed, (current, allowed)
        verify_files(self.state / "current", load_manifest(self.state / "current"))
        return current

    def check_settled(self, target: str) -> None:
        journal = read_journal(self.state)
        assert journal["phase"] == "idle" and journal["last_result"] == "committed", journal
        assert journal["target"]["path"] == target
        current = self.check_whole({target.removesuffix(".fgb")})
        names = sorted(p.name for p in (self.state / "bundles").iterdir())
        assert current in names and len(names) <= 2 and not [n for n in names if n.startswith(".")], names
        downloads = self.state / "downloads"
        assert not downloads.exists() or not list(downloads.iterdir())

    # -- what the controller sees -------------------------------------------------------

    def _query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        try:
            db = sqlite3.connect(self.fleet.db_url.removeprefix("sqlite:///"), timeout=10)
        except sqlite3.OperationalError:  # the controller has not created its database yet
            return []
        try:
            return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError:  # nor its tables
            return []
        finally:
            db.close()

    def controller_view(self, version: int) -> tuple[dict[str, Any] | None, set[str]]:
        rows = self._query("SELECT reported FROM devices WHERE id = ?", DEVICE)
        reported = msgspec.json.decode(rows[0][0]) if rows and rows[0][0] else None
        kinds = {kind for kind, details in self._query("SELECT kind, details FROM events WHERE device_id = ?", DEVICE)
                 if msgspec.json.decode(details).get("director_version") == version}
        return reported, kinds

    def wait_controller_sees(self, target: str, version: int) -> None:
        """Until the controller's store shows `target` committed for `version` (the agent
        keeps running: this is how an operator learns the update is done)."""
        label = "-".join(target.removesuffix(".fgb").split("-")[:2])  # austen-1.0.0
        deadline = time.monotonic() + SETTLE_S
        while True:
            reported, kinds = self.controller_view(version)
            update = (reported or {}).get("update") or {}
            if (reported is not None and reported.get("active_bundle") == label
                    and update.get("phase") == "idle" and update.get("last_result") == "committed"
                    and kinds >= STEP_EVENTS):
                return
            alive = self.fleet.alive()
            if time.monotonic() > deadline or not alive.get(DEVICE, True) or not alive["controller"]:
                raise AssertionError(f"the controller never saw {target} committed for version {version}: "
                                     f"reported={reported} events={sorted(kinds)} alive={alive}\n"
                                     f"{self.fleet.log_text(DEVICE)[-3000:]}")
            time.sleep(0.1)

    def install(self) -> tuple[str, int]:
        """An uninterrupted install on the running agent."""
        target, version = self.next_desired()
        self.wait_controller_sees(target, version)
        self.check_settled(target)
        return target, version

    def labels(self) -> set[str]:
        return {t.removesuffix(".fgb") for t in self.targets}


@pytest.fixture(scope="module")
def device(world: UpdateWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    """One broker, controller and device for the module: each test ends on a settled device
    (checked), which is where the next one starts."""
    tmp = tmp_path_factory.mktemp("kill9-fleet")
    broker = Mosquitto(workdir=tmp / "mosquitto")
    broker.start()
    d = Device(world, broker, tmp)
    try:
        d.start()
        d.install()  # the first bundle, so every kill below has an old one to fall back on
        yield d
    finally:
        if DEVICE in d.fleet.agents:
            d.kill()  # no goodbye needed: faster than its graceful stop
        d.fleet.stop()
        broker.stop()


@pytest.mark.timeout(600)
def test_kill_9_after_each_install_step_then_restart_commits_and_the_controller_sees_it(device: Device) -> None:
    for step in STEPS:
        before = device.current()
        device.kill()
        target, version = device.next_desired()
        device.start(crash_after=step)
        device.wait_killed(step)
        assert read_journal(device.state)["phase"] == step
        at_kill = device.check_whole(device.labels())
        if step in ("checking", "downloading", "unpacking", "switching"):
            assert at_kill == before, step  # the switch had not happened yet
        device.start()  # the restart: the same retained document, no fault
        device.wait_controller_sees(target, version)
        device.check_settled(target)


@pytest.mark.timeout(900)
def test_kill_9_at_30_seeded_random_instants_and_the_controller_sees_the_end(device: Device) -> None:
    t0 = time.monotonic()
    device.install()  # one whole install, uninterrupted: how long the window to hit is
    took = time.monotonic() - t0
    rng = random.Random(9)
    seen: set[str] = set()
    for _ in range(30):
        before = device.current()
        target, version = device.next_desired()
        time.sleep(rng.uniform(0, took))
        device.kill()
        seen.add("new" if device.check_whole(device.labels()) != before else "old")
        device.start()
        device.wait_controller_sees(target, version)
        device.check_settled(target)
    assert "old" in seen  # some cuts fell before the switch
