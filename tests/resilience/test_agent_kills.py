"""The agent SIGKILLed at seeded random instants: during installs of real bundles (the
update worker as a process, tests/resilience/update_harness.py), and while its local
API answers generation requests (`fleetgen-agent serve`)."""

from __future__ import annotations

import http.client
import json
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.manifest import ManifestError, load_manifest, verify_files
from controller.demo.brokers import free_port
from tests.api.conftest import TEXT, TEXT_ID
from tests.api.processes import BIN, env_for, read_until
from tests.resilience.report import ScenarioResult, Sized
from tests.resilience.update_harness import Fleet1, labels


def whole(fleet: Fleet1) -> str | None:
    """What the device would boot now: the label of a whole bundle, or None (broken)."""
    current = fleet.current()
    if current is None or current.rsplit("-", 1)[0] not in labels(fleet):
        return None
    try:
        verify_files(fleet.world.state / "current", load_manifest(fleet.world.state / "current"))
    except (ManifestError, OSError):
        return None
    return current


@pytest.mark.resilience
@pytest.mark.timeout(900)
def test_agent_sigkilled_during_installs(tmp_path: Path, scenario: ScenarioResult, size: Sized, seed: int) -> None:
    fleet = Fleet1(tmp_path)
    target = fleet.next_desired()
    t0 = time.monotonic()
    fleet.finish()  # one whole install: the window the kills fall in
    took = time.monotonic() - t0
    fleet.check_settled(target)
    rng = random.Random(seed)
    for _ in range(size(2, 8)):
        before = fleet.current()
        target = fleet.next_desired()
        proc = fleet.start()
        time.sleep(rng.uniform(0, took))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        scenario.faults += 1
        scenario.runs += 1
        at_kill = whole(fleet)
        if at_kill is None:
            scenario.installs_broken += 1
        elif at_kill == before:
            scenario.installs_old += 1
        else:
            scenario.installs_new += 1
        t1 = time.monotonic()
        fleet.finish()  # the restart finishes or undoes the step, then installs the target
        scenario.recovered(time.monotonic() - t1)
        fleet.check_settled(target)
    scenario.note(f"one uninterrupted install took {took:.1f} s; every restart ended committed on the target")
    assert scenario.installs_broken == 0, scenario


def _complete(port: int, timeout: float = 30.0) -> tuple[int, bool]:
    """(status, honest): honest is a whole 200 answer, or a 503 that says when to retry."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"model": TEXT_ID, "prompt": "Once", "max_tokens": 4, "temperature": 0})
        conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status == 200:
            json.loads(data)["choices"][0]["text"]  # a whole answer, not a torn one
            return 200, True
        honest = resp.status == 503 and resp.getheader("retry-after") is not None and "error" in json.loads(data)
        return resp.status, honest
    finally:
        conn.close()


def _serve(port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(TEXT), "--listen", f"127.0.0.1:{port}"],
                            env=env_for(None), stderr=subprocess.PIPE, text=True)
    read_until(proc, "serving")
    threading.Thread(target=lambda: proc.stderr and proc.stderr.read(), daemon=True).start()  # keep draining
    return proc


def test_agent_sigkilled_while_serving_api(scenario: ScenarioResult, size: Sized, seed: int) -> None:
    """Clients keep calling; the server is SIGKILLed at seeded instants and started again.
    Answers from a live server are whole (200) or an honest 503 with retry-after while the model
    loads (counted apart, in the notes); a request cut by the kill
    fails at the client (counted apart); the restarted server answers again."""
    rng = random.Random(seed)
    port = free_port()
    proc = _serve(port)
    cut, stop = [0], threading.Event()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            try:
                status, honest = _complete(port)
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                with lock:
                    cut[0] += 1
                time.sleep(0.05)
                continue
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    scenario.api_ok += 1
                elif not honest:
                    scenario.api_failed += 1
            if status != 200:
                time.sleep(0.05)  # as a client honouring retry-after would, only faster

    clients = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in clients:
        t.start()
    try:
        for _ in range(size(1, 5)):
            ok_before = scenario.api_ok
            deadline = time.monotonic() + 60
            while scenario.api_ok < ok_before + 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # requests flowing
            time.sleep(rng.uniform(0, 1.0))
            proc.kill()
            proc.wait(10)
            scenario.faults += 1
            scenario.runs += 1
            t0 = time.monotonic()
            proc = _serve(port)
            ok_at = scenario.api_ok
            deadline = time.monotonic() + 60
            while scenario.api_ok == ok_at and time.monotonic() < deadline:
                time.sleep(0.02)
            assert scenario.api_ok > ok_at, "no answer after the restart"
            scenario.recovered(time.monotonic() - t0)
    finally:
        stop.set()
        for t in clients:
            t.join(40)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
    scenario.note(f"answers by status: {dict(sorted(statuses.items()))}")
    scenario.note(f"{cut[0]} requests cut by the kills or refused while down (client side)")
    assert scenario.api_failed == 0, scenario
