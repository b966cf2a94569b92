"""`fleetgen-agent status`: ask the running daemon over its socket what it is doing.

    fleetgen-agent status          # a short table
    fleetgen-agent status --json   # the daemon's document (schema 1), for scripts
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.errors import FleetgenError


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="show the running agent's state (over its socket)")
    p.add_argument("--json", action="store_true", help="print the daemon's status document")
    p.add_argument("--socket", metavar="PATH", help="API socket (default: [api] socket of the config)")
    p.add_argument("--api-key-file", metavar="FILE", help="API key (default: [api] api_key_file of the config)")
    p.set_defaults(func=run, log_level="WARNING")


def run(args: argparse.Namespace) -> int:
    import msgspec

    from agent.api.client import get
    from agent.api.settings import ApiSettings, read_api_key
    from agent.api.status import DaemonStatus
    from agent.config import DEFAULT_CONFIG, load_config

    api = ApiSettings()
    if args.config is not None or DEFAULT_CONFIG.is_file():
        api = load_config(Path(args.config) if args.config else None, device_id="local").api
    socket_path = Path(args.socket or api.socket)
    key_file = args.api_key_file or api.api_key_file
    api_key = read_api_key(key_file) if key_file else None
    status, body = get(socket_path, "/fleetgen/status", api_key)
    if status != 200:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:200].decode("utf-8", "replace")
        raise FleetgenError(f"{socket_path}: HTTP {status}: {message}")
    try:
        doc = msgspec.json.decode(body, type=DaemonStatus)
    except msgspec.DecodeError as e:
        raise FleetgenError(f"{socket_path}: unexpected status document ({e})") from None
    if args.json:
        sys.stdout.write(body.decode("utf-8") + "\n")
        return 0
    rows = [
        ("device", doc.device_id),
        ("agent", doc.agent_version),
        ("uptime", f"{doc.uptime_s:.0f} s"),
        ("link", f"{doc.link} ({doc.broker})"),
        ("bundle", doc.active_bundle or "-"),
        ("previous", doc.previous_bundle or "-"),
        ("update", doc.update_phase),
        ("power", _power(doc)),
        ("spool", f"{doc.spool_depth} samples"),
    ]
    if doc.api is not None:
        c = doc.api.counters
        rows += [
            ("api", f"{doc.api.state}: {doc.api.detail}"),
            ("listening", ", ".join(doc.api.addresses) or "-"),
            ("requests", f"{c.requests} ({c.errors} errors, {c.rejected_full} rejected, "
                         f"{c.client_disconnects} disconnects)"),
            ("tokens", f"{c.prompt_tokens} prompt, {c.completion_tokens} completion"),
            ("latency", f"p50 {_ms(c.latency_ms_p50)}, p95 {_ms(c.latency_ms_p95)}"),
            ("queue", f"{c.queue_depth} waiting, {c.in_flight} in flight"),
        ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _power(doc: object) -> str:
    draw = getattr(doc, "draw_w", None)
    budget = getattr(doc, "budget_w", None)
    text = "-" if draw is None else f"{draw:.1f} W" + (" (estimated)" if getattr(doc, "power_estimated", False) else "")
    return text + (f" of {budget:.1f} W budget" if budget is not None else "")
