"""A plain HTTP client for the web tests that checks every JSON answer against the server's
own OpenAPI document (the status must be documented for the operation, the body must match
its schema) and records which (operation, status) pairs the tests have exercised."""

from __future__ import annotations

import http.client
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator

# (METHOD, path template, status) seen across the web tests.
EXERCISED: set[tuple[str, str, int]] = set()
# (module, test) pairs that ran: the coverage check needs every API module to have run whole.
RAN: set[tuple[str, str]] = set()
# The OpenAPI document the last client read (every test server serves the same one).
LAST_DOC: dict[str, Any] = {}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.base = base_url
        self.token = token
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.doc = json.loads(self.request("GET", "/openapi.json", check=False).body)
        LAST_DOC.clear()
        LAST_DOC.update(self.doc)
        self._templates = sorted(self.doc["paths"], key=lambda t: (t.count("{"), t))

    def template(self, path: str) -> str:
        bare = path.split("?", 1)[0]
        for t in self._templates:
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", t), bare):
                return t
        raise AssertionError(f"{bare} is not in the OpenAPI document")

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None, check: bool = True, chunked: bool = False) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        hdrs = dict(headers or {})
        token = token if token is not None else self.token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        try:
            if chunked:
                conn.request(method, path, body=iter([data or b""]), headers=hdrs, encode_chunked=True)
            else:
                conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            answer = Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()
        if check:
            self.check(method, path, answer)
        return answer

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def check(self, method: str, path: str, answer: Answer) -> None:
        template = self.template(path)
        operation = self.doc["paths"][template].get(method.lower())
        assert operation is not None, f"{method} {template} is not documented"
        documented = operation["responses"].get(str(answer.status))
        assert documented is not None, (
            f"{method} {path} answered {answer.status}, documented: {sorted(operation['responses'])}: "
            f"{answer.body[:300]!r}")
        EXERCISED.add((method, template, answer.status))
        content = documented.get("content", {})
        if "application/json" in content:
            assert answer.headers["content-type"].startswith("application/json"), answer.headers
            schema = {**content["application/json"]["schema"], "components": self.doc["components"]}
            errors = sorted(Draft202012Validator(schema).iter_errors(answer.json()), key=str)
            assert not errors, f"{method} {path}: body does not match the OpenAPI schema: {errors[0].message}"
        elif content:
            [media] = content
            assert answer.headers["content-type"].startswith(media), (answer.headers, media)


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(method.upper(), template, int(status))
            for template, ops in doc["paths"].items() for method, op in ops.items()
            for status in op["responses"]}
