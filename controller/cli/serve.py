"""`fleetgen serve`: run the controller (ingest now; the web API joins later)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from controller.web.settings import DEFAULT_LISTEN

if TYPE_CHECKING:
    from controller.config import ControllerConfig
    from controller.ingest import Ingestor
    from controller.store import Store

log = logging.getLogger(__name__)


class _Service(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the fleet controller")
    p.add_argument("--broker", metavar="URL", help="broker URL (over the config)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (over the config)")
    p.add_argument("--repo", metavar="DIR", help="TUF image repository to serve (over the config)")
    p.add_argument("--http", metavar="HOST:PORT", nargs="?", const=DEFAULT_LISTEN,
                   help=f"serve the REST API, dashboard and /metrics (default {DEFAULT_LISTEN}; over the config)")
    p.add_argument("--enroll", metavar="HOST:PORT", help="serve device enrollment over HTTPS here (over the config)")
    p.set_defaults(func=run)


def load(args: argparse.Namespace):
    from controller.config import load_config

    return load_config(
        Path(args.config) if args.config else None,
        state_dir=args.state_dir,
        database_url=getattr(args, "db", None),
        repository=getattr(args, "repo", None),
        mqtt={"url": args.broker} if getattr(args, "broker", None) else None,
        http={"listen": args.http} if getattr(args, "http", None) else None,
        enroll={"listen": args.enroll} if getattr(args, "enroll", None) else None,
    )


def run(args: argparse.Namespace) -> int:
    from agent.cli import require_extra

    require_extra("serve", "controller", "sqlalchemy")
    from controller.ingest import Ingestor

    config = load(args)
    store = _open_store(config)
    ingestor = Ingestor(config, store)
    done = threading.Event()
    services: list[_Service] = []
    if config.repository is not None:
        from agent.errors import ConfigError
        from controller.responder import RepositoryResponder
        from controller.tuf.repository import Repository, RepositoryError
        from controller.tuf.schedule import ResignSchedule

        try:
            repo = Repository(Path(config.repository)).path
        except RepositoryError as e:
            raise ConfigError(f"repository: {e}") from None
        services = [
            RepositoryResponder(ingestor.link, repo, shared=config.shared),
            ResignSchedule(repo, config.resign_interval_s),
        ]
    if config.http.listen is not None:
        services.insert(0, _http_service(config, store, ingestor))  # first: a taken port fails the start

    if config.enroll.listen is not None:
        from controller.enroll import enrollment_service

        services.append(enrollment_service(config, store))

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        ingestor.stop()
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("controller serving: broker %s, database %s", config.mqtt.url, store.engine.url)
    for service in services:
        service.start()
    ingestor.start()
    ingestor.run()
    for service in services:
        service.stop()
    store.close()
    return 0


def _open_store(config: ControllerConfig) -> Store:
    from controller.store import Store

    if config.http.listen is None:
        return Store(config.db_url)
    from controller.web.metrics import MeteredStore

    return MeteredStore(config.db_url)


def _http_service(config: ControllerConfig, store: Store, ingestor: Ingestor) -> _Service:
    from agent.cli import require_extra

    require_extra("serve --http", "controller", "fastapi", "uvicorn", "prometheus_client")
    from controller.web.context import WebContext
    from controller.web.server import HttpServer

    assert config.http.listen is not None
    repo = Path(config.repository) if config.repository is not None else None
    ctx = WebContext(store, settings=config.http, repo_dir=repo, transport=ingestor.link,
                     refused=lambda: ingestor.refused)
    if repo is not None:
        from controller.web.desired import DesiredWatch

        ctx.desired = DesiredWatch(ingestor.link, repo)
    return HttpServer(ctx, config.http.listen)
