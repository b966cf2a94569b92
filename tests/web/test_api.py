"""The REST API, endpoint by endpoint, happy paths and each error answer; every answer is
checked against the server's OpenAPI document (tests/web/client.py). The last test checks
that every documented (operation, status) pair was exercised."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.mqtt.link import MqttLink
from agent.mqtt.settings import MqttSettings
from agent.protocol import Channel, decode, device_topic
from agent.protocol.codec import decode_as
from agent.protocol.messages import DesiredState, SignedEnvelope
from agent.update.bundle import build_bundle
from controller.demo.brokers import Mosquitto
from controller.tuf.repository import Repository
from controller.web.settings import HttpSettings
from tests.trust.models import make_model_dir
from tests.web.client import RAN, documented_operations
from tests.web.conftest import HOSTILE, NOW, Web, start_web, wait_until


@pytest.fixture(autouse=True)
def _ran(request: pytest.FixtureRequest) -> None:
    RAN.add((__name__, request.node.originalname))


# -- devices --------------------------------------------------------------------------------


def test_device_list_pages_filters_and_sorts(web: Web) -> None:
    api = web.api
    body = api.get("/api/v1/devices").json()
    assert body["total"] == 13 and body["limit"] == 100 and len(body["devices"]) == 13
    assert [d["id"] for d in body["devices"]] == sorted(d.id for d in web.devices)
    first, second = (api.get(f"/api/v1/devices?limit=5&offset={o}").json() for o in (0, 5))
    assert first["total"] == 13 and len(first["devices"]) == 5
    assert not {d["id"] for d in first["devices"]} & {d["id"] for d in second["devices"]}
    offline = api.get("/api/v1/devices?status=offline").json()
    assert {d["id"] for d in offline["devices"]} == {d.id for d in web.devices if not d.online}
    assert all(d["status"] == "offline" for d in offline["devices"])
    kria = api.get("/api/v1/devices?board=kria-kv260&bundle=austen-3m-int8-1.1.0&health=ok").json()
    assert kria["total"] == 3 and all(d["board"] == "kria-kv260" for d in kria["devices"])
    assert [d["id"] for d in api.get("/api/v1/devices?q=0001").json()["devices"]] == ["sim-00001", "sim-00010",
                                                                                      "sim-00011"]
    by_power = api.get("/api/v1/devices?sort=power_w&order=desc").json()["devices"]
    powers = [d["power_w"] for d in by_power]
    # The hostile device never sent telemetry: no power, listed last.
    assert powers[-1] is None and powers[:-1] == sorted(powers[:-1], reverse=True)
    assert api.get("/api/v1/devices?q=%25").json()["total"] == 0  # LIKE wildcards are literal


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "query.limit"), ("limit=10001", "query.limit"), ("offset=-1", "query.offset"),
    ("status=sleeping", "query.status"), ("sort=color", "query.sort"), ("order=up", "query.order"),
    ("limit=ten", "query.limit"), ("q=" + "x" * 64, "query.q"),
])
def test_device_list_bad_parameters_name_the_field(web: Web, query: str, field: str) -> None:
    answer = web.api.get(f"/api/v1/devices?{query}")
    assert answer.status == 422 and answer.json()["error"].startswith(field + ":"), answer.json()


def test_one_device_has_reported_desired_and_last_sample(web: Web) -> None:
    body = web.api.get("/api/v1/devices/sim-00002").json()
    assert body["device"]["id"] == "sim-00002" and body["device"]["board"] == "raspberry-pi-5"
    assert body["reported"]["active_bundle"] == "austen-3m-int8-1.0.0"
    assert body["reported"]["power"]["budget_w"] == body["device"]["budget_w"] == 10.0
    assert body["desired"] == {"applied_version": 0, "version": None, "target": None, "power_budget_w": None}
    assert body["tags"] == [] and body["labels"] == {}
    assert body["last_sample"]["seq"] == 119 and body["last_sample"]["power_w"] == body["device"]["power_w"]


def test_unknown_and_malformed_device_ids(web: Web) -> None:
    for path in ("", "/telemetry", "/events"):
        answer = web.api.get(f"/api/v1/devices/no-such-device{path}")
        assert answer.status == 404 and "no-such-device" in answer.json()["error"]
        bad = web.api.get(f"/api/v1/devices/Bad_Id{path}")
        assert bad.status == 422 and bad.json()["error"].startswith("path.device_id:")


def test_telemetry_raw_and_averaged(web: Web) -> None:
    raw = web.api.get(f"/api/v1/devices/sim-00001/telemetry?since={NOW - 600}&until={NOW}").json()
    assert raw["step"] is None and len(raw["t"]) == 20 and raw["t"] == sorted(raw["t"])
    assert set(raw["series"]) >= {"power_w", "tokens_per_s", "latency_ms", "temp_c", "mem_used_mb"}
    assert all(len(v) == 20 for v in raw["series"].values())
    avg = web.api.get(f"/api/v1/devices/sim-00001/telemetry?since={NOW - 3600}&until={NOW}&step=600"
                      "&fields=power_w,temp_c").json()
    assert set(avg["series"]) == {"power_w", "temp_c"} and avg["step"] == 600
    assert 6 <= len(avg["t"]) <= 7 and all(t % 600 == 0 for t in avg["t"])
    # An average lies within the raw values of its bucket.
    full = web.api.get(f"/api/v1/devices/sim-00001/telemetry?since={NOW - 3600}&until={NOW}").json()
    bucket = [p for t, p in zip(full["t"], full["series"]["power_w"], strict=True) if avg["t"][1] <= t < avg["t"][2]]
    assert min(bucket) <= avg["series"]["power_w"][1] <= max(bucket)
    default = web.api.get("/api/v1/devices/sim-00001/telemetry").json()  # the last hour
    assert default["until"] == NOW and default["since"] == NOW - 3600 and len(default["t"]) == 120
    empty = web.api.get("/api/v1/devices/sim-hostile/telemetry").json()
    assert empty["t"] == [] and empty["series"]["power_w"] == []


@pytest.mark.parametrize(("query", "field"), [
    (f"since={NOW}&until={NOW - 1}", "query.since"), (f"since=0&until={NOW}", "query.since"),
    ("step=0", "query.step"), ("fields=power_w,colour", "query.fields"), ("fields=,", "query.fields"),
    ("since=yesterday", "query.since"),
])
def test_telemetry_bad_parameters_name_the_field(web: Web, query: str, field: str) -> None:
    answer = web.api.get(f"/api/v1/devices/sim-00001/telemetry?{query}")
    assert answer.status == 422 and answer.json()["error"].startswith(field + ":"), answer.json()


def test_events_newest_first_with_filters(web: Web) -> None:
    events = web.api.get("/api/v1/devices/sim-00003/events").json()["events"]
    assert [e["kind"] for e in events] == ["install.committed", "install.started"]
    assert events[0]["details"] == {"bundle": "austen-3m-int8-1.1.0", "ok": True}
    assert len(web.api.get("/api/v1/devices/sim-00003/events?kind=install").json()["events"]) == 2
    assert [e["seq"] for e in web.api.get("/api/v1/devices/sim-00003/events?limit=1").json()["events"]] == [2]
    assert web.api.get("/api/v1/devices/sim-00003/events?level=error").json()["events"] == []
    assert len(web.api.get(f"/api/v1/devices/sim-00003/events?since={NOW - 90}").json()["events"]) == 1
    for query, field in (("limit=0", "query.limit"), ("level=loud", "query.level"), ("kind=Bad!", "query.kind")):
        answer = web.api.get(f"/api/v1/devices/sim-00003/events?{query}")
        assert answer.status == 422 and answer.json()["error"].startswith(field + ":")


# -- writes: tokens, bodies ---------------------------------------------------------------------


def test_writes_need_a_valid_token(web: Web) -> None:
    body = {"target": None, "power_budget_w": 4.0}
    for token in ("", "fgt_not-a-real-token", "garbage"):
        answer = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", body, token=token)
        assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["error"].startswith("authorization:")
    basic = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", body,
                            headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401
    # A valid token, but this controller has no repository or broker link.
    answer = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", body, token=web.token)
    assert answer.status == 503 and "repository" in answer.json()["error"]


def test_a_revoked_token_is_refused(web: Web) -> None:
    ctx = web.server.ctx
    token = ctx.tokens.create("short-lived")
    body = {"power_budget_w": 4.0}
    assert web.api.request("PUT", "/api/v1/devices/sim-00001/desired", body, token=token).status == 503
    ctx.tokens.revoke("short-lived")
    assert web.api.request("PUT", "/api/v1/devices/sim-00001/desired", body, token=token).status == 401


def test_bad_bodies(web: Web) -> None:
    path = "/api/v1/devices/sim-00001/desired"
    put = web.api.request
    malformed = put("PUT", path, raw=b"{not json", token=web.token)
    assert malformed.status == 400 and malformed.json()["error"] == "body: not valid JSON"
    for body, field in (({"power_budget_w": -1}, "body.power_budget_w"), ({"colour": "red"}, "body.colour"),
                        ({"power_budget_w": "lots"}, "body.power_budget_w"), ({"target": ""}, "body.target")):
        answer = put("PUT", path, body, token=web.token)
        assert answer.status == 422 and answer.json()["error"].startswith(field + ":"), answer.json()
    big = b'{"target": "' + b"x" * 70_000 + b'"}'
    for chunked in (False, True):
        answer = put("PUT", path, raw=big, token=web.token, chunked=chunked)
        assert answer.status == 413 and answer.json()["error"].startswith("body:")
    assert web.api.get("/api/v1/devices?limit=1").status == 200  # still serving


def test_server_keeps_serving_after_garbage(web: Web) -> None:
    for payload in (b"\x00\xff garbage\r\n\r\n", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
                    b"POST /api/v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"):
        with socket.create_connection((web.server.host, web.server.port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
    assert web.api.get("/api/v1/devices?limit=1").status == 200


def test_a_database_failure_is_503_and_the_server_keeps_serving(web: Web) -> None:
    from sqlalchemy import text

    tables = ("devices", "groups", "rollouts")
    with web.store.engine.begin() as c:
        for table in tables:
            c.execute(text(f"alter table {table} rename to {table}_away"))
    for path in ("/api/v1/devices", "/api/v1/devices/sim-00001", "/api/v1/devices/sim-00001/telemetry",
                 "/api/v1/devices/sim-00001/events", "/metrics", "/api/v1/groups", "/api/v1/groups/lab",
                 "/api/v1/groups/lab/power", "/api/v1/rollouts", "/api/v1/rollouts/1"):
        answer = web.api.get(path)
        assert answer.status == 503 and answer.json()["error"] == "database unavailable", path
    for method, path, body in (("PUT", "/api/v1/devices/sim-00001/desired", {"power_budget_w": 1}),
                               ("PUT", "/api/v1/groups/lab/budget", {"budget_w": 1}),
                               ("POST", "/api/v1/rollouts/1/pause", None)):
        assert web.api.request(method, path, body, token=web.token).status == 503, path
    with web.store.engine.begin() as c:
        for table in tables:
            c.execute(text(f"alter table {table}_away rename to {table}"))
    assert web.api.get("/api/v1/devices/sim-00001").status == 200


# -- reads from elsewhere -------------------------------------------------------------------------


@pytest.fixture
def closed(tmp_path: Path) -> Iterator[Web]:
    """A controller that asks for a token on every read (as it does for other hosts)."""
    w = start_web(tmp_path, n=2, settings=HttpSettings(open_reads_on_localhost=False))
    yield w
    w.server.stop()
    w.store.close()


def test_reads_need_a_token_when_not_open(closed: Web) -> None:
    reads = [t for t, ops in closed.api.doc["paths"].items() if "get" in ops]
    for template in reads:
        path = template.replace("{device_id}", "sim-00000").replace("{path}", "x.fgb")
        assert closed.api.get(path).status == 401, path
    assert closed.api.get("/api/v1/devices/sim-00000", token=closed.token).status == 200
    assert closed.api.get("/metrics", token=closed.token).status == 200
    # The dashboard's pages and the document itself stay open: they hold no fleet data.
    assert closed.api.get("/", check=False).status == 200


# -- bundles and desired state, with a repository and a broker -------------------------------------


@pytest.fixture
def with_repo(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[tuple[Web, Mosquitto]]:
    from controller.director import Director
    from controller.services.director import DirectorPublisher
    from controller.web.metrics import MeteredStore

    repo = Repository.create(tmp_path / "repo")
    model = make_model_dir(tmp_path / "models", version="1.0.0", boards=("jetson-orin-nano",))
    build_bundle(model, tmp_path / "tiny-1.0.0.fgb")
    repo.publish(tmp_path / "tiny-1.0.0.fgb")
    link = MqttLink.open(MqttSettings(url=mosquitto.url))
    store = MeteredStore(f"sqlite:///{tmp_path / 'controller.db'}", clock=lambda: NOW)
    publisher = DirectorPublisher(Director(repo), store.repos.desired, link, clock=lambda: NOW)
    w = start_web(tmp_path, n=2, store=store, repo_dir=repo.path, publisher=publisher)
    yield w, mosquitto
    w.server.stop()
    link.stop()
    w.store.close()


def test_bundles_are_the_published_targets(with_repo: tuple[Web, Mosquitto], tmp_path: Path) -> None:
    web, _ = with_repo
    [bundle] = web.api.get("/api/v1/bundles").json()["bundles"]
    assert bundle["path"] == "tiny-1.0.0.fgb" and bundle["name"] == "tiny" and bundle["version"] == "1.0.0"
    assert bundle["boards"] == ["jetson-orin-nano"] and bundle["length"] == (tmp_path / "tiny-1.0.0.fgb").stat().st_size
    assert web.api.get("/api/v1/bundles/tiny-1.0.0.fgb").json() == bundle
    missing = web.api.get("/api/v1/bundles/tiny-9.fgb")
    assert missing.status == 404 and "tiny-9.fgb" in missing.json()["error"]
    assert web.api.get("/api/v1/bundles/" + "x" * 600).status == 422


def test_bundles_without_a_repository(web: Web) -> None:
    for path in ("/api/v1/bundles", "/api/v1/bundles/tiny-1.0.0.fgb"):
        answer = web.api.get(path)
        assert answer.status == 503 and "repository" in answer.json()["error"]


def _retained_desired(url_port: int, device_id: str) -> list[bytes]:
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.on_message = lambda c, u, m: got.append(m.payload)
    client.connect("127.0.0.1", url_port)
    client.subscribe(device_topic(device_id, Channel.DESIRED), qos=1)
    client.loop_start()
    try:
        wait_until(lambda: got, what="the retained desired state")
    finally:
        client.disconnect()
        client.loop_stop()
    return got


def test_put_desired_signs_and_publishes_through_the_director_publisher(with_repo: tuple[Web, Mosquitto]) -> None:
    web, broker = with_repo
    answer = web.api.request("PUT", "/api/v1/devices/sim-00001/desired",
                             {"target": "tiny-1.0.0.fgb", "power_budget_w": 6.5}, token=web.token)
    assert answer.status == 200, answer.body
    assert answer.json() == {"device_id": "sim-00001", "version": 1, "target": "tiny-1.0.0.fgb",
                             "power_budget_w": 6.5}
    [payload] = _retained_desired(broker.port, "sim-00001")
    envelope = decode(Channel.DESIRED, payload, "sim-00001")
    assert isinstance(envelope, SignedEnvelope)
    state = decode_as(DesiredState, envelope.payload)
    assert state.target is not None and state.target.path == "tiny-1.0.0.fgb" and state.power_budget_w == 6.5
    assert state.version == 1
    # The store keeps what was directed; the device's view shows it.
    desired = web.api.get("/api/v1/devices/sim-00001").json()["desired"]
    assert desired == {"applied_version": 0, "version": 1, "target": "tiny-1.0.0.fgb", "power_budget_w": 6.5}
    # A field left out keeps its value; null clears it.
    again = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", {"power_budget_w": 3}, token=web.token)
    assert again.json() == {"device_id": "sim-00001", "version": 2, "target": "tiny-1.0.0.fgb", "power_budget_w": 3}
    cleared = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", {"target": None}, token=web.token)
    assert cleared.json()["target"] is None and cleared.json()["power_budget_w"] == 3
    unknown = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", {"target": "nope-1.fgb"}, token=web.token)
    assert unknown.status == 404 and "nope-1.fgb" in unknown.json()["error"]
    nobody = web.api.request("PUT", "/api/v1/devices/ghost/desired", {"power_budget_w": 3}, token=web.token)
    assert nobody.status == 404 and "ghost" in nobody.json()["error"]
    bad = web.api.request("PUT", "/api/v1/devices/BAD/desired", {"power_budget_w": 3}, token=web.token)
    assert bad.status == 422
    # A revoked device gets no document: 409 naming why, not a 500 (ADR 0072).
    web.store.repos.devices.revoke("sim-00001", now=NOW)
    revoked = web.api.request("PUT", "/api/v1/devices/sim-00001/desired", {"power_budget_w": 3}, token=web.token)
    assert revoked.status == 409 and "revoked" in revoked.json()["error"]


# -- the dashboard's files and the document -------------------------------------------------------


def test_pages_and_assets(web: Web) -> None:
    for path in ("/", "/devices/sim-00001"):
        answer = web.api.get(path, check=False)
        assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
        assert b"/static/app.js" in answer.body
    js = web.api.get("/static/vendor/plotly.min.js", check=False)
    assert js.status == 200 and b"plotly" in js.body[:2000].lower() and len(js.body) > 1_000_000
    assert web.api.get("/static/app.js", check=False).status == 200
    assert web.api.get("/static/nope.js", check=False).status == 404


def test_openapi_document_describes_the_api(web: Web) -> None:
    doc = web.api.doc
    assert doc["openapi"].startswith("3.")
    ops = documented_operations(doc)
    assert ("GET", "/api/v1/devices/{device_id}/telemetry", 200) in ops
    assert ("PUT", "/api/v1/devices/{device_id}/desired", 413) in ops
    params = {p["name"] for p in doc["paths"]["/api/v1/devices"]["get"]["parameters"]}
    assert params == {"status", "board", "bundle", "health", "q", "sort", "order", "limit", "offset"}
    assert not any(t.startswith("/static") or t == "/" for t in doc["paths"])
    assert HOSTILE not in str(doc)
