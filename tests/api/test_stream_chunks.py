"""Streamed text leaves in chunks paced by `stream_interval_ms` (ADR 0061): the first token
at once, later tokens gathered while a chunk is out, the end of the generation sent without
waiting out the interval, and the text the same as without streaming."""

from __future__ import annotations

import json
import threading
from typing import Any

from tests.api.conftest import TEXT_ID, WAIT_S, Api

BODY = {"model": TEXT_ID, "prompt": "It is a truth universally acknowledged", "max_tokens": 24,
        "temperature": 0, "ignore_eos": True}


def stream_texts(api: Api, seen_first: threading.Event | None = None) -> list[str]:
    texts = []
    with api.client() as c, c.stream("POST", "/v1/completions", json={**BODY, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["text"]:
                    texts.append(choices[0]["text"])
                    if seen_first is not None:
                        seen_first.set()
    return texts


def test_first_token_at_once_then_one_chunk_for_the_rest(fresh_api: Any) -> None:
    api: Api = fresh_api()
    with api.client() as c:
        whole = c.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
    # an interval far beyond the client's timeout: only the end of the job can cut the
    # pause after the first chunk short (were it waited out, this test would time out)
    api.service.routes.stream_interval_s = 10 * WAIT_S
    api.gate.hold(after_steps=1)  # the worker stops after the first token
    first = threading.Event()
    out: list[list[str]] = []
    client = threading.Thread(target=lambda: out.append(stream_texts(api, first)))
    client.start()
    assert api.gate.held.wait(WAIT_S)
    assert first.wait(WAIT_S)  # the first token reached the client while the worker was held
    api.gate.release()
    client.join(WAIT_S)
    texts = out[0]
    assert len(texts) == 2  # the first token, then the 23 after it in one chunk
    assert "".join(texts) == whole


def test_interval_zero_sends_each_token_while_the_loop_keeps_up(fresh_api: Any) -> None:
    api: Api = fresh_api(stream_interval_ms=0)
    assert api.service.routes.stream_interval_s == 0
    with api.client() as c:
        whole = c.post("/v1/completions", json=BODY).json()["choices"][0]["text"]
    api.gate.hold(after_steps=1)  # one token out, then held: it left as a chunk of its own
    first = threading.Event()
    out: list[list[str]] = []
    client = threading.Thread(target=lambda: out.append(stream_texts(api, first)))
    client.start()
    assert api.gate.held.wait(WAIT_S)
    assert first.wait(WAIT_S)
    api.gate.release()
    client.join(WAIT_S)
    assert "".join(out[0]) == whole and len(out[0]) >= 2


def test_a_request_not_streamed_counts_its_first_token_not_its_end(fresh_api: Any) -> None:
    api: Api = fresh_api()
    api.gate.step_delay_s = 0.01  # decode takes >= 0.23 s; prefill and the queue a few ms
    with api.client() as c:
        r = c.post("/v1/completions", json=BODY)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 24
    snap = api.metrics.snapshot()
    assert snap.ttft_ms_p50 is not None and snap.latency_ms_p50 is not None
    assert snap.ttft_ms_p50 < snap.latency_ms_p50 / 2  # latency minus decode, not the whole latency
