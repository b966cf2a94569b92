"""`fleetgen serve`: run the controller (ingest now; the web API joins later)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the fleet controller")
    p.add_argument("--broker", metavar="URL", help="broker URL (over the config)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    p.set_defaults(func=run)


def load(args: argparse.Namespace):
    from controller.config import load_config

    return load_config(
        Path(args.config) if args.config else None,
        state_dir=args.state_dir,
        database_url=getattr(args, "db", None),
        mqtt={"url": args.broker} if getattr(args, "broker", None) else None,
    )


def run(args: argparse.Namespace) -> int:
    from controller.ingest import Ingestor
    from controller.store import Store

    config = load(args)
    store = Store(config.db_url)
    ingestor = Ingestor(config, store)
    done = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        ingestor.stop()
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("controller serving: broker %s, database %s", config.mqtt.url, store.engine.url)
    ingestor.start()
    ingestor.run()
    store.close()
    return 0
