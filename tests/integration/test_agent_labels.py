"""`[labels]` in agent.toml reach the controller in `reported`, and its groups select real
agents by them (controller/store/groups.py): an agent daemon and `fleetgen serve` as processes
over a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.demo.brokers import Mosquitto
from controller.demo.fleetproc import DeviceSpec, FleetProcesses
from controller.store import Store
from controller.store.views import GroupRule


@pytest.mark.timeout(120)
def test_groups_select_real_agents_by_the_labels_in_their_config(mosquitto: Mosquitto, tmp_path: Path) -> None:
    fleet = FleetProcesses(tmp_path / "fleet", mosquitto.url)
    fleet.start_controller()
    try:
        for device_id, site in (("dev-lis", "lisbon"), ("dev-por", "porto")):
            config = fleet.agent_config(DeviceSpec(device_id))
            with config.open("a") as f:
                f.write(f'[labels]\nsite = "{site}"\nrack = 4\n')
            fleet.agents[device_id] = fleet._spawn("agent", ["run", "--config", str(config)], f"{device_id}.log")
        fleet.wait_for(lambda ds: {d.id for d in ds if d.online} == {"dev-lis", "dev-por"}, timeout=60)
        store = Store(fleet.db_url)
        try:
            groups = store.repos.groups
            groups.create("lisbon")
            groups.add("lisbon", [GroupRule("label", "site=lisbon")])
            groups.create("rack-4")
            groups.add("rack-4", [GroupRule("label", "rack=4")])
            # `reported` follows `status` on connect: wait for both devices' to be in
            deadline = time.monotonic() + 30
            while len(groups.get("rack-4").members) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert sorted(groups.get("rack-4").members) == ["dev-lis", "dev-por"]
            assert groups.get("lisbon").members == ("dev-lis",)
        finally:
            store.close()
    finally:
        fleet.stop()
