"""Property-based fuzzing (hypothesis) of every parser of outside input, through the targets
in tests/fuzz/targets.py: each input is refused the documented way or accepted, never a
traceback, a 500, or a file outside the bundle's folder. Fast (part of `make test`); the
coverage-guided run of the same targets is `make fuzz`."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocol import messages
from tests.fuzz import targets

FAST = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=20)


@pytest.fixture(autouse=True, scope="module")
def _servers() -> Iterator[None]:
    yield
    targets.shutdown()  # the local API and the REST face the HTTP targets started


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)  # every refusal logs; thousands of lines say nothing here
    yield
    logging.disable(logging.NOTSET)


scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                       max_size=4), max_leaves=10)


def _dumps(v: object) -> bytes:
    return json.dumps(v, allow_nan=True).encode()


def documents(cls: type[msgspec.Struct]) -> st.SearchStrategy[bytes]:
    """JSON objects with the message's own field names (so validation goes past the first
    missing field), schema 1 and our device id mostly, any value anywhere."""
    names = [f.encode_name for f in msgspec.structs.fields(cls)]
    base = {"schema": st.sampled_from([1, 1, 1, 0, 2, "1"]), "device_id": st.sampled_from([targets.DEVICE, "x", ""])}
    fields = {n: base.get(n, json_values) for n in names}
    return st.fixed_dictionaries({}, optional=fields).map(_dumps)


def raw_or(doc: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(doc, st.binary(max_size=300), json_values.map(_dumps))


MQTT = {
    "mqtt_status": messages.Status, "mqtt_reported": messages.Reported, "mqtt_desired": messages.SignedEnvelope,
    "mqtt_telemetry": messages.TelemetryBatch, "mqtt_events": messages.Event, "mqtt_req": messages.Request,
}


@pytest.mark.parametrize("name", sorted(MQTT))
def test_mqtt_payloads_of_every_topic(name: str) -> None:
    @FAST
    @given(raw_or(documents(MQTT[name])))
    def check(data: bytes) -> None:
        targets.TARGETS[name](data)

    check()


@FAST
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.binary(min_size=4, max_size=4), st.integers(0, 2**32 - 1),
                           documents(messages.ResponseHeader), st.binary(max_size=64))
                 .map(lambda t: b"FGR1" + t[1].to_bytes(4, "big") + t[2] + t[3] if t[0] != b"xxxx" else b"")))
def test_mqtt_response_frames(data: bytes) -> None:
    targets.mqtt_resp(data)


@SLOW
@given(st.one_of(documents(messages.TelemetryBatch), documents(messages.Event), documents(messages.Reported),
                 documents(messages.Status),
                 # valid-looking batches with hostile numbers in the samples
                 st.lists(st.fixed_dictionaries({"seq": scalars, "ts": scalars}, optional={
                     "cpu_pct": scalars, "mem_mb": scalars, "temp_c": scalars}), max_size=3)
                 .map(lambda s: _dumps({"schema": 1, "device_id": targets.DEVICE, "samples": s}))))
def test_controller_ingest_of_every_device_topic(data: bytes) -> None:
    targets.controller_ingest(data)


# -- bundles ------------------------------------------------------------------------------------

MANIFEST_FIELDS = ["schema", "name", "version", "task", "engine", "model", "tokenizer", "files", "boards",
                   "text", "image", "quantization", "defaults", "self_test", "ram_mb"]


@FAST
@given(st.one_of(st.binary(max_size=200), st.fixed_dictionaries({}, optional={
    k: (st.lists(st.fixed_dictionaries({"path": st.sampled_from(["a", "../a", "/etc/x", "a/../../b", "ok.bin",
                                                                  "a\x00b", ""]) | st.text(max_size=10),
                                        "length": scalars, "sha256": st.text(max_size=70)}), max_size=3)
        if k == "files" else json_values) for k in MANIFEST_FIELDS}).map(_dumps)))
def test_bundle_manifests(data: bytes) -> None:
    targets.manifest(data)


HOSTILE_NAMES = ["../evil", "/etc/evil", "a/../../evil", "./../evil", "a/b/../../../evil", "..", ".", "",
                 "manifest.json/../../evil", "x" * 300, "a\nb", "C:\\evil", "\\\\host\\evil"]
KINDS = {"reg": tarfile.REGTYPE, "sym": tarfile.SYMTYPE, "lnk": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
         "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE, "cont": tarfile.CONTTYPE}


@st.composite
def hostile_tars(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A tar whose first member is a real manifest and then members an attacker would send;
    returns (bytes, hostile): hostile when some member must be refused for what it is."""
    buf = io.BytesIO()
    hostile = False
    fmt = draw(st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT]))
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        manifest = b'{"schema":1}'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tf.addfile(info, io.BytesIO(manifest))
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(sorted(KINDS)))
            name = draw(st.sampled_from(HOSTILE_NAMES) | st.text(min_size=1, max_size=12))
            info = tarfile.TarInfo(name)
            info.type = KINDS[kind]
            if kind in ("sym", "lnk"):
                info.linkname = draw(st.sampled_from(["/etc/passwd", "../../x", "manifest.json", "."]))
            if kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
                info.pax_headers = draw(st.dictionaries(
                    st.sampled_from(["path", "linkpath", "size", "uid", "mtime", "hdrcharset", "GNU.sparse.map",
                                     "GNU.sparse.size", "comment"]),
                    st.sampled_from(["../../evil", "/abs", "99999999999999999999", "-1", "x" * 2000, "1e9", "BINARY",
                                     "0,1,2"]), max_size=3))
            data = b"x" * draw(st.integers(0, 64))
            info.size = len(data) if kind in ("reg", "cont") else 0
            hostile = hostile or kind not in ("reg", "cont") or name in HOSTILE_NAMES or bool(info.pax_headers)
            try:
                tf.addfile(info, io.BytesIO(data) if info.size else None)
            except (ValueError, UnicodeError, tarfile.TarError):
                continue  # tarfile will not even write it; what it wrote so far is the input
    return buf.getvalue(), hostile


@FAST
@given(hostile_tars())
def test_hostile_tar_members_are_refused(case: tuple[bytes, bool]) -> None:
    """Traversal, absolute names, links, devices, fifos, directories, hostile pax headers:
    verification refuses (the manifest here lists no files, so any member after it is
    refused too) and nothing lands outside the destination."""
    from agent.trust.errors import TrustError
    from agent.update.bundle import verify_bundle

    data, _hostile = case
    with pytest.raises(TrustError):
        verify_bundle(io.BytesIO(data))
    targets.bundle(data)  # the same with a destination: nothing outside it, no links, no devices


def test_huge_member_headers_are_refused_before_reading() -> None:
    """A member that claims 2**40 bytes (in the octal header and in a pax `size`) is refused
    from its header, not by reading a terabyte."""
    from agent.trust.errors import TrustError
    from agent.update.bundle import verify_bundle

    for fmt, pax in ((tarfile.GNU_FORMAT, {}), (tarfile.PAX_FORMAT, {"size": str(2**40)})):
        info = tarfile.TarInfo("manifest.json")
        info.size = 2**40 if not pax else 10
        info.pax_headers = pax
        data = info.tobuf(fmt) + b"{}" * 5 + b"\0" * (512 * 3 - 10)  # a header, 10 bytes, no terabyte
        with pytest.raises(TrustError):
            verify_bundle(io.BytesIO(data))


# -- director and TUF documents -----------------------------------------------------------------

DESIRED_FIELDS = {"schema": st.sampled_from([1, 2]), "device_id": st.sampled_from([targets.DEVICE, "dev-2"]),
                  "version": st.integers(-5, 2**65), "expires": scalars, "target": json_values,
                  "config": json_values, "power_budget_w": scalars, "issued": scalars}


@SLOW
@given(st.one_of(
    documents(messages.SignedEnvelope),
    # any payload, signed by the real director key: the checks after the signature
    st.fixed_dictionaries({}, optional=DESIRED_FIELDS).map(lambda d: targets.sign_director(_dumps(d))),
    st.binary(max_size=200).map(targets.sign_director),
))
def test_director_documents(data: bytes) -> None:
    targets.director(data)


@SLOW
@given(st.one_of(st.binary(max_size=200), json_values.map(_dumps),
                 st.fixed_dictionaries({"signed": st.fixed_dictionaries({}, optional={
                     "_type": st.sampled_from(["timestamp", "root", "x"]), "spec_version": st.sampled_from(
                         ["1.0.31", "2.0", "x"]), "version": scalars, "expires": st.sampled_from(
                         ["2030-01-01T00:00:00Z", "garbage", ""]) | st.text(max_size=5),
                     "meta": json_values}), "signatures": st.lists(st.fixed_dictionaries(
                         {"keyid": st.text(max_size=64), "sig": st.text(max_size=20)}), max_size=2)}).map(_dumps)))
def test_tuf_timestamp_documents(data: bytes) -> None:
    targets.tuf_timestamp(data)


# -- config files ---------------------------------------------------------------------------------

toml_values = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.text(max_size=20)
                        .map(lambda s: json.dumps(s)), st.just("[1, 2]"), st.just("{a = 1}"), st.just("1979-05-27"))
toml_docs = st.lists(st.tuples(st.sampled_from(["", "[mqtt]", "[telemetry]", "[api]", "[spool]", "[update]",
                                                "[board]", "[power]", "[enroll]", "[http]"]),
                               st.sampled_from(["device_id", "state_dir", "url", "keepalive", "listen", "max_bytes",
                                                "sample_interval_s", "window", "profile", "enabled", "database_url",
                                                "repository", "socket", "protocol", "tls_ca", "x"]),
                               toml_values), max_size=6).map(
    lambda rows: "\n".join(f"{sec}\n{k} = {v}" for sec, k, v in rows).encode())


@FAST
@given(st.one_of(toml_docs, st.binary(max_size=200)))
def test_config_files(data: bytes) -> None:
    targets.agent_config(data)
    targets.controller_config(data)


# -- local API, REST, enrollment ----------------------------------------------------------------

API_FIELDS = ["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "stream", "stop",
              "seed", "n", "stream_options", "response_format", "size", "repetition_penalty", "logprobs"]


@FAST
@given(st.one_of(st.binary(max_size=200), st.fixed_dictionaries({}, optional={k: json_values for k in API_FIELDS})
                 .map(_dumps)))
def test_local_api_bodies(data: bytes) -> None:
    targets.api_body(data)


@st.composite
def http_requests(draw: st.DrawFn, paths: list[str], auth: str | None = None) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", "G\x00T"]))
    path = draw(st.sampled_from(paths)).replace("{", "").replace("}", "")
    path += draw(st.sampled_from(["", "?limit=-1", "?limit=99999999999999999999", "?since=nan", "/../../etc",
                                  "%00", "?a=%ff%fe", "/" + "x" * 3000]) | st.text(max_size=8))
    body = draw(st.one_of(st.binary(max_size=120), st.fixed_dictionaries({}, optional={
        k: json_values for k in [*API_FIELDS, "name", "group", "target", "waves", "devices", "budget_w"]}).map(_dumps)))
    headers = ["Host: 127.0.0.1"]
    if draw(st.booleans()):
        headers.append(draw(st.sampled_from([f"Content-Length: {len(body)}", "Content-Length: -1",
                                             "Content-Length: 99999999999", "Transfer-Encoding: chunked",
                                             "Content-Length: 1, 2"])))
    headers.append(draw(st.sampled_from(["Content-Type: application/json", "Content-Type: text/plain", "X: y"])))
    if auth is not None and draw(st.booleans()):
        headers.append(f"Authorization: Bearer {auth}")
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/9.9", ""]))
    head = f"{method} {path} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("utf-8", "surrogatepass") + body


LOCAL_PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/images/generations", "/v1/models", "/health",
               "/metrics", "/v1/models/{x}", "/", "//"]


@SLOW
@given(st.one_of(http_requests(LOCAL_PATHS), st.binary(max_size=200)))
def test_local_api_http_requests(data: bytes) -> None:
    targets.api_http(data)


def _rest_paths() -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{targets._web().server.url}/openapi.json", timeout=30) as r:
        return [*sorted(json.loads(r.read())["paths"]), "/", "/dashboard", "/metrics"]


def test_rest_requests() -> None:
    paths = _rest_paths()

    @SLOW
    @given(st.one_of(http_requests(paths, targets.web_token()), st.binary(max_size=200)))
    def check(data: bytes) -> None:
        targets.rest_http(data)

    check()


@SLOW
@given(st.one_of(st.binary(max_size=200), st.fixed_dictionaries({
    "token": st.one_of(st.text(max_size=40), st.sampled_from(["fgt1.dev-1.x.y", "fgt1..", "a.b.c.d.e.f"])),
    "csr": st.one_of(st.text(max_size=60), st.just("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"
                                                   "-----END CERTIFICATE REQUEST-----\n")),
}, optional={"schema": scalars}).map(_dumps)))
def test_enrollment_requests(data: bytes) -> None:
    targets.enroll_request(data)
