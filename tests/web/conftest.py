"""Web fixtures: a controller's web face on a free port over a store holding a simulated fleet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.web.context import WebContext
from controller.web.metrics import MeteredStore
from controller.web.server import HttpServer
from controller.web.settings import HttpSettings
from tests.web import fleet
from tests.web.client import Api

NOW = 1_800_000_000.0
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


@dataclass
class Web:
    store: MeteredStore
    server: HttpServer
    api: Api
    token: str
    devices: list[fleet.SimDevice]


def start_web(tmp_path: Path, *, n: int = 12, settings: HttpSettings | None = None, store: MeteredStore | None = None,
              **ctx_kw: object) -> Web:
    store = store or MeteredStore(f"sqlite:///{tmp_path / 'controller.db'}", clock=lambda: NOW)
    devices = fleet.devices(n)
    fleet.fill(store, devices, NOW, history_s=3600, every_s=30)
    # A device whose reported board is hostile HTML: the dashboard must show it as text.
    hostile = fleet.SimDevice("sim-hostile", HOSTILE, "x", 5.0, True)
    store.apply(fleet.state(hostile, NOW, label=HOSTILE))
    ctx = WebContext(store, settings=settings or HttpSettings(), clock=lambda: NOW, **ctx_kw)  # type: ignore[arg-type]
    token = ctx.tokens.create("tests")
    server = HttpServer(ctx, "127.0.0.1:0")
    server.start()
    return Web(store, server, Api(server.url), token, [*devices, hostile])


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = start_web(tmp_path)
    yield w
    w.server.stop()
    w.store.close()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """For things that happen in another process (a broker delivery): wait on the state itself."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
