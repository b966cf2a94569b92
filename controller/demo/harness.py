"""What the demo story runs on: typed commands as child processes, the controller's REST
API, waiting on an outcome, and the summary of each step's result."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import FleetgenError
from controller.demo.fleetproc import FleetProcesses
from controller.demo.progress import Progress

# Embedded default for the demo only: real offline keys get a passphrase you keep elsewhere.
DEMO_PASSPHRASE = "fleetgen-demo"


class DemoError(FleetgenError):
    """A step of the demo failed; the message names the step and its output."""


@dataclass
class Summary:
    """Each step's outcome, for the terminal's last lines and for WORKDIR/summary.json."""

    broker: str = ""
    tls: bool = False
    dashboard: str = ""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    rollouts: dict[str, dict[str, Any]] = field(default_factory=dict)
    power: dict[str, Any] = field(default_factory=dict)
    offline: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")


class Commands:
    """Runs `fleetgen …` / `fleetgen-agent …` as child processes, shown as typed."""

    def __init__(self, ui: Progress, workdir: Path) -> None:
        self.ui = ui
        self.workdir = workdir
        self.env = {**os.environ, "FLEETGEN_PASSPHRASE": DEMO_PASSPHRASE}

    def rel(self, path: Path | str) -> str:
        """A path under the work directory as seen from where the demo was started."""
        return self.show("", (str(path),)).strip()

    def show(self, tool: str, args: tuple[str, ...]) -> str:
        # Paths under the work directory read relative to where the demo was started.
        text = f"{tool} {shlex.join(args)}"
        with contextlib.suppress(ValueError):
            text = text.replace(str(self.workdir), str(self.workdir.relative_to(Path.cwd())))
        return text

    def run(self, tool: str, *args: str, quiet: bool = False, env: dict[str, str] | None = None) -> str:
        module = "controller" if tool == "fleetgen" else "agent"
        if not quiet:
            self.ui.command(self.show(tool, args))
        proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=300, check=False)
        if proc.returncode != 0:
            raise DemoError(f"`{self.show(tool, args)}` failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc.stdout


class Web:
    """The controller's REST API (the dashboard's own), read without a token on localhost."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return json.loads(resp.read())

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.get("/api/v1/devices?limit=100")["devices"]}

    def events(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/api/v1/devices/{device_id}/events")["events"])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, fleet: FleetProcesses | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if fleet is not None:
            dead = [name for name, alive in fleet.alive().items() if not alive]
            if dead:
                tail = "\n".join(fleet.log_text(dead[0]).splitlines()[-8:])
                raise DemoError(f"{dead[0]} exited while waiting for {what}; its log ends:\n{tail}")
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.2)
