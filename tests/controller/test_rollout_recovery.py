"""The rollout service's recovery from a broker that lost messages (ADR 0074), in process and
on an injected clock: a real SQLite store, a real image repository and real director
signatures; devices answer through the store as the ingest writes them, and the MQTT
transport is a recorder of what the director publisher published.

- a device whose retained `reported` says it runs the bundle, healthy, having acted on this
  rollout's document counts as committed though its `update.committed` was lost;
- a pending device that has not reported its document gets it again 10 s after it was
  directed, then after 20, 40, ... s (at most every 300 s);
- an `update.refused` of an older director document than the rollout's (a replayed retained
  copy) does not fail the device; one of the rollout's own document does.

The end-to-end version, with a SIGKILLed Mosquitto, is tests/resilience/test_rollout_broker_kill.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.protocol import Event, Reported, Status, UpdateReport, decode_as
from agent.protocol.messages import DesiredState, SignedEnvelope
from controller.director import Director
from controller.fleet.rollout import RolloutPolicy, parse_waves
from controller.services.director import DirectorPublisher
from controller.services.rollouts import REPUBLISH_AFTER_S, REPUBLISH_MAX_S, RolloutService, start_rollout
from controller.store import Ingested, Store
from controller.store.views import GroupRule, RolloutView
from controller.tuf.repository import Repository
from tests.controller.fleetworld import make_repo

pytestmark = pytest.mark.timeout(30)

OLD, NEW = "tiny-1.0.0", "tiny-2.0.0"
BOARD = "raspberry-pi-5"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The MQTT transport as the director publisher sees it: every document it published."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def subscribe(self, topic_filter: str, handler: Any) -> None:
        raise AssertionError("the director publisher never subscribes")

    def unsubscribe(self, topic_filter: str) -> None:
        raise AssertionError("the director publisher never unsubscribes")

    def documents(self, device: str) -> list[DesiredState]:
        return [decode_as(DesiredState, decode_as(SignedEnvelope, p).payload)
                for t, p in self.published if t == f"fleetgen/v1/dev/{device}/desired"]


class Fleet:
    """Devices in the store, a group `lab` of them, and the rollout service on `clock`."""

    def __init__(self, store: Store, repo: Path, devices: tuple[str, ...]) -> None:
        self.store, self.repo, self.devices = store, repo, devices
        self.clock = Clock()
        self.transport = Recorder()
        self.publisher = DirectorPublisher(Director(Repository(repo)), store.repos.desired, self.transport,
                                           clock=self.clock)
        self.service = RolloutService(store.repos.rollouts, self.publisher, clock=self.clock)
        self._seq: dict[str, int] = {}
        batch: list[Ingested] = []
        for d in devices:
            batch.append(Ingested(d, T0, Status(state="online", ts=T0, agent_version="1")))
            batch.append(Ingested(d, T0, self._reported(d, OLD, "ok", 0)))
        store.apply(batch)
        store.repos.groups.create("lab")
        store.repos.groups.add("lab", [GroupRule("board", BOARD)])

    def _reported(self, device: str, bundle: str, health: Any, desired_version: int,
                  phase: str = "idle") -> Reported:
        return Reported(device_id=device, agent_version="1", board=BOARD, ts=self.clock.now, active_bundle=bundle,
                        slot="a", health=health, desired_version=desired_version, update=UpdateReport(phase=phase))

    def start(self, waves: str = "100%", max_failures: float = 0.0, timeout_s: float = 3600.0) -> int:
        policy = RolloutPolicy(parse_waves(waves), max_failures, timeout_s)
        return start_rollout(self.store, self.repo, f"{NEW}.fgb", "lab", policy, waves).id

    def at(self, t: float) -> None:
        """The clock reads T0 + t, and the service ticks once."""
        self.clock.now = T0 + t
        self.service.tick()

    def report(self, device: str, bundle: str, health: str = "ok", desired_version: int = 0,
               phase: str = "idle") -> None:
        """The device's retained `reported`, as the ingest stores it (no event with it)."""
        self.store.apply([Ingested(device, self.clock.now,
                                   self._reported(device, bundle, health, desired_version, phase))])

    def event(self, device: str, kind: str, **details: Any) -> None:
        seq = self._seq[device] = self._seq.get(device, 0) + 1
        self.store.apply([Ingested(device, self.clock.now, Event(device_id=device, seq=seq, ts=self.clock.now,
                                                                kind=kind, details=details))])

    def rollout(self, rollout_id: int) -> RolloutView:
        return self.store.repos.rollouts.get(rollout_id)

    def results(self, rollout_id: int) -> dict[str, str]:
        return {d: v.result for d, v in self.rollout(rollout_id).devices.items()}

    def sent(self, device: str) -> list[tuple[int, str | None]]:
        """(version, target) of every document published to the device, in order."""
        return [(doc.version, doc.target.path if doc.target else None) for doc in self.transport.documents(device)]


@pytest.fixture(scope="module")
def fleet_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("recovery-repo"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'controller.db'}")
    yield s
    s.close()


def fleet(store: Store, repo: Path, n: int) -> Fleet:
    return Fleet(store, repo, tuple(f"rc-{i}" for i in range(n)))


# -- (a) a lost `update.committed`: the retained `reported` says it -------------------------


def test_a_device_reporting_the_bundle_running_healthy_commits_without_an_event(
        store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 5)
    rollout_id = f.start()
    f.at(0)  # all five directed, version 1 each
    assert {d: f.sent(d) for d in f.devices} == {d: [(1, f"{NEW}.fgb")] for d in f.devices}
    f.at(1)
    f.report("rc-0", NEW, "ok", 1)  # the one that counts: its update.committed was lost
    f.report("rc-1", NEW, "degraded", 1)  # running it, but not healthy
    f.report("rc-2", NEW, "unknown", 1)  # still on trial
    f.report("rc-3", OLD, "ok", 1)  # took the document, still on the old bundle
    f.report("rc-4", NEW, "ok", 0)  # runs it, but has not acted on this rollout's document
    f.at(2)
    view = f.rollout(rollout_id)
    assert view.status == "running"
    assert {d: v.result for d, v in view.devices.items()} == {
        "rc-0": "committed", "rc-1": "pending", "rc-2": "pending", "rc-3": "pending", "rc-4": "pending"}
    assert view.devices["rc-0"].detail == f"reported running {NEW} (no update event came)"
    # The others follow as they report; the wave passes without an event from anyone.
    for d in ("rc-1", "rc-2", "rc-3", "rc-4"):
        f.report(d, NEW, "ok", 1)
    f.at(3)
    final = f.rollout(rollout_id)
    assert final.status == "completed"
    assert final.counts() == {"committed": 5}


def test_a_device_still_committing_is_not_counted_committed(store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 1)
    rollout_id = f.start()
    f.at(0)
    f.report("rc-0", NEW, "ok", 1, phase="committing")  # the new bundle runs; the commit is under way
    f.at(1)
    assert f.rollout(rollout_id).devices["rc-0"].result == "pending"
    f.report("rc-0", NEW, "ok", 1)
    f.at(2)
    assert f.rollout(rollout_id).devices["rc-0"].result == "committed"


def test_waves_advance_on_reported_alone_and_a_later_event_changes_nothing(store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 4)
    rollout_id = f.start(waves="1,100%")
    f.at(0)
    first, rest = f.rollout(rollout_id).plan
    assert [f.sent(d) for d in first] == [[(1, f"{NEW}.fgb")]] and all(f.sent(d) == [] for d in rest)
    f.at(1)
    f.report(first[0], NEW, "ok", 1)
    f.at(2)  # the canary counts as committed, and wave 2 is directed in the same tick
    view = f.rollout(rollout_id)
    assert view.current_wave == 1 and view.devices[first[0]].result == "committed"
    assert all(f.sent(d) == [(1, f"{NEW}.fgb")] for d in rest)
    # The lost event turns up after all (a broker that saved it after all): nothing moves back.
    f.event(first[0], "update.committed", director_version=1)
    for d in rest:
        f.report(d, NEW, "ok", 1)
    f.at(3)
    final = f.rollout(rollout_id)
    assert final.status == "completed" and final.counts() == {"committed": 4}
    assert final.devices[first[0]].detail == f"reported running {NEW} (no update event came)"


# -- (b) documents a broker lost are published again, the wait doubling -----------------------


def test_pending_devices_get_their_document_again_after_10_s_then_20_40_and_at_most_300(
        store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 3)
    rollout_id = f.start()
    f.at(0)
    f.report("rc-2", OLD, "ok", 1)  # rc-2 took its document (downloading): never republished
    # Due times: 10 s after it was directed, then each interval twice the last, capped.
    due, interval = [], REPUBLISH_AFTER_S
    t = 0.0
    while t < 1500:
        t += interval
        due.append(t)
        interval = min(REPUBLISH_MAX_S, interval * 2)
    assert due[:7] == [10, 30, 70, 150, 310, 610, 910]  # the cap (300 s) holds from the 6th on
    for i, when in enumerate(due, start=1):
        f.at(when - 0.5)
        assert len(f.sent("rc-0")) == i, f"republished before {when} s"
        f.at(when)
        assert len(f.sent("rc-0")) == i + 1, f"not republished at {when} s"
    # Each copy is the same document: same version, same target; only its signature is new.
    assert f.sent("rc-0") == f.sent("rc-1") == [(1, f"{NEW}.fgb")] * (len(due) + 1)
    assert f.sent("rc-2") == [(1, f"{NEW}.fgb")]
    assert f.rollout(rollout_id).status == "running"


def test_a_device_that_reports_its_document_is_not_republished_and_a_quiet_tick_is_silent(
        store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 2)
    f.start()
    f.at(0)
    for t in (1, 5, 9.9):  # the service ticks often; nothing is due yet
        f.at(t)
    assert len(f.transport.published) == 2
    f.at(10)
    assert [len(f.sent(d)) for d in f.devices] == [2, 2]
    f.report("rc-0", OLD, "ok", 1)  # the republished copy arrived
    f.at(30)
    assert [len(f.sent(d)) for d in f.devices] == [2, 3]
    f.report("rc-1", OLD, "ok", 1)
    f.at(70)
    f.at(1000)
    assert [len(f.sent(d)) for d in f.devices] == [2, 3]


# -- (c) a refusal names the document it refused -----------------------------------------------


@pytest.mark.parametrize("refused_version", [
    None,  # an agent before ADR 0074 names none: the refusal counts, as it always did
    2,  # the rollout's own document
    3,  # a later one (the rollout counts outcomes of its version or later)
])
def test_a_refusal_of_the_rollouts_document_fails_the_device_and_halts(
        store: Store, fleet_repo: Path, refused_version: int | None) -> None:
    f = fleet(store, fleet_repo, 2)
    f.publisher.direct(["rc-0"], target=f"{OLD}.fgb")  # an earlier document: version 1
    rollout_id = f.start()
    f.at(0)
    assert f.sent("rc-0") == [(1, f"{OLD}.fgb"), (2, f"{NEW}.fgb")]
    f.at(1)
    details = {} if refused_version is None else {"director_version": refused_version}
    f.event("rc-0", "update.refused", check="version", **details)
    f.at(2)
    view = f.rollout(rollout_id)
    assert view.status == "halted", view.counts()
    assert view.devices["rc-0"].result == "failed"
    assert view.devices["rc-0"].detail.startswith("update.refused")
    assert f.sent("rc-0")[-1] == (3, f"{OLD}.fgb")  # directed back


def test_a_refusal_of_an_older_document_leaves_the_device_pending_in_the_newer_rollout(
        store: Store, fleet_repo: Path) -> None:
    f = fleet(store, fleet_repo, 2)
    # rc-0 had documents 1 and 2 (say, a rollout before this one); the broker replays copy 1.
    f.publisher.direct(["rc-0"], target=f"{OLD}.fgb")
    f.publisher.direct(["rc-0"], target=f"{OLD}.fgb")
    rollout_id = f.start()
    f.at(0)
    assert f.sent("rc-0")[-1] == (3, f"{NEW}.fgb") and f.sent("rc-1") == [(1, f"{NEW}.fgb")]
    f.at(1)
    f.event("rc-0", "update.refused", check="version", director_version=1)
    f.event("rc-0", "update.refused", check="version", director_version=2)
    f.at(2)
    view = f.rollout(rollout_id)
    assert view.status == "running"
    assert view.devices["rc-0"].result == "pending"
    assert f.sent("rc-0")[-1] == (3, f"{NEW}.fgb")  # not directed back
    # Its own document then commits, as does the other device's: the rollout completes.
    f.event("rc-0", "update.committed", director_version=3)
    f.event("rc-1", "update.committed", director_version=1)
    f.at(3)
    final = f.rollout(rollout_id)
    assert final.status == "completed" and final.counts() == {"committed": 2}


def test_a_failure_the_agent_retries_is_not_an_outcome(store: Store, fleet_repo: Path) -> None:
    """A fetch that fails on a broker outage is retried by the agent (`update.failed`, final
    false): it must not fail the device, nor halt the rollout; the final one does."""
    f = fleet(store, fleet_repo, 2)
    rollout_id = f.start()
    f.at(0)
    f.event("rc-0", "update.failed", check="transport", attempt=1, final=False)
    f.at(1)
    view = f.rollout(rollout_id)
    assert view.status == "running" and view.devices["rc-0"].result == "pending"
    f.event("rc-0", "update.committed", director_version=1)
    f.at(2)
    assert f.rollout(rollout_id).devices["rc-0"].result == "committed"
    f.event("rc-1", "update.failed", check="transport", attempt=4, final=True)
    f.at(3)
    final = f.rollout(rollout_id)
    assert final.devices["rc-1"].result == "failed" and final.status == "halted"
