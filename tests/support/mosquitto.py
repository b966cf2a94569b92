"""A real Mosquitto broker per test: free port, generated config, its own persistence.

`MosquittoBroker.restart()` keeps the port and the persistence file, so persistent
sessions and queued QoS 1 messages survive it as they would in production.
Extra config lines (TLS listeners, ACL files) can be passed in `extra_conf`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port, wait_for_port


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        raise RuntimeError("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    return path


@dataclass
class MosquittoBroker:
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    listener_conf: str = "allow_anonymous true"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    "per_listener_settings true",
                    # As root, mosquitto would drop to its own user and could not write here.
                    "user root" if os.geteuid() == 0 else "",
                    f"listener {self.port} 127.0.0.1",
                    self.listener_conf,
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_interval 1",
                    f"log_dest file {self.log_path}",
                    "log_type all",
                    "max_queued_messages 10000",
                    self.extra_conf,
                    "",
                ]
            )
        )
        return conf

    def start(self) -> None:
        conf = self.write_config()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; see {self.log_path}") from None

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
