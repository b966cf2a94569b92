"""Serving under load and change: a bounded queue (429), disconnects stop generation, /health
follows loading, a bundle switch lets in-flight requests finish, slow clients are cut off."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from tests.api.conftest import TEXT, TEXT_ID, TEXT_INT4, TEXT_INT4_ID, WAIT_S, Api, wait_for


def completion(api: Api, results: list[Any], **body: Any) -> threading.Thread:
    """POST a completion on a thread; its (status, json, headers) goes to `results`."""

    def go() -> None:
        with api.client() as c:
            r = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "It was", "max_tokens": 4, **body})
            results.append((r.status_code, r.json(), r.headers))

    t = threading.Thread(target=go)
    t.start()
    return t


def test_full_queue_answers_429_with_retry_after(fresh_api: Any) -> None:
    api: Api = fresh_api(max_pending=1)
    queue = api.host.models[0].queue
    api.gate.admit_flag.clear()  # the worker takes the next request and holds it before running
    results: list[Any] = []
    first = completion(api, results)
    wait_for(lambda: api.metrics.in_flight == 1 and queue.depth == 0, "the worker to take request 1")
    second = completion(api, results)
    wait_for(lambda: queue.depth == 1, "request 2 to wait in the queue")
    with api.client() as c:
        r = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "x", "max_tokens": 2})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
    api.gate.admit_flag.set()
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert sorted(s for s, _, _ in results) == [200, 200]  # the queued ones are served
    assert api.metrics.snapshot().rejected_full == 1


def test_client_disconnect_stops_generation(fresh_api: Any) -> None:
    api: Api = fresh_api()
    api.gate.hold(after_steps=3)  # decode pauses at step 3, after text went out
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT_S)
    s.connect(str(api.socket))
    body = json.dumps({"model": TEXT_ID, "prompt": "It was", "max_tokens": 200, "stream": True,
                       "temperature": 0}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))
    received = b""
    while b"data: " not in received:
        received += s.recv(65536)
    assert api.gate.held.wait(WAIT_S)
    s.close()  # the client goes away mid-stream
    wait_for(lambda: api.metrics.snapshot().client_disconnects == 1, "the server to notice the disconnect")
    steps_when_gone = api.gate.steps
    api.gate.release()
    # the queue is FIFO: once this one is answered, the abandoned generation has ended
    with api.client() as c:
        assert c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "a", "max_tokens": 1}).status_code == 200
    assert api.gate.steps <= steps_when_gone + 2  # it stopped, it did not run to 200 tokens
    snap = api.metrics.snapshot()
    assert snap.completion_tokens <= 1 + 1  # only the last request's token(s) were completed and counted


def test_disconnect_while_queued_skips_the_request(fresh_api: Any) -> None:
    api: Api = fresh_api()
    api.gate.admit_flag.clear()
    s = socket.create_connection(("127.0.0.1", api.service.tcp_port), timeout=WAIT_S)
    body = json.dumps({"model": TEXT_ID, "prompt": "a", "max_tokens": 50}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: api.metrics.in_flight == 1, "the request to be taken")
    s.close()
    wait_for(lambda: api.metrics.snapshot().client_disconnects == 1, "the disconnect to cancel the job")
    api.gate.admit_flag.set()


def test_health_is_503_until_the_model_is_loaded(fresh_api: Any) -> None:
    api: Api = fresh_api(folders=[])
    with api.client() as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_model"
        r = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "a"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    proceed = threading.Event()
    original = api.host._load_one

    def slow_load(folder: Any) -> Any:
        assert proceed.wait(WAIT_S)
        return original(folder)

    api.host._load_one = slow_load  # type: ignore[method-assign]
    loader = threading.Thread(target=api.host.load, args=([TEXT],))
    loader.start()
    wait_for(lambda: api.host.state == "loading", "loading to begin")
    with api.client() as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["error"]["message"] == "Loading model"
        proceed.set()
        loader.join(WAIT_S)
        r = c.get("/health")
        assert r.status_code == 200 and r.json() == {"status": "ok", "models": [TEXT_ID]}


def test_bundle_switch_finishes_in_flight_on_the_old_model(fresh_api: Any) -> None:
    api: Api = fresh_api(folders=[TEXT], switch_wait_s=30.0)
    old = api.host.models[0]
    api.gate.hold(after_steps=2)
    results: list[Any] = []
    in_flight = completion(api, results, max_tokens=6, temperature=0)
    assert api.gate.held.wait(WAIT_S)  # request 1 is mid-generation on the old model
    proceed = threading.Event()
    original = api.host._load_one

    def gated_load(folder: Any) -> Any:
        assert proceed.wait(WAIT_S)
        return original(folder)

    api.host._load_one = gated_load  # type: ignore[method-assign]
    switcher = api.host.switch_in_background(TEXT_INT4)
    wait_for(lambda: api.host.state == "switching", "the switch to start")
    waiting: list[Any] = []
    newcomer = completion(api, waiting, model=None, max_tokens=2)  # arrives during the switch
    wait_for(lambda: api.metrics.in_flight == 2, "the newcomer to wait")
    proceed.set()
    switcher.join(WAIT_S)
    api.gate.release()
    in_flight.join(WAIT_S)
    newcomer.join(WAIT_S)
    assert results[0][0] == 200 and results[0][1]["model"] == TEXT_ID  # finished on the old model
    assert waiting[0][0] == 200 and waiting[0][1]["model"] == TEXT_INT4_ID  # waited, then the new one
    wait_for(lambda: old.queue is not None and old.queue._thread.is_alive() is False, "the old model to retire")
    assert api.host.switches == 1


def test_failed_switch_keeps_the_old_model(fresh_api: Any, tmp_path: Any) -> None:
    api: Api = fresh_api(folders=[TEXT])
    api.host.switch(tmp_path / "no-such-bundle")
    assert api.host.state == "ready" and [m.id for m in api.host.models] == [TEXT_ID]
    with api.client() as c:
        assert c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "a", "max_tokens": 1}).status_code == 200


def test_slow_headers_are_cut_off_without_stalling_others(fresh_api: Any) -> None:
    api: Api = fresh_api(header_timeout_s=1.0)
    slow = socket.create_connection(("127.0.0.1", api.service.tcp_port), timeout=WAIT_S)
    slow.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-drip: ")  # and never more
    with api.client() as c:  # others are served meanwhile
        assert c.get("/health").status_code == 200
    reply = b""
    while chunk := slow.recv(65536):  # the server answers 408 and closes
        reply += chunk
    slow.close()
    assert reply.startswith(b"HTTP/1.1 408")


def test_idle_connection_is_closed_after_keepalive(fresh_api: Any) -> None:
    api: Api = fresh_api(header_timeout_s=0.5)
    s = socket.create_connection(("127.0.0.1", api.service.tcp_port), timeout=WAIT_S)
    assert s.recv(1) == b""  # closed by the server, nothing sent
    s.close()


def test_metrics_are_prometheus_text(api: Api) -> None:
    with api.client() as c:
        c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "a", "max_tokens": 2})
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert any(line.startswith('fleetgen_api_requests_total{route="completions",status="200"}') for line in lines)
    assert "fleetgen_api_model_ready 1" in lines
    assert any(line.startswith('fleetgen_api_latency_ms{quantile="0.95"}') for line in lines)


def test_a_client_that_never_reads_its_stream_is_cut_off_without_stalling_others(fresh_api: Any) -> None:
    api: Api = fresh_api(stream_interval_ms=0, write_timeout_s=1.0)
    api.gate.step_delay_s = 0.002  # a chunk per token, and the generation outlasts the cut
    api.gate.hold(after_steps=1800)  # of 8 x 230: it cannot end before the server gives up on the client
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(WAIT_S)
    s.connect(str(api.socket))
    body = json.dumps({"model": TEXT_ID, "prompt": "It was", "max_tokens": 230, "n": 8, "stream": True,
                       "ignore_eos": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: %d\r\n\r\n%s" % (len(body), body))  # and never reads a byte
    wait_for(lambda: api.metrics.in_flight == 1, "the stream to start")
    with api.client() as c:
        assert c.get("/health").status_code == 200  # the loop serves others meanwhile
    # ~1 KiB of socket buffer per small write fills within some hundreds of chunks; then every
    # write waits, and after write_timeout_s the server cuts the client off and cancels the job
    wait_for(lambda: api.metrics.snapshot().client_disconnects == 1, "the server to give up on the client")
    api.gate.release()
    with api.client() as c:
        r = c.post("/v1/completions", json={"model": TEXT_ID, "prompt": "a", "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200
    assert api.gate.steps < 1800  # the abandoned generation stopped early
    completed = api.metrics.snapshot().completion_tokens - 2  # choices finished before the cut, whole
    assert completed % 230 == 0 and completed < 8 * 230
    s.close()
