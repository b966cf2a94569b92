"""The demo story: a broker, the controller and three devices on different boards; a model
signed, published and pushed to every device over MQTT; then the broker goes away and a
device generates text offline from the model it installed.

Each step runs the same commands a person would type (`fleetgen …`, `fleetgen-agent …`),
as child processes, and reports through `say` so the CLI shows progress.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import FleetgenError
from agent.manifest import load_manifest
from controller.cli.fleet import format_table
from controller.demo.brokers import start_broker
from controller.demo.fleetproc import DeviceSpec, FleetProcesses

_REPO = Path(__file__).resolve().parents[2]
_FIXTURES = _REPO / "firmware" / "testdata"
DEMO_MODEL = _REPO / "models" / "text" / "austen-3m-int8"
DEMO_PROMPT = "Tell me a story about summer"
# Embedded default for the demo only: real offline keys get a passphrase you keep elsewhere.
DEMO_PASSPHRASE = "fleetgen-demo"


class DemoError(FleetgenError):
    """A step of the demo failed; the message names the step and its output."""


def demo_devices() -> list[DeviceSpec]:
    """Three devices; the non-x86 ones read board fixture trees laid out as on the real boards."""
    def board(name: str) -> DeviceSpec:
        root = _FIXTURES / name
        return DeviceSpec(f"demo-{name}", board_profile="auto" if root.is_dir() else name,
                          board_root=str(root) if root.is_dir() else "/")

    return [DeviceSpec("demo-cpu"), board("jetson-orin-nano"), board("kria-kv260")]


@dataclass
class DemoOptions:
    workdir: Path
    broker: str = "auto"
    once: bool = False
    timeout: float = 60.0
    model: Path = DEMO_MODEL


class _Steps:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.env = {**os.environ, "FLEETGEN_PASSPHRASE": DEMO_PASSPHRASE}

    def run(self, tool: str, *args: str, stream: bool = False) -> str:
        module = "controller" if tool == "fleetgen" else "agent"
        self.say(f"$ {tool} {shlex.join(args)}")
        proc = subprocess.run([sys.executable, "-m", module, *args],
                              stdout=None if stream else subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=self.env, timeout=300, check=False)
        if proc.returncode != 0:
            raise DemoError(f"`{tool} {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        return proc.stdout or ""


def _fleet_story(opts: DemoOptions, steps: _Steps, fleet: FleetProcesses, devices: list[DeviceSpec], repo: Path,
                 bundle: Path, label: str, broker_url: str, say: Callable[[str], None]) -> None:
    say("\n3. controller and three devices, each provisioned with the repository's root")
    fleet.start_controller()
    for spec in devices:
        steps.run("fleetgen-agent", "provision", "--root", str(repo / "metadata" / "1.root.json"),
                  "--state-dir", str(fleet.workdir / "agents" / spec.device_id))
        fleet.start_agent(spec)
    start = time.monotonic()
    online = fleet.wait_for(lambda ds: sum(d.online for d in ds) >= len(devices), opts.timeout)
    say(f"  all online after {time.monotonic() - start:.1f}s\n")
    say(format_table(online, time.time()))

    say("\n4. push the signed model: the director names it for each device")
    for spec in devices:
        steps.run("fleetgen", "director", "set", spec.device_id, "--repo", str(repo),
                  "--target", bundle.name, "--broker", broker_url)
    start = time.monotonic()
    done = fleet.wait_for(lambda ds: sum(d.active_bundle == label for d in ds) >= len(devices), opts.timeout)
    say(f"  verified (TUF + director), downloaded over MQTT and installed on all devices "
        f"in {time.monotonic() - start:.1f}s\n")
    say(format_table(done, time.time()))


def run_demo(opts: DemoOptions, say: Callable[[str], None], wait_forever: Callable[[], None]) -> int:
    if opts.workdir.exists():
        shutil.rmtree(opts.workdir)
    opts.workdir.mkdir(parents=True)
    steps = _Steps(say)
    repo = opts.workdir / "repo"
    devices = demo_devices()

    say("1. signing keys, image repository and a signed model bundle")
    steps.run("fleetgen", "keys", "init", "--repo", str(repo))
    manifest = load_manifest(opts.model)
    label = f"{manifest.name}-{manifest.version}"
    bundle = opts.workdir / f"{label}.fgb"
    steps.run("fleetgen", "bundle", "build", str(opts.model), "-o", str(bundle))
    say("  " + steps.run("fleetgen", "bundle", "inspect", str(bundle)).splitlines()[0])
    steps.run("fleetgen", "bundle", "publish", str(bundle), "--repo", str(repo))

    say(f"\n2. broker ({opts.broker})")
    broker = start_broker(opts.broker, opts.workdir / "broker")
    try:
        say(f"  {type(broker).__name__} on {broker.url} (MQTT {broker.protocol})")
        fleet = FleetProcesses(opts.workdir, broker.url, protocol=broker.protocol, repository=repo)
        try:
            _fleet_story(opts, steps, fleet, devices, repo, bundle, label, broker.url, say)
            if not opts.once:
                say(f"\nfleet running (try `fleetgen fleet ls --db {fleet.db_url}`; logs in "
                    f"{opts.workdir / 'logs'}).\nCtrl-C to go on: the broker then goes away.")
                with contextlib.suppress(KeyboardInterrupt):
                    wait_forever()
        finally:
            fleet.stop()
        say("\n5. the broker goes away; a device generates offline from its installed model")
    finally:
        broker.stop()
    state = fleet.workdir / "agents" / devices[0].device_id
    steps.run("fleetgen-agent", "generate", "--model", str(state / "current"), "--seed", "7",
              "--max-tokens", "48", DEMO_PROMPT, stream=True)
    say("\ndone.")
    return 0
