"""Bad input gets a 4xx in OpenAI's error shape naming the field, and the server keeps serving."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import IMAGE_ID, TEXT_ID, Api

LONG_PROMPT = "Elizabeth walked to Netherfield in the rain. " * 60  # well over the 256-token context

CASES: list[tuple[str, str, Any, int, str | None, str | None]] = [
    # (name, path, body, status, param, code)
    ("malformed json", "/v1/completions", b'{"model": "x", ', 400, None, None),
    ("empty body", "/v1/completions", b"", 400, None, None),
    ("not an object", "/v1/completions", b"[1, 2]", 400, None, None),
    ("missing prompt", "/v1/completions", {"model": TEXT_ID}, 400, "prompt", None),
    ("missing content type", "/v1/chat/completions", {"model": TEXT_ID, "messages": [{"content": "a"}]}, 400,
     "messages[0].role", None),
    ("prompt of wrong type", "/v1/completions", {"model": TEXT_ID, "prompt": 5}, 400, "prompt", None),
    ("max_tokens of wrong type", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "max_tokens": "9"},
     400, "max_tokens", None),
    ("max_tokens zero", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "max_tokens": 0}, 400, "max_tokens",
     None),
    ("max_tokens negative", "/v1/chat/completions",
     {"model": TEXT_ID, "messages": [{"role": "user", "content": "a"}], "max_tokens": -3}, 400, "max_tokens", None),
    ("max_tokens beyond context", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "max_tokens": 300},
     400, "max_tokens", "context_length_exceeded"),
    ("prompt beyond context", "/v1/completions", {"model": TEXT_ID, "prompt": LONG_PROMPT}, 400, "prompt",
     "context_length_exceeded"),
    ("chat beyond context", "/v1/chat/completions",
     {"model": TEXT_ID, "messages": [{"role": "user", "content": LONG_PROMPT}]}, 400, "messages",
     "context_length_exceeded"),
    ("unknown model", "/v1/completions", {"model": "gpt-4o", "prompt": "a"}, 404, "model", "model_not_found"),
    ("text model for images", "/v1/images/generations", {"model": TEXT_ID, "prompt": "3"}, 400, "model", None),
    ("image model for text", "/v1/completions", {"model": IMAGE_ID, "prompt": "3"}, 400, "model", None),
    ("temperature out of range", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "temperature": 11},
     400, "temperature", None),
    ("top_p zero", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "top_p": 0}, 400, "top_p", None),
    ("presence_penalty out of range", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "presence_penalty": 3},
     400, "presence_penalty", None),
    ("negative seed", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "seed": -1}, 400, "seed", None),
    ("n too large", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "n": 50}, 400, "n", None),
    ("too many stops", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "stop": ["a", "b", "c", "d", "e"]},
     400, "stop", None),
    ("stop of wrong type", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "stop": 3}, 400, "stop", None),
    ("logprobs", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "logprobs": 2}, 400, "logprobs", None),
    ("echo", "/v1/completions", {"model": TEXT_ID, "prompt": "a", "echo": True}, 400, "echo", None),
    ("tools", "/v1/chat/completions", {"model": TEXT_ID, "messages": [{"role": "user", "content": "a"}],
                                       "tools": [{"type": "function"}]}, 400, "tools", None),
    ("bad role", "/v1/chat/completions", {"model": TEXT_ID, "messages": [{"role": "wizard", "content": "a"}]},
     400, "messages[0].role", None),
    ("no messages", "/v1/chat/completions", {"model": TEXT_ID, "messages": []}, 400, "messages", None),
    ("image part", "/v1/chat/completions",
     {"model": TEXT_ID, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "messages[0].content", None),
    ("image size", "/v1/images/generations", {"model": IMAGE_ID, "prompt": "3", "size": "1024x1024"}, 400, "size",
     None),
    ("image url format", "/v1/images/generations", {"model": IMAGE_ID, "prompt": "3", "response_format": "url"},
     400, "response_format", None),
    ("image class out of range", "/v1/images/generations", {"model": IMAGE_ID, "prompt": "draw a 12"}, 400,
     "prompt", None),
    ("image without class", "/v1/images/generations", {"model": IMAGE_ID, "prompt": "a cat"}, 400, "prompt", None),
    ("image n", "/v1/images/generations", {"model": IMAGE_ID, "prompt": "1", "n": 9}, 400, "n", None),
]


def post(api: Api, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with api.client() as c:
        r = c.post(path, content=raw, headers={"content-type": "application/json", **(headers or {})})
    return r.status_code, r.json()


def assert_openai_error(doc: dict[str, Any], status: int) -> dict[str, Any]:
    assert set(doc) == {"error"}
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    expected_type = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                     413: "invalid_request_error", 429: "rate_limit_error", 503: "unavailable_error"}[status]
    assert err["type"] == expected_type
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(("name", "path", "body", "status", "param", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(api: Api, name: str, path: str, body: Any, status: int, param: str | None,
                     code: str | None) -> None:
    got, doc = post(api, path, body)
    assert got == status, doc
    err = assert_openai_error(doc, status)
    assert err["param"] == param, err
    assert err["code"] == code, err
    if param is not None:
        assert param.split("[")[0] in err["message"]  # the message names the field too


def test_the_server_keeps_serving_after_bad_requests(api: Api) -> None:
    for _, path, body, _, _, _ in CASES:
        post(api, path, body)
    status, doc = post(api, "/v1/completions", {"model": TEXT_ID, "prompt": "Still", "max_tokens": 3})
    assert status == 200 and doc["choices"][0]["finish_reason"] in ("length", "stop")


def test_oversized_body_is_413(fresh_api: Any) -> None:
    api = fresh_api(max_body_bytes=4096)
    status, doc = post(api, "/v1/completions", {"model": TEXT_ID, "prompt": "x" * 10_000})
    assert status == 413
    assert "4096" in assert_openai_error(doc, 413)["message"]


def test_oversized_chunked_body_is_413(fresh_api: Any) -> None:
    api = fresh_api(max_body_bytes=4096)

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 1000

    with api.client() as c:
        r = c.post("/v1/completions", content=chunks())
    assert r.status_code == 413
    assert_openai_error(r.json(), 413)


def test_api_key(fresh_api: Any, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret-key\n")
    api = fresh_api(api_key_file=str(key))
    body = {"model": TEXT_ID, "prompt": "a", "max_tokens": 1}
    status, doc = post(api, "/v1/completions", body)
    assert status == 401 and assert_openai_error(doc, 401)["code"] == "invalid_api_key"
    status, doc = post(api, "/v1/completions", body, {"authorization": "Bearer wrong"})
    assert status == 401 and "incorrect" in doc["error"]["message"]
    status, doc = post(api, "/v1/completions", body, {"authorization": "Bearer s3cret-key"})
    assert status == 200
    with api.client() as c:
        assert c.get("/health").status_code == 200  # health stays open, as llama.cpp's
        assert c.get("/v1/models").status_code == 401


def test_unknown_route_and_method(api: Api) -> None:
    with api.client() as c:
        r = c.get("/v1/embeddings")
        assert r.status_code == 404
        assert_openai_error(r.json(), 404)
        assert c.get("/v1/completions").status_code == 405


def test_garbage_instead_of_http(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", int(api.base_url.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):  # the server closes after answering
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"invalid_request_error"' in reply
