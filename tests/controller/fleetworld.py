"""A fleet for controller tests: a real image repository with two published bundles, the
controller (`fleetgen serve`) and simulated devices (`fleetgen simulate`) as processes on a
real Mosquitto, and the CLI run in-process."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agent.update.bundle import build_bundle
from controller.cli import main as fleetgen
from controller.store import Store
from controller.tuf.repository import RepoConfig, Repository
from tests.trust.models import make_model_dir

T = TypeVar("T")


def make_repo(tmp: Path, versions: tuple[str, ...] = ("1.0.0", "2.0.0")) -> Path:
    repo = Repository.create(tmp / "repo", config=RepoConfig())
    for version in versions:
        model = make_model_dir(tmp / "models", version=version, size=2048)
        out = tmp / "built" / f"tiny-{version}.fgb"
        out.parent.mkdir(exist_ok=True)
        build_bundle(model, out)
        repo.publish(out)
    return repo.path


def wait_until(what: str, probe: Callable[[], T | None], timeout: float, *,
               alive: Callable[[], None] = lambda: None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.1)


@dataclass
class FleetWorld:
    tmp: Path
    broker_url: str
    repo: Path
    db_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.db_url = self.db_url or f"sqlite:///{self.tmp / 'controller.db'}"
        (self.tmp / "logs").mkdir(exist_ok=True)

    # -- processes ----------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.tmp / "logs" / f"{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "controller", *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
        self.procs[name] = proc
        return proc

    def controller_config(self, name: str, db_url: str | None = None) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text("\n".join([
            f'state_dir = "{self.tmp / name}"',
            f'database_url = "{db_url or self.db_url}"',
            f'repository = "{self.repo}"',
            "rollout_tick_s = 0.2",
            "power_interval_s = 0.5",
            "[mqtt]",
            f'url = "{self.broker_url}"',
            'protocol = "5"',
            f'client_id = "fleetgen-{name}"',
            "keepalive = 5",
            "reconnect_min_s = 0.2",
            "reconnect_max_s = 2.0",
            "",
        ]))
        return path

    def start_controller(self, name: str = "controller", db_url: str | None = None) -> None:
        self._spawn(name, ["serve", "--config", str(self.controller_config(name, db_url))])

    def start_fleet(self, devices: int, *extra: str, name: str = "simulate") -> None:
        self._spawn(name, ["simulate", "--devices", str(devices), "--broker", self.broker_url, "--repo",
                           str(self.repo), "--bundle", "tiny-1.0.0", "--processes", "2", *extra])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the process and everything it started (the simulator's workers)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = "\n".join(self.log(name).splitlines()[-15:])
                raise AssertionError(f"{name} exited ({proc.returncode}); its log ends:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    # -- the store and the CLI -------------------------------------------------------------

    def store(self) -> Store:
        return Store(self.db_url)

    def query(self, fn: Callable[[Store], T]) -> T:
        store = self.store()
        try:
            return fn(store)
        finally:
            store.close()

    def online(self) -> set[str]:
        return self.query(lambda s: {d.id for d in s.devices() if d.online})

    def wait_online(self, n: int, timeout: float = 60) -> None:
        """Until n devices are online with their `reported` in: groups match on its board, so
        a rollout started before it would miss the device (status and reported are separate
        messages)."""
        def ready() -> int:
            return self.query(lambda s: sum(1 for d in s.devices() if d.online and d.board))

        wait_until(f"{n} devices online", lambda: ready() >= n, timeout, alive=self.check_alive)

    def cli(self, *argv: str, db: bool = True) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        args = [*argv, "--db", self.db_url] if db else list(argv)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = fleetgen(args)
            except SystemExit as e:  # argparse usage errors
                rc = int(e.code or 0)
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str) -> str:
        rc, out, err = self.cli(*argv)
        assert rc == 0, f"fleetgen {' '.join(argv)} -> {rc}: {err}"
        return out

    def rollout(self, rollout_id: int) -> Any:
        return self.query(lambda s: s.repos.rollouts.get(rollout_id))

    def wait_rollout(self, rollout_id: int, status: str, timeout: float = 90) -> Any:
        return wait_until(f"rollout {rollout_id} {status}",
                          lambda: (v if (v := self.rollout(rollout_id)).status == status else None),
                          timeout, alive=self.check_alive)
