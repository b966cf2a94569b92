"""`fleetgen serve`: run the controller: ingest, repository responder, re-sign schedule,
director publisher, and (on the leader) rollouts and power allocation, under one supervisor."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from controller.web.settings import DEFAULT_LISTEN

if TYPE_CHECKING:
    from controller.config import ControllerConfig
    from controller.services.director import DirectorPublisher
    from controller.services.ingest import Ingestor
    from controller.services.supervisor import Service
    from controller.store import Store

log = logging.getLogger(__name__)


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
    from controller.services.ingest import Ingestor
    from controller.services.leader import Leadership
    from controller.services.supervisor import Job, Supervisor

    config = load(args)
    store = _open_store(config)
    leadership = Leadership(store.engine)
    if leadership.single:
        log.info("database %s is SQLite: this controller is the only replica "
                 "(several replicas need PostgreSQL)", store.engine.url.render_as_string())
    ingestor = Ingestor(config, store)
    services: list[Service] = []
    jobs = [Job("telemetry retention", lambda: store.repos.retention.prune(
        time.time(), raw_days=config.telemetry_raw_days, keep_days=config.telemetry_keep_days,
        bucket_s=config.telemetry_bucket_s), interval_s=3600.0, leader_only=True)]
    if config.repository is not None:
        from agent.errors import ConfigError
        from controller.director import Director
        from controller.services.director import DirectorPublisher
        from controller.services.power import PowerService
        from controller.services.resign import ResignSchedule
        from controller.services.responder import RepositoryResponder
        from controller.services.rollouts import RolloutService
        from controller.tuf.repository import Repository, RepositoryError

        try:
            repo = Repository(Path(config.repository))
        except RepositoryError as e:
            raise ConfigError(f"repository: {e}") from None
        services = [
            RepositoryResponder(ingestor.link, repo.path, shared=config.shared),
            ResignSchedule(repo.path, config.resign_interval_s),
        ]
        publisher = DirectorPublisher(Director(repo), store.repos.desired, ingestor.link)
        rollouts = RolloutService(store.repos.rollouts, publisher)
        power = PowerService(store.repos.groups, store.repos.power, publisher)
        jobs += [Job("rollouts", rollouts.tick, config.rollout_tick_s, leader_only=True),
                 Job("power allocation", power.tick, config.power_interval_s, leader_only=True)]
    else:
        publisher = None
        log.info("no repository configured: rollouts and power budgets wait until one is (--repo)")
    if config.enroll.listen is not None:
        from controller.enroll import enrollment_service

        services.append(enrollment_service(config, store))
    if config.http.listen is not None:
        services.insert(0, _http_service(config, store, ingestor, publisher))  # first: a taken port fails the start
    supervisor = Supervisor(services, jobs, leadership)
    done = threading.Event()


    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        ingestor.stop()
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("controller serving: broker %s, database %s", config.mqtt.url, store.engine.url)
    ingestor.start()
    supervisor.start()
    ingestor.run()
    supervisor.stop()
    store.close()
    return 0


def _open_store(config: ControllerConfig) -> Store:
    from controller.store import Store

    if config.http.listen is None:
        return Store(config.db_url)
    from controller.web.metrics import MeteredStore

    return MeteredStore(config.db_url)


def _http_service(config: ControllerConfig, store: Store, ingestor: Ingestor,
                  publisher: DirectorPublisher | None) -> Service:
    from agent.cli import require_extra

    require_extra("serve --http", "controller", "fastapi", "uvicorn", "prometheus_client")
    from controller.web.context import WebContext
    from controller.web.server import HttpServer

    assert config.http.listen is not None
    repo = Path(config.repository) if config.repository is not None else None
    ctx = WebContext(store, settings=config.http, repo_dir=repo, publisher=publisher,
                     refused=lambda: dict(ingestor.dropped))
    return HttpServer(ctx, config.http.listen)
