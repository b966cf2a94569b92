"""/metrics parses with prometheus_client's own parser and says what the store holds."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.protocol import TelemetryBatch
from controller.store import Ingested
from tests.web import fleet
from tests.web.conftest import NOW, Web


def _families(web: Web) -> dict[str, list[tuple[dict[str, str], float]]]:
    answer = web.api.get("/metrics")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    return {f.name: [(s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(answer.body.decode())}


def test_metrics_parse_and_match_the_fleet(web: Web) -> None:
    families = _families(web)
    by_board = {(labels["board"], labels["state"]): v for labels, v in families["fleetgen_devices"]}
    assert sum(by_board.values()) == len(web.devices)
    assert by_board[("kria-kv260", "online")] == 2 and by_board[("kria-kv260", "offline")] == 1
    assert ("generic-x86_64", "offline") not in by_board
    power = {labels["device"]: v for labels, v in families["fleetgen_device_power_watts"]}
    detail = web.api.get("/api/v1/devices/sim-00004").json()["device"]
    assert power["sim-00004"] == detail["power_w"]
    budgets = {labels["device"]: v for labels, v in families["fleetgen_device_power_budget_watts"]}
    assert budgets["sim-00003"] == 12.5 and budgets["sim-hostile"] == 5.0
    assert "sim-hostile" not in {labels["device"] for labels, _ in families["fleetgen_device_tokens_per_second"]}
    # Labels stay bounded: device and board on per-device series, nothing else.
    for name in ("fleetgen_device_power_watts", "fleetgen_device_tokens_per_second", "fleetgen_device_online",
                 "fleetgen_device_temperature_celsius"):
        assert all(set(labels) == {"device", "board"} for labels, _ in families[name]), name
    online = {labels["device"]: v for labels, v in families["fleetgen_device_online"]}
    assert online["sim-00009"] == 0 and online["sim-00000"] == 1


def test_ingest_counters_follow_what_the_store_wrote(web: Web) -> None:
    before = _families(web)
    samples_before = before["fleetgen_telemetry_samples_ingested"][0][1]
    d = web.devices[0]
    batch = TelemetryBatch(device_id=d.id, samples=[fleet.sample(d, 1000 + i, NOW + i) for i in range(7)])
    web.store.apply([Ingested(d.id, NOW - 2.5, batch)])
    after = _families(web)
    assert after["fleetgen_telemetry_samples_ingested"][0][1] == samples_before + 7
    assert after["fleetgen_ingest_messages"][0][1] == before["fleetgen_ingest_messages"][0][1] + 1
    assert after["fleetgen_ingest_lag_seconds"][0][1] == 2.5  # the store's clock is NOW
    assert after["fleetgen_ingest_refused"] == []  # nothing refused: no reason has a count


def test_refusals_by_reason(tmp_path: Path) -> None:
    from tests.web.conftest import start_web

    web = start_web(tmp_path, n=1, refused=lambda: {"invalid": 3, "future_timestamp": 2})
    try:
        refused = {labels["reason"]: v for labels, v in _families(web)["fleetgen_ingest_refused"]}
        assert refused == {"invalid": 3, "future_timestamp": 2}
    finally:
        web.server.stop()
        web.store.close()


def test_grafana_dashboard_reads_metrics_we_export(web: Web) -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bfleetgen_[a-z_]+", e)}
    families = list(text_string_to_metric_families(web.api.get("/metrics").body.decode()))
    exported = {s.name for f in families for s in f.samples} | {
        f.name + ("_total" if f.type == "counter" else "") for f in families}
    assert used and used <= exported, used - exported
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_requests_are_counted_by_route_template(web: Web) -> None:
    for _ in range(3):
        web.api.get("/api/v1/devices/sim-00001")
    web.api.get("/api/v1/devices/ghost")
    web.api.get("/no/such/page", check=False)
    families = _families(web)
    counts = {(labels["route"], labels["method"], labels["code"]): v
              for labels, v in families["fleetgen_http_requests"] if "route" in labels}
    assert counts[("/api/v1/devices/{device_id}", "GET", "200")] == 3
    assert counts[("/api/v1/devices/{device_id}", "GET", "404")] == 1
    assert counts[("unmatched", "GET", "404")] == 1
    assert not any("sim-00001" in route or "ghost" in route for route, _, _ in counts)
    durations = {labels["route"] for labels, _ in families["fleetgen_http_request_duration_seconds"]}
    assert "/api/v1/devices/{device_id}" in durations
