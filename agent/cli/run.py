"""`fleetgen-agent run`: the daemon (what the systemd unit starts).

Start-up order: the local API listens first (`[api]` in agent.toml), then systemd hears
READY=1 (broker or not: offline is a normal state; /health says whether a model is
loaded), then the installed bundle loads in the background and the MQTT link starts. On
SIGTERM: STOPPING=1, the loop says goodbye to the broker, requests in flight drain, exit.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.api.host import ModelHost
    from agent.api.service import ApiService
    from agent.board import Board
    from agent.config import AgentConfig
    from agent.daemon import Agent
    from agent.telemetry import Sampler
    from firmware.control import PowerController

log = logging.getLogger(__name__)

# SIGTERM to exit: the contract is 10 s (docs/api.md), well inside systemd's stop timeout.
STOP_WITHIN_S = 9.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="run the agent daemon")
    p.add_argument("--device-id", help="device id (over the config)")
    p.add_argument("--broker", metavar="URL", help="broker URL, mqtt:// or mqtts:// (over the config)")
    p.set_defaults(func=run)


def power_controller(config: AgentConfig, board: Board) -> PowerController | None:
    """The governor in force on this board (`[power] enabled`), sharing the board's meter."""
    from firmware.control import PowerController
    from firmware.errors import FirmwareError
    from firmware.settings import PowerSettings

    p = config.power
    if not p.enabled:
        return None
    try:
        settings = PowerSettings(budget_w=p.budget_w, tick_s=p.tick_s, window_s=p.window_s)
        return PowerController(board.detected, settings, meter=board.meter)
    except FirmwareError as e:
        log.warning("power governor not started: %s", e)
        return None


def run(args: argparse.Namespace) -> int:
    from agent.board import open_board
    from agent.config import load_config
    from agent.daemon import Agent, DeviceState
    from agent.notify import Notifier
    from agent.telemetry import Sampler

    config = load_config(
        Path(args.config) if args.config else None,
        state_dir=args.state_dir,
        device_id=args.device_id,
        mqtt={"url": args.broker} if args.broker else None,
    )
    log.info("state in %s (state_dir, or --state-dir)", config.state_path)
    notifier = Notifier()
    board = open_board(config.board)
    state = DeviceState(board=board.id, accelerators=board.accelerators, providers=board.providers)
    sampler = Sampler(power=board.meter.read)
    agent = Agent(config, state=state, sampler=sampler, power=power_controller(config, board))
    api = None
    if config.api.enabled:
        from agent.api.service import ApiStartError

        try:
            api = _start_api(agent, config, sampler, board)
        except ApiStartError as e:
            # updates and telemetry are the daemon's first job: it runs on without the API,
            # says so in the log and in its systemd STATUS line
            log.error("local API not started: %s (set [api] socket, or enabled = false)", e)

    stop_deadline: list[float] = []

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        notifier.stopping()
        # One deadline for the whole stop (systemd's 10 s): the API drains its requests while
        # the loop drains the spool and says goodbye, not after it.
        stop_deadline.append(time.monotonic() + STOP_WITHIN_S)
        if api is not None:
            api.begin_stop()
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    notifier.ready(_status_line(agent, api))

    def tick() -> None:
        notifier.tick(api is None or api.healthy(), "API event loop stalled")
        notifier.status(_status_line(agent, api))

    agent.on_tick.append(tick)
    agent.start()
    try:
        agent.run()
    finally:
        if api is not None:
            api.stop(timeout=stop_deadline[0] - time.monotonic() if stop_deadline else None)
            api.host.close()
        notifier.close()
    return 0


def _status_line(agent: Agent, api: ApiService | None) -> str:
    link = "online" if agent.link.connected else "offline"
    model = agent.state.active_bundle or "no bundle"
    return f"{link}; {model}; API {api.host.state}" if api is not None else f"{link}; {model}; API down"


def _start_api(agent: Agent, config: AgentConfig, sampler: Sampler, board: Board) -> ApiService:
    """The API on its socket, serving the installed bundle; switched at each commit."""
    from agent.api.host import ModelHost
    from agent.api.metrics import ApiMetrics
    from agent.api.service import ApiService
    from agent.api.status import ApiStatus, DaemonStatus
    from agent.runtime.options import EngineOptions
    from agent.update.store import BundleStore
    from agent.update.worker import ActiveBundle

    settings = config.api
    providers = tuple(getattr(board, "providers", ()) or ())
    dedicated = board.detected.profile.cores_dedicated  # ORT spins unless a budget binds (spin.py)
    host = ModelHost(EngineOptions(providers=providers, cores_dedicated=dedicated), max_pending=settings.max_pending,
                     switch_wait_s=settings.switch_wait_s, knobs=agent.knobs)  # the power governor's
    metrics = ApiMetrics(sink=sampler.counters)
    api: ApiService

    def status() -> DaemonStatus:
        counters = metrics.snapshot(host.depth)
        doc = ApiStatus(state=host.state, detail=host.detail, models=[m.label for m in host.models],
                        addresses=api.addresses, counters=counters)
        return agent.status_snapshot(doc)

    api = ApiService(settings, host, status=status, metrics=metrics, create_socket_dir=False)
    api.start()
    current = BundleStore(config.state_path).current()
    if current is not None:
        threading.Thread(target=_load_quietly, args=(host, current), name="fleetgen-api-load", daemon=True).start()

    def on_bundle(bundle: ActiveBundle) -> None:
        host.switch_in_background(bundle.path)

    agent.on_bundle.append(on_bundle)
    # an update drains the requests running before it downloads (agent/update/worker.py)
    agent.set_in_flight(lambda: metrics.in_flight)
    return api


def _load_quietly(host: ModelHost, folder: Path) -> None:
    from agent.errors import FleetgenError

    try:
        host.load([folder])
    except FleetgenError as e:  # /health and status say so; the daemon goes on (updates may fix it)
        log.error("cannot serve the installed bundle %s: %s", folder, e)
