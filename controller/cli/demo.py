"""`fleetgen demo`: the whole story on embedded defaults (see controller/demo/demo.py)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("demo", parents=[common],
                       help="the whole story: broker, controller, enrolled devices, rollouts with rollback, "
                            "power budgets, offline generation")
    p.add_argument("--once", action="store_true", help="run the story once and exit")
    p.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="broker to start (auto: Mosquitto with TLS when installed, else embedded amqtt)")
    p.add_argument("--workdir", default=".demo", help="where the demo keeps its state and logs")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for each step")
    p.add_argument("--plain", action="store_true", help="plain lines, no colour or spinner")
    p.set_defaults(func=run, log_level="WARNING")


def run(args: argparse.Namespace) -> int:
    from controller.demo.demo import DemoOptions, run_demo
    from controller.demo.harness import DemoError
    from controller.demo.progress import make_progress

    ui = make_progress(plain=args.plain)

    def wait_forever() -> None:
        stop = threading.Event()
        while not stop.wait(1.0):  # short waits keep the main thread responsive to signals
            pass

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Ctrl-C (even when started from a script that ignores SIGINT) and SIGTERM both stop the
    # demo; run_demo's exit stack then stops every process it started.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)

    opts = DemoOptions(Path(args.workdir).resolve(), broker=args.broker, once=args.once, timeout=args.timeout)
    try:
        return run_demo(opts, ui, wait_forever)
    except KeyboardInterrupt:
        print("fleetgen: demo interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (DemoError, TimeoutError) as e:
        print(f"fleetgen: demo failed: {e}", file=sys.stderr)
        return 1
