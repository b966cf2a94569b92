"""`fleetgen device revoke` takes the device out of the fleet (issue 13, item 1): out of its
explicit groups and of rule-matched ones (board, tag, label), out of unfinished rollouts
(recorded as revoked, counted neither as committed nor failed), and no director document is
signed for it again. Real CA, real SQLite, real director signatures; the rollout service
runs on an injected clock and devices answer through the store, as the ingest writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.protocol import Event, Reported, Status, decode_as
from agent.protocol.messages import DesiredState, SignedEnvelope
from controller.cli import main as fleetgen
from controller.director import Director
from controller.enroll import Enrollment
from controller.fleet.rollout import RolloutPolicy, parse_waves
from controller.pki import CertificateAuthority
from controller.services.director import DirectorPublisher
from controller.services.rollouts import RolloutService, start_rollout
from controller.store import Ingested, Store
from controller.store.views import GroupRule
from controller.tuf.repository import Repository
from tests.controller.fleetworld import make_repo
from tests.enroll.conftest import Clock, make_csr

DEVICES = ("rv-0", "rv-1", "rv-2", "rv-3", "rv-4")


class Recorder:
    """The MQTT transport as the director publisher sees it: what it published, per device."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def documents(self, device: str) -> list[DesiredState]:
        return [decode_as(DesiredState, decode_as(SignedEnvelope, p).payload)
                for t, p in self.published if t == f"fleetgen/v1/dev/{device}/desired"]


@pytest.fixture(scope="module")
def fleet_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("revoke-repo"))


def register(store: Store, now: float) -> None:
    batch = []
    for i, d in enumerate(DEVICES):
        batch.append(Ingested(d, now, Status(state="online", ts=now, agent_version="1")))
        batch.append(Ingested(d, now, Reported(device_id=d, agent_version="1", board="raspberry-pi-5", ts=now,
                                               active_bundle="tiny-1.0.0", slot="a", health="ok",
                                               labels={"site": "north" if i % 2 else "south"})))
    store.apply(batch)


def enrolled(enrollment: Enrollment, device: str) -> None:
    token = enrollment.add_device(device).token
    enrollment.enroll(str(token), make_csr(device)[1])


def test_a_revoked_device_leaves_groups_rollouts_and_the_director(
        store: Store, ca: CertificateAuthority, fleet_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    register(store, clock.now)
    enrollment = Enrollment(store, ca, clock=clock)
    for d in DEVICES:
        enrolled(enrollment, d)
    groups = store.repos.groups
    for name, rules in (("board", [GroupRule("board", "raspberry-pi-5")]),
                        ("named", [GroupRule("device", "rv-0"), GroupRule("device", "rv-3")]),
                        ("south", [GroupRule("label", "site=south")])):
        groups.create(name)
        groups.add(name, rules)
    store.repos.devices.tag("rv-3", add=["kiosk"])
    groups.create("tagged")
    groups.add("tagged", [GroupRule("tag", "kiosk")])

    transport = Recorder()
    publisher = DirectorPublisher(Director(Repository(fleet_repo)), store.repos.desired, transport, clock=clock)
    service = RolloutService(store.repos.rollouts, publisher, clock=clock)
    policy = RolloutPolicy(parse_waves("1,100%"), 0.0, 600.0)
    view = start_rollout(store, fleet_repo, "tiny-2.0.0.fgb", "board", policy, "1,100%")
    assert view.plan == (("rv-0",), ("rv-1", "rv-2", "rv-3", "rv-4"))
    service.tick()  # wave 1: rv-0 is directed
    assert [d.version for d in transport.documents("rv-0")] == [1]

    # rv-0 is pending in the running wave, rv-3 waits in the next one; both are revoked.
    clock.now += 1
    done_0 = enrollment.revoke("rv-0")
    done_3 = enrollment.revoke("rv-3")
    assert done_0.fleet.groups == ("named",) and done_0.fleet.rollouts == (view.id,)
    assert done_3.fleet.groups == ("named",) and done_3.fleet.rollouts == (view.id,)
    members = {g.name: g.members for g in groups.list()}
    assert members == {"board": ("rv-1", "rv-2", "rv-4"), "named": (), "south": ("rv-2", "rv-4"), "tagged": ()}
    assert {r.value for r in groups.get("named").rules} == set()  # the explicit memberships are gone

    # The rollout goes on without them: the first wave's gate counts nobody, the second
    # wave is directed to the three still in it, and they commit.
    clock.now += 1
    service.tick()
    current = store.repos.rollouts.get(view.id)
    assert current.current_wave == 1
    assert {d for d in DEVICES if transport.documents(d)} == {"rv-0", "rv-1", "rv-2", "rv-4"}
    clock.now += 1
    store.apply([Ingested(d, clock.now, Event(device_id=d, seq=1, ts=clock.now, kind="update.committed",
                                              details={"director_version": 1})) for d in ("rv-1", "rv-2", "rv-4")])
    service.tick()
    final = store.repos.rollouts.get(view.id)
    assert final.status == "completed"
    assert final.counts() == {"committed": 3, "revoked": 2}
    assert final.devices["rv-0"].detail.endswith("device revoked (was pending)")
    assert final.devices["rv-3"].detail == "device revoked (was waiting)"

    capsys.readouterr()
    assert fleetgen(["rollout", "status", str(view.id), "--db", store.engine.url.render_as_string()]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-1] == "REVOKED" and [line.split()[-1] for line in lines[2:]] == ["1", "1"]

    # Whoever asks (power allocator, web API, a rollback), the director signs nothing for them.
    assert publisher.direct(["rv-0", "rv-1"], target="tiny-1.0.0.fgb") == {"rv-1": 2}
    assert len(transport.documents("rv-0")) == 1 and transport.documents("rv-3") == []
    # A rollout to a group whose only member is revoked is refused as empty.
    with pytest.raises(Exception, match="has no devices"):
        start_rollout(store, fleet_repo, "tiny-2.0.0.fgb", "tagged", policy, "1,100%")


def test_an_aborted_rollout_directs_no_revoked_device_back(
        store: Store, ca: CertificateAuthority, fleet_repo: Path) -> None:
    clock = Clock()
    register(store, clock.now)
    enrollment = Enrollment(store, ca, clock=clock)
    enrolled(enrollment, "rv-1")
    store.repos.groups.create("all")
    store.repos.groups.add("all", [GroupRule("board", "raspberry-pi-5")])
    transport = Recorder()
    publisher = DirectorPublisher(Director(Repository(fleet_repo)), store.repos.desired, transport, clock=clock)
    service = RolloutService(store.repos.rollouts, publisher, clock=clock)
    view = start_rollout(store, fleet_repo, "tiny-2.0.0.fgb", "all", RolloutPolicy(parse_waves("100%"), 0.0, 600.0),
                         "100%")
    service.tick()  # all five directed
    enrollment.revoke("rv-1")
    store.repos.rollouts.request(view.id, "abort")
    service.tick()
    final = store.repos.rollouts.get(view.id)
    assert final.status == "aborted"
    assert final.devices["rv-1"].result == "revoked"
    assert [d.target.path if d.target else None for d in transport.documents("rv-1")] == ["tiny-2.0.0.fgb"]
    assert all(len(transport.documents(d)) == 2 for d in DEVICES if d != "rv-1")  # directed back


def test_enrolling_again_brings_a_revoked_device_back(store: Store, ca: CertificateAuthority) -> None:
    register(store, 1_800_000_000.0)
    enrollment = Enrollment(store, ca)
    enrolled(enrollment, "rv-2")
    store.repos.groups.create("g")
    store.repos.groups.add("g", [GroupRule("label", "site=south")])
    enrollment.revoke("rv-2")
    assert "rv-2" not in store.repos.groups.get("g").members
    enrolled(enrollment, "rv-2")
    assert "rv-2" in store.repos.groups.get("g").members
    assert store.repos.devices.detail("rv-2").revoked is None


def test_a_token_for_a_group_joins_it_on_enrollment(store: Store, ca: CertificateAuthority) -> None:
    enrollment = Enrollment(store, ca)
    token = enrollment.add_device("kiosk-9", group="lobby").token
    enrollment.enroll(str(token), make_csr("kiosk-9")[1])
    assert store.repos.groups.get("lobby").members == ("kiosk-9",)


def test_cli_revoke_says_what_the_device_left_and_ls_shows_it(
        tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    store = Store(db)
    try:
        register(store, 1_800_000_000.0)
        enrolled(Enrollment(store, CertificateAuthority.open(pki)), "rv-4")
        store.repos.groups.create("named")
        store.repos.groups.add("named", [GroupRule("device", "rv-4")])
    finally:
        store.close()
    capsys.readouterr()
    assert fleetgen(["device", "revoke", "rv-4", "--db", db, "--pki", str(pki)]) == 0
    out = capsys.readouterr().out
    assert "revoked 1 certificate(s) of rv-4" in out
    assert "rv-4: out of every group (explicitly in: named) and of unfinished rollouts (none)" in out
    assert fleetgen(["device", "ls", "--db", db]) == 0
    rows = {line.split()[0]: line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["rv-4"] == "revoked" and rows["rv-1"] == "online"
