"""The daemon (`fleetgen-agent run`) serves its installed bundle on its socket: the openai
client, `status --json` matching the daemon's state, READY/STOPPING to systemd, and a
committed bundle taking over from the old one."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx  # what this openai release uses (httpx under its new name)
import openai
import pytest

from controller.demo.brokers import Mosquitto
from tests.api.conftest import IMAGE, IMAGE_ID, TEXT, TEXT_ID, wait_for
from tests.api.processes import BIN, FakeSystemd, env_for, install


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    socket: Path
    config: Path
    systemd: FakeSystemd
    device_id: str

    def http(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://localhost",
                            timeout=30)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url="http://localhost/v1", api_key="none", max_retries=0,
                             http_client=httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))))

    def status(self) -> dict[str, Any]:
        with self.http() as c:
            return c.get("/fleetgen/status").json()  # type: ignore[no-any-return]


def start_daemon(tmp: Path, model: Path, broker_url: str) -> Daemon:
    state = tmp / "state"
    install(model, state, tmp)
    sock_dir = Path(tempfile.mkdtemp(prefix="fgd-"))
    sock = sock_dir / "agent.sock"
    config = tmp / "agent.toml"
    config.write_text(f'device_id = "api-dev-1"\nstate_dir = "{state}"\n[mqtt]\nurl = "{broker_url}"\n'
                      f'[telemetry]\nsample_interval_s = 0.2\npublish_interval_s = 0.5\n'
                      f'[api]\nsocket = "{sock}"\nmetrics = true\n')
    systemd = FakeSystemd()
    proc = subprocess.Popen([str(BIN), "run", "--config", str(config), "--log-level", "WARNING"],
                            env=env_for(systemd, watchdog_usec=1_000_000), stderr=subprocess.PIPE, text=True)
    daemon = Daemon(proc, sock, config, systemd, "api-dev-1")
    systemd.wait_for("READY=1")
    assert sock.exists()  # READY=1 means the socket listens
    with daemon.http() as c:
        wait_for(lambda: c.get("/health").status_code == 200, "the installed bundle to load")
    return daemon


def stop_daemon(d: Daemon) -> None:
    if d.proc.poll() is None:
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(15)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
    if d.proc.stderr:
        d.proc.stderr.close()
    d.systemd.close()
    shutil.rmtree(d.socket.parent, ignore_errors=True)


@pytest.fixture
def text_daemon(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Daemon]:
    d = start_daemon(tmp_path, TEXT, mosquitto.url)
    yield d
    stop_daemon(d)


def test_openai_client_on_the_daemon_socket_and_status(text_daemon: Daemon) -> None:
    client = text_daemon.openai()
    assert [m.id for m in client.models.list()] == [TEXT_ID]
    done = client.completions.create(model=TEXT_ID, prompt="It was", max_tokens=5, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TEXT_ID, prompt="It was", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == done.choices[0].text
    chat = client.chat.completions.create(model=TEXT_ID, messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=4)
    assert chat.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model=TEXT_ID, messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    wait_for(lambda: text_daemon.status()["link"] == "connected", "the daemon to reach the broker")

    out = subprocess.run([str(BIN), "status", "--json", "--config", str(text_daemon.config)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == 1 and doc["device_id"] == "api-dev-1"
    assert doc["link"] == "connected" and doc["active_bundle"] == "austen-3m-int8-1.0.0"
    assert doc["api"]["state"] == "ready" and doc["api"]["models"] == ["austen-3m-int8-1.0.0"]
    assert doc["api"]["addresses"] == [f"unix:{text_daemon.socket}"]
    counters = doc["api"]["counters"]
    assert counters["requests"] >= 5 and counters["completion_tokens"] >= 1
    assert counters["queue_depth"] == 0 and counters["latency_ms_p50"] is not None
    with text_daemon.http() as c:  # the same numbers the API's own metrics give
        metrics = c.get("/metrics").text
    assert f'fleetgen_api_tokens_total{{kind="completion"}} {counters["completion_tokens"]}' in metrics

    table = subprocess.run([str(BIN), "status", "--config", str(text_daemon.config)],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0 and "austen-3m-int8-1.0.0" in table.stdout and "connected" in table.stdout


def test_sigterm_stops_within_10_s_with_stopping(text_daemon: Daemon) -> None:
    t0 = time.monotonic()
    text_daemon.proc.send_signal(signal.SIGTERM)
    text_daemon.systemd.wait_for("STOPPING=1")
    assert text_daemon.proc.wait(10) == 0
    assert time.monotonic() - t0 < 10
    kinds = [m.splitlines()[0].split("=")[0] for m in text_daemon.systemd.messages]
    assert kinds[0] == "READY" and kinds[-1] == "STOPPING" and "WATCHDOG" in kinds
    assert not text_daemon.socket.exists()


def test_image_bundle_from_the_daemon_socket(tmp_path: Path, mosquitto: Mosquitto) -> None:
    d = start_daemon(tmp_path, IMAGE, mosquitto.url)
    try:
        out = d.openai().images.generate(model=IMAGE_ID, prompt="5", n=1, response_format="b64_json")
        assert out.data is not None and base64.b64decode(out.data[0].b64_json or "")[:4] == b"\x89PNG"
    finally:
        stop_daemon(d)


def test_status_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    out = subprocess.run([str(BIN), "status", "--socket", str(tmp_path / "none.sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "is the agent running?" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_committed_bundle_is_handed_to_the_api(tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.mqtt.settings import MqttSettings
    from agent.update.worker import ActiveBundle, Snapshot
    from controller.demo.brokers import free_port

    agent = Agent(AgentConfig(device_id="hook-1", state_dir=str(tmp_path / "s"),
                              mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}")))
    seen: list[ActiveBundle] = []
    agent.on_bundle.append(seen.append)
    bundle = ActiveBundle("austen-3m-int8", "2.0.0", tmp_path)

    def snapshot(active: ActiveBundle | None, version: int) -> Snapshot:
        return Snapshot(phase="idle", active=active, previous=None, director_version=version, last_error=None,
                        last_result="committed", health="ok")

    agent.handle(snapshot(bundle, 3))
    agent.handle(snapshot(bundle, 4))  # the same bundle: nothing new to serve
    assert seen == [bundle]
    agent.spool.close()


def test_daemon_runs_on_without_the_api_when_it_cannot_listen(tmp_path: Path) -> None:
    from controller.demo.brokers import free_port

    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "api-dev-2"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n'
                      f'[api]\nsocket = "{tmp_path / "no-such-dir" / "agent.sock"}"\n')
    systemd = FakeSystemd()
    proc = subprocess.Popen([str(BIN), "run", "--config", str(config)], env=env_for(systemd),
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = systemd.wait_for("READY=1")
        assert "API down" in ready  # the daemon's updates and telemetry go on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "local API not started" in proc.stderr.read()
        assert not (tmp_path / "no-such-dir").exists()  # it does not make the folder itself
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        systemd.close()


def test_the_board_profile_reaches_the_models_engine_options(tmp_path: Path) -> None:
    """`run` hands a profile's `cores_dedicated` to the models it loads (ADR 0062)."""
    import dataclasses

    from agent.api.settings import ApiSettings
    from agent.board import Board, open_board
    from agent.cli.run import _start_api
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.mqtt.settings import MqttSettings
    from agent.telemetry import Sampler
    from controller.demo.brokers import free_port

    sock_dir = Path(tempfile.mkdtemp(prefix="fgb-"))
    config = AgentConfig(device_id="board-1", state_dir=str(tmp_path / "s"),
                         mqtt=MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"),
                         api=ApiSettings(socket=str(sock_dir / "a.sock")))
    board = open_board(config.board)
    for dedicated in (False, True):
        profile = dataclasses.replace(board.detected.profile, cores_dedicated=dedicated)
        appliance = Board(dataclasses.replace(board.detected, profile=profile), board.meter)
        agent = Agent(config, sampler=Sampler())
        api = _start_api(agent, config, Sampler(), appliance)
        try:
            assert api.host.options is not None and api.host.options.cores_dedicated is dedicated
        finally:
            api.stop()
            agent.spool.close()
    shutil.rmtree(sock_dir, ignore_errors=True)

