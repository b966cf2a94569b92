"""sd_notify: READY once the API listens, WATCHDOG at half the interval while healthy,
STATUS, STOPPING on SIGTERM; a stalled API loop stops the pings."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.notify import Notifier
from tests.api.conftest import TEXT, Api
from tests.api.processes import BIN, FakeSystemd, env_for, read_until


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    s = FakeSystemd()
    yield s
    s.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_at_half_the_interval_only_while_healthy(systemd: FakeSystemd) -> None:
    clock = Clock()
    n = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"}, clock=clock)
    assert n.ping_interval_s == 1.0
    n.ready("starting")
    assert systemd.receive() == "READY=1\nSTATUS=starting"
    n.tick(True)
    assert systemd.receive() == "WATCHDOG=1"
    clock.now += 0.9
    n.tick(True)  # too early: nothing
    clock.now += 0.2
    n.tick(False, "API event loop stalled")  # due, but unhealthy: no ping, one STATUS saying why
    n.tick(False, "API event loop stalled")
    assert systemd.receive() == "STATUS=unhealthy: API event loop stalled"
    n.tick(True)
    assert systemd.receive() == "WATCHDOG=1"  # nothing came in between
    n.stopping()
    assert systemd.receive() == "STOPPING=1\nSTATUS=stopping"
    assert list(n.sent) == ["READY=1\nSTATUS=starting", "WATCHDOG=1", "STATUS=unhealthy: API event loop stalled",
                            "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]


def test_no_watchdog_for_another_pid_and_nothing_without_systemd(systemd: FakeSystemd) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None
    quiet = Notifier({})
    quiet.ready()
    quiet.tick(True)
    assert not quiet.enabled and list(quiet.sent) == []


def test_abstract_socket_address() -> None:
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"fleetgen-test-{time.monotonic_ns()}"
    s.bind("\0" + name)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        s.settimeout(10)
        assert s.recv(100) == b"READY=1"
    finally:
        s.close()


def test_a_stalled_api_loop_stops_the_pings(fresh_api: Any, systemd: FakeSystemd) -> None:
    api: Api = fresh_api()
    n = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "100000"})
    stop = threading.Event()

    def main_loop() -> None:  # what serve/run do: tick from the main loop with the API's health
        while not stop.wait(0.01):
            n.tick(api.service.healthy(max_age_s=0.5), "API event loop stalled")

    n.ready()
    loop = threading.Thread(target=main_loop)
    loop.start()
    try:
        systemd.wait_for("WATCHDOG=1")
        systemd.wait_for("WATCHDOG=1")
        stalled, resume = threading.Event(), threading.Event()

        def stall() -> None:
            stalled.set()
            resume.wait(30)

        api.service.call_in_loop(stall)
        assert stalled.wait(10)
        systemd.wait_for("STATUS=unhealthy")
        after = list(n.sent)
        assert "WATCHDOG=1" not in after[after.index("STATUS=unhealthy: API event loop stalled"):]
        resume.set()
        systemd.wait_for("WATCHDOG=1")  # healthy again: the pings come back
    finally:
        resume.set()
        stop.set()
        loop.join(10)


def test_serve_process_notifies_ready_watchdog_stopping(systemd: FakeSystemd, tmp_path: Path) -> None:
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(TEXT), "--listen", "127.0.0.1:0"],
                            env=env_for(systemd, watchdog_usec=200_000), stderr=subprocess.PIPE, text=True)
    try:
        read_until(proc, "listening on")
        ready = systemd.wait_for("READY=1")
        assert ready.splitlines()[0] == "READY=1"
        systemd.wait_for("STATUS=serving")
        systemd.wait_for("WATCHDOG=1")
        systemd.wait_for("WATCHDOG=1")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1")
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    kinds = [m.splitlines()[0].split("=")[0] for m in systemd.messages]
    assert kinds[0] == "READY"
    assert kinds[-1] == "STOPPING"
    assert "WATCHDOG" in kinds[1:-1]
    # READY comes before any WATCHDOG, STOPPING after all of them
    assert kinds.index("READY") < kinds.index("WATCHDOG") and "WATCHDOG" not in kinds[kinds.index("STOPPING"):]
