"""The local API in-process (its own thread and loop, real models) and helpers to talk to it.

Models: the shipped austen-3m int8/int4 text models and the digits-cvae image generator,
run by ONNX Runtime. Knobs that gate the generation worker make queue and disconnect tests
deterministic: the test holds the worker and waits on the state it asserts.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx  # what this openai release uses (httpx under its new name)
import pytest

from agent.api.host import ModelHost
from agent.api.service import ApiService
from agent.api.settings import ApiSettings
from agent.runtime.engine import EngineOptions

REPO = Path(__file__).resolve().parents[2]
TEXT = REPO / "models" / "text" / "austen-3m-int8"
TEXT_INT4 = REPO / "models" / "text" / "austen-3m-int4"
IMAGE = REPO / "models" / "image" / "digits-cvae-onnx"
TEXT_ID, TEXT_INT4_ID, IMAGE_ID = "austen-3m-int8", "austen-3m-int4", "digits-cvae-onnx"
WAIT_S = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Wait for the state a test asserts (with a deadline that only guards against hangs)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Gate:
    """Generation knobs (agent.runtime.service.Knobs) a test can hold: `admit` False holds the
    worker before its next request; `hold_after` steps into a generation, the decode loop
    waits for `release()`. `steps` counts decode steps."""

    admit_flag: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)
    hold_after: int | None = None
    steps: int = 0
    held: threading.Event = field(default_factory=threading.Event)
    step_delay_s: float = 0.0  # a slower model: every decode step takes this much longer

    def __post_init__(self) -> None:
        self.admit_flag.set()
        self.resume.set()

    @property
    def threads(self) -> int:
        return None  # type: ignore[return-value]  # keep the session's thread count

    @property
    def admit(self) -> bool:
        return self.admit_flag.is_set()

    def pace_delay(self, step_s: float) -> float:
        self.steps += 1
        if self.hold_after is not None and self.steps >= self.hold_after and not self.resume.is_set():
            self.held.set()
            self.resume.wait(WAIT_S)
        return self.step_delay_s

    def hold(self, after_steps: int) -> None:
        self.steps, self.hold_after = 0, after_steps
        self.held.clear()
        self.resume.clear()

    def release(self) -> None:
        self.hold_after = None
        self.resume.set()


@dataclass
class Api:
    service: ApiService
    host: ModelHost
    gate: Gate
    socket: Path
    base_url: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=WAIT_S)

    def unix_client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)), base_url="http://localhost",
                            timeout=WAIT_S)

    @property
    def metrics(self):  # type: ignore[no-untyped-def]
        return self.service.metrics


def start_api(tmp: Path, folders: list[Path] | None, gate: Gate | None = None, **settings: object) -> Api:
    gate = gate or Gate()
    host = ModelHost(EngineOptions(threads=1), max_pending=int(settings.pop("max_pending", 8)),  # type: ignore[call-overload]
                     switch_wait_s=float(settings.pop("switch_wait_s", 10.0)), knobs=gate)  # type: ignore[arg-type]
    # a short path: a Unix socket's path is limited to 107 bytes, pytest's tmp paths are long
    sock = Path(tempfile.mkdtemp(prefix="fgapi-")) / "api.sock"
    config = ApiSettings(socket=str(sock), listen="127.0.0.1:0", metrics=True, **settings)  # type: ignore[arg-type]
    service = ApiService(config, host)
    service.start()
    if folders:
        host.load(folders)
    return Api(service, host, gate, sock, f"http://127.0.0.1:{service.tcp_port}")


def stop_api(api: Api) -> None:
    api.gate.release()
    api.gate.admit_flag.set()
    api.service.stop()
    api.host.close()
    shutil.rmtree(api.socket.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = start_api(tmp_path_factory.mktemp("api"), [TEXT, IMAGE])
    yield a
    stop_api(a)


@pytest.fixture
def fresh_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start an API of one's own (own settings, own gate); stopped at the end of the test."""
    started: list[Api] = []

    def make(folders: list[Path] | None = None, **settings: object) -> Api:
        a = start_api(tmp_path / f"a{len(started)}", folders if folders is not None else [TEXT], **settings)
        started.append(a)
        return a

    yield make
    for a in started:
        stop_api(a)
