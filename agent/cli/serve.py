"""`fleetgen-agent serve`: the local OpenAI-compatible API alone, no broker, no controller.

    fleetgen-agent serve --model models/text/austen-3m-int8          # http://127.0.0.1:8080
    fleetgen-agent serve --model DIR --model IMG_DIR --listen 127.0.0.1:9000
    fleetgen-agent serve --bundle austen-3m-int8-1.0.0.fgb --socket /tmp/agent.sock --api-key-file key

What `llama-server -m MODEL` is to llama.cpp. `--model`/`--bundle` repeat to serve several
models (a text and an image model); requests pick one by `model`. Without `--listen` and
`--socket` it listens on 127.0.0.1:8080.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from agent.errors import UsageError

if TYPE_CHECKING:
    from agent.api.host import ModelHost

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:8080"


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve a model over the local OpenAI-compatible API",
                       description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", metavar="DIR", type=Path, action="append", default=[],
                   help="model folder (fleetgen or Optimum export); repeatable")
    p.add_argument("--bundle", metavar="FILE", type=Path, action="append", default=[],
                   help="model bundle (.fgb), verified and unpacked to a temporary folder; repeatable")
    p.add_argument("--listen", metavar="HOST:PORT", help=f"TCP address (default {DEFAULT_LISTEN} without --socket)")
    p.add_argument("--socket", metavar="PATH", help="Unix socket path")
    p.add_argument("--api-key-file", metavar="FILE", help="require Authorization: Bearer <the key in FILE>")
    p.add_argument("--metrics", action="store_true", help="serve GET /metrics (Prometheus text)")
    p.add_argument("--max-pending", type=int, metavar="N", default=8, help="waiting requests per model, then 429")
    p.add_argument("--threads", type=int, metavar="N", help="inference threads (default: library's)")
    p.add_argument("--spin", choices=["auto", "on", "off"], default="auto",
                   help="ONNX Runtime worker threads spin between steps: auto decides from how busy the "
                        "cores are at load (default)")
    p.add_argument("--stream-interval-ms", type=float, metavar="MS", default=20.0,
                   help="a stream sends at most one chunk per MS (faster tokens share it; 0: every token "
                        "at once; default 20, as [api] stream_interval_ms)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msgspec

    from agent.api.host import ModelHost
    from agent.api.service import ApiService
    from agent.api.settings import ApiSettings
    from agent.errors import ConfigError
    from agent.notify import Notifier
    from agent.runtime.options import EngineOptions

    if not args.model and not args.bundle:
        raise UsageError("give --model DIR or --bundle FILE")
    for folder in args.model:
        if not folder.is_dir():
            raise UsageError(f"model folder {folder} does not exist")
    for bundle in args.bundle:
        if not bundle.is_file():
            raise UsageError(f"bundle {bundle} does not exist")
    listen = args.listen if args.listen or args.socket else DEFAULT_LISTEN
    try:
        # convert, not the constructor: a Struct's constructor does not check the bounds
        settings = msgspec.convert({"socket": args.socket or "", "listen": listen, "api_key_file": args.api_key_file,
                                    "metrics": args.metrics, "max_pending": args.max_pending,
                                    "stream_interval_ms": args.stream_interval_ms}, ApiSettings)
    except msgspec.ValidationError as e:
        message, _, where = str(e).partition(" - at `$.")
        flag = "--" + where.rstrip("`").replace("_", "-") if where else "serve"
        raise UsageError(f"{flag}: {message}") from None
    try:
        settings.tcp_address()
    except ConfigError as e:
        raise UsageError(f"--listen: expected HOST:PORT, got {args.listen!r}") from e
    notifier = Notifier()
    spin = {"auto": None, "on": True, "off": False}[args.spin]
    host = ModelHost(EngineOptions(threads=args.threads, spin=spin), max_pending=args.max_pending)
    api = ApiService(settings, host)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.ExitStack() as stack:
        folders = list(args.model) + [stack.enter_context(_unpacked(b)) for b in args.bundle]
        api.start()
        print(f"fleetgen-agent serve: listening on {', '.join(api.addresses)}", file=sys.stderr, flush=True)
        notifier.ready("loading model")
        failure: list[BaseException] = []
        loader = threading.Thread(target=_load, args=(host, folders, failure), name="fleetgen-load", daemon=True)
        loader.start()
        announced = False
        try:
            # the main loop: watchdog pings while the API's loop is healthy, during loading too
            while not stop.wait(0.1):
                notifier.tick(api.healthy(), "API event loop stalled")
                if failure:
                    raise failure[0]
                if not announced and host.ready:
                    announced = True
                    notifier.status(host.detail)
                    print(f"fleetgen-agent serve: {host.detail}", file=sys.stderr, flush=True)
        finally:
            notifier.stopping()
            api.stop()
            loader.join(30)
            host.close()
    return 0


@contextlib.contextmanager
def _unpacked(bundle: Path) -> Iterator[Path]:
    import tempfile

    from agent.errors import FleetgenError
    from agent.runtime.errors import ModelLoadError
    from agent.update.bundle import verify_bundle_file

    with tempfile.TemporaryDirectory(prefix="fleetgen-serve-") as tmp:
        dest = Path(tmp) / "model"
        dest.mkdir()
        try:
            verify_bundle_file(bundle, dest=dest)
        except FleetgenError as e:
            raise ModelLoadError(f"{bundle}: {e}") from None
        yield dest


def _load(host: ModelHost, folders: list[Path], failure: list[BaseException]) -> None:
    try:
        host.load(folders)
    except BaseException as e:  # handed to the main thread, which reports it and exits
        failure.append(e)
