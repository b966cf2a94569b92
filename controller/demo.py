"""The demo story: a broker, the controller and three devices on different boards.

Later capabilities extend the story (a signed model pushed, offline generation, the
dashboard); each step reports through `say` so the CLI shows progress.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controller.brokers import start_broker
from controller.cli.fleet import format_table
from controller.fleetproc import DeviceSpec, FleetProcesses

_REPO = Path(__file__).resolve().parent.parent
_FIXTURES = _REPO / "firmware" / "testdata"


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


def run_demo(opts: DemoOptions, say: Callable[[str], None], wait_forever: Callable[[], None]) -> int:
    if opts.workdir.exists():
        shutil.rmtree(opts.workdir)
    opts.workdir.mkdir(parents=True)
    say(f"starting broker ({opts.broker})...")
    broker = start_broker(opts.broker, opts.workdir / "broker")
    say(f"  {type(broker).__name__} on {broker.url} (MQTT {broker.protocol})")
    fleet = FleetProcesses(opts.workdir, broker.url, protocol=broker.protocol)
    devices = demo_devices()
    try:
        say("starting controller...")
        fleet.start_controller()
        for spec in devices:
            say(f"starting agent {spec.device_id} (board root {spec.board_root})...")
            fleet.start_agent(spec)
        say(f"waiting for {len(devices)} devices to come online...")
        start = time.monotonic()
        online = fleet.wait_for(lambda ds: sum(d.online for d in ds) >= len(devices), opts.timeout)
        say(f"  all online after {time.monotonic() - start:.1f}s\n")
        say(format_table(online, time.time()))
        if not opts.once:
            say("\nfleet running; Ctrl-C to stop (logs in %s)" % (opts.workdir / "logs"))
            wait_forever()
        return 0
    finally:
        say("stopping...")
        fleet.stop()
        broker.stop()
