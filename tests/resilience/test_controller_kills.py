"""The controller SIGKILLed during a rollout and during ingestion, on SQLite and on
PostgreSQL: simulated devices (the real protocol) send telemetry and take the rollout; at
seeded instants the controller dies and is started again (systemd's Restart=). The rollout
ends completed, and every sample the simulator sent is stored once."""

from __future__ import annotations

import json
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from agent.protocol import Channel, Status, device_topic, encode
from controller.demo.brokers import Mosquitto
from controller.store import Store, normalise_url
from controller.store.core import TelemetryRow
from tests.controller.fleetworld import FleetWorld, make_repo, wait_until
from tests.controller.test_store import PG_URL, _pg_available
from tests.integration.test_fleet_mqtt import publish_once
from tests.resilience.report import ScenarioResult, Sized

DEVICES = 20


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("postgres-2replicas", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto) -> Iterator[FleetWorld]:
    if request.param == "sqlite":
        w = FleetWorld(tmp_path, mosquitto.url, make_repo(tmp_path))
        yield w
        w.stop()
        return
    if not _pg_available():
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    schema = f"r_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(PG_URL))
    with admin.begin() as c:
        c.execute(text(f"create schema {schema}"))
    url = normalise_url(PG_URL) + f"?options=-csearch_path%3D{schema}"
    w = FleetWorld(tmp_path, mosquitto.url, make_repo(tmp_path), db_url=url)
    yield w
    w.stop()
    with admin.begin() as c:
        c.execute(text(f"drop schema {schema} cascade"))
    admin.dispose()


def stored_samples(store: Store) -> int:
    with store.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(TelemetryRow)).scalar() or 0)


@pytest.mark.resilience
@pytest.mark.timeout(600)
def test_controller_sigkilled_during_rollout_and_ingest(world: FleetWorld, scenario: ScenarioResult, size: Sized,
                                                         seed: int, request: pytest.FixtureRequest) -> None:
    """With two replicas (PostgreSQL) the one that leads is the one killed each time."""
    rng = random.Random(seed)
    kills = size(1, 3)
    names = ["replica-a", "replica-b"] if request.node.callspec.params["world"].endswith("2replicas") \
        else ["controller"]
    since: dict[str, int] = {}  # where each replica's current process starts in its (appended) log

    def start(name: str) -> None:
        since[name] = len(world.log(name))
        world.start_controller(name)

    def leads(name: str) -> bool:
        return name in world.procs and "now runs rollouts" in world.log(name)[since[name]:]

    for name in names:
        start(name)
        wait_until(f"{name} connected", lambda n=name: "connected to" in world.log(n)[since[n]:], 60,
                   alive=world.check_alive)
    # The fleet starts once the controller's subscriptions are in force (a retained status
    # reaches it only through them): what devices send before it has a session is not ours
    # to count (measured: the first 2-4 samples of each device).
    probe = encode(Status(state="online", ts=time.time(), agent_version="probe"))
    publish_once(int(world.broker_url.rsplit(":", 1)[1]), device_topic("sub-probe", Channel.STATUS), probe,
                 retain=True)
    wait_until("controller subscribed", lambda: "sub-probe" in world.online(), 60, alive=world.check_alive)
    stats = world.tmp / "sim-stats.json"
    duration = 900  # ended by SIGTERM once the rollout is done (it writes its stats then)
    world.start_fleet(DEVICES, "--telemetry-interval", "0.5", "--duration", str(duration), "--stats", str(stats),
                      "--seed", str(seed))
    # The group is made by board: wait_online waits for every device's `reported` (its
    # board) too; the status-only probe has none, so it is not counted.
    world.wait_online(DEVICES)
    world.ok("group", "create", "lab")
    world.ok("group", "add", "lab", "--board", "jetson-orin-nano", "--board", "raspberry-pi-5",
             "--board", "kria-kv260", "--board", "generic-x86_64")
    rollout_id = int(json.loads(world.ok("rollout", "start", "tiny-2.0.0.fgb", "--to", "lab", "--repo",
                                         str(world.repo), "--waves", "1,10%,50%,100%", "--wave-timeout", "90s",
                                         "--json"))["rollout"]["id"])
    for i in range(kills):
        # Seeded instants inside the rollout: after wave i started, plus up to 1.5 s.
        wait_until(f"wave {i + 1} started", lambda i=i: world.rollout(rollout_id).current_wave >= min(i, 3)
                   or world.rollout(rollout_id).status != "running", 90, alive=world.check_alive)
        time.sleep(rng.uniform(0, 1.5))
        victim = names[0] if len(names) == 1 else wait_until(
            "a leader", lambda: next((n for n in names if leads(n)), None), 60, alive=world.check_alive)
        world.kill(victim, signal.SIGKILL)
        scenario.faults += 1
        scenario.runs += 1
        t0 = time.monotonic()
        others = [n for n in names if n != victim]
        if others:  # another replica takes the lead: that is the recovery
            wait_until("another leader", lambda o=others: any(leads(n) for n in o), 60, alive=world.check_alive)
            scenario.recovered(time.monotonic() - t0)
        start(victim)  # systemd's Restart=: the same identity takes its broker session back
        if not others:
            before = world.query(stored_samples)
            wait_until("ingesting again", lambda b=before: world.query(stored_samples) > b, 60,
                       alive=world.check_alive)
            scenario.recovered(time.monotonic() - t0)
    try:
        view = world.wait_rollout(rollout_id, "completed", timeout=180)
        scenario.rollouts_done += 1
        assert view.counts() == {"committed": DEVICES}
    except TimeoutError:
        view = world.rollout(rollout_id)
        status = view.status
        scenario.note(f"rollout {status}: {view.reason}; results {view.counts()}; logs in {world.tmp / 'logs'}")
        if status == "halted":
            scenario.rollouts_halted += 1
        else:
            scenario.rollouts_stuck += 1
        raise
    world.kill("simulate", signal.SIGTERM)
    sent = json.loads(stats.read_text())
    scenario.samples_sent = int(sent["samples_sent"])
    scenario.events_sent = int(sent["events_sent"])
    try:
        wait_until(f"{scenario.samples_sent} samples stored",
                   lambda: world.query(stored_samples) >= scenario.samples_sent, 60, alive=world.check_alive)
    finally:
        scenario.samples_stored = world.query(stored_samples)
        scenario.events_stored = world.query(lambda s: len(s.events(limit=1_000_000)))
        scenario.samples_duplicated = max(0, scenario.samples_stored - scenario.samples_sent)
    scenario.crashes += sum(world.log(n).count("Traceback") for n in names)
    assert scenario.samples_lost == 0 and scenario.samples_duplicated == 0, scenario
    assert scenario.crashes == 0
