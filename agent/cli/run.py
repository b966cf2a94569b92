"""`fleetgen-agent run`: the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.board import Board
    from agent.config import AgentConfig
    from firmware.control import PowerController

log = logging.getLogger(__name__)


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
    from agent.telemetry import Sampler

    config = load_config(
        Path(args.config) if args.config else None,
        state_dir=args.state_dir,
        device_id=args.device_id,
        mqtt={"url": args.broker} if args.broker else None,
    )
    log.info("state in %s (state_dir, or --state-dir)", config.state_path)
    board = open_board(config.board)
    state = DeviceState(board=board.id, accelerators=board.accelerators, providers=board.providers)
    agent = Agent(config, state=state, sampler=Sampler(power=board.meter.read), power=power_controller(config, board))

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    agent.start()
    agent.run()
    return 0
