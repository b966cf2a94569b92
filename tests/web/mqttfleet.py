"""A simulated fleet on the real protocol: the documents agents publish, sent through a real
broker to a real `fleetgen serve` (its ingest), plus that controller process with `--http`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from agent.mqtt.link import MqttLink
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, Event, Reported, Status, TelemetryBatch, device_topic, encode
from controller.store import Ingested

_CHANNELS: dict[type[msgspec.Struct], tuple[Channel, bool]] = {
    Status: (Channel.STATUS, True), Reported: (Channel.REPORTED, True),
    TelemetryBatch: (Channel.TELEMETRY, False), Event: (Channel.EVENTS, False),
}


def publish(link: MqttLink, items: Iterable[Ingested]) -> int:
    count = 0
    for item in items:
        channel, retain = _CHANNELS[type(item.message)]
        link.publish(device_topic(item.device_id, channel), encode(item.message), qos=1, retain=retain)
        count += 1
    link.flush(timeout=30)
    return count


@dataclass
class ServedController:
    """`fleetgen serve --http 127.0.0.1:0` as a process; `url` is read from its log."""

    workdir: Path
    broker_url: str
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.workdir / 'controller.db'}"

    @property
    def log(self) -> Path:
        return self.workdir / "controller.log"

    def start(self, *extra: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller", "serve", "--state-dir", str(self.workdir), "--db", self.db_url,
                 "--broker", self.broker_url, "--http", "127.0.0.1:0", *extra],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self.url:
            m = re.search(r"http: dashboard and API on (http://\S+)", self.log.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"controller did not start serving HTTP:\n{self.log.read_text()[-2000:]}")
            else:
                time.sleep(0.05)

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def link_for(broker_url: str) -> MqttLink:
    return MqttLink.open(MqttSettings(url=broker_url, protocol="3.1.1"), client_id="fleetgen-test-sim")
