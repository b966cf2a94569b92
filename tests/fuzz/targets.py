"""Every parser of outside input, as a fuzz target `(bytes) -> None` that passes when the
input is refused the documented way (or accepted) and raises anything else.

The same targets run under hypothesis (tests/fuzz/test_parsers.py, in `make test`) and
under atheris (tests/fuzz/harness.py, `make fuzz`). A target's context (a signed
repository, a device CA, a live local API, a live REST face) is built once per process.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, FleetgenError, ProtocolError
from agent.protocol import Channel
from agent.protocol.codec import decode, decode_response

_WORK = Path(tempfile.mkdtemp(prefix="fleetgen-fuzz-"))
atexit.register(shutil.rmtree, _WORK, ignore_errors=True)
DEVICE = "dev-1"


_running: list[Callable[[], None]] = []  # stops for the servers a target started


def shutdown() -> None:
    """Stop the live servers the HTTP targets started (they start again when next used)."""
    while _running:
        _running.pop()()
    _api.cache_clear()
    _web.cache_clear()


atexit.register(shutdown)


class Crash(AssertionError):
    """A parser answered outside input in a way it must not (a 500, a file outside its folder)."""


# -- MQTT payloads of every topic ------------------------------------------------------------

def _mqtt(channel: Channel) -> Callable[[bytes], None]:
    def target(data: bytes) -> None:
        with contextlib.suppress(ProtocolError):
            decode(channel, data, DEVICE)
    target.__name__ = f"mqtt_{channel.value}"
    return target


def mqtt_resp(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_response(data)


@functools.cache
def _ingestor() -> Any:
    from controller.config import ControllerConfig
    from controller.services.ingest import Ingestor
    from controller.store import Store

    store = Store(f"sqlite:///{_WORK / 'ingest.db'}")
    return Ingestor(ControllerConfig(database_url=f"sqlite:///{_WORK / 'ingest.db'}"), store)


def controller_ingest(data: bytes) -> None:
    """The controller's side: a payload on each device topic, parsed as ingest does and, if
    accepted, written to the store. A write that fails on a valid-looking message would be
    retried forever (a poison message stalls ingestion): that counts as a crash."""
    from agent.mqtt.link import Inbound

    ingestor = _ingestor()
    for channel in (Channel.STATUS, Channel.REPORTED, Channel.TELEMETRY, Channel.EVENTS):
        item = ingestor.parse(Inbound(f"fleetgen/v1/dev/{DEVICE}/{channel.value}", data, False, 1))
        if item is not None:
            try:
                ingestor.store.apply([item])
            except Exception as e:
                raise Crash(f"ingest accepted a {channel.value} payload the store cannot write: "
                            f"{type(e).__name__}: {e}") from e


# -- bundles: manifests and tar files ---------------------------------------------------------

def manifest(data: bytes) -> None:
    from agent.manifest import ManifestError, parse_manifest

    with contextlib.suppress(ManifestError):
        parse_manifest(data)


def bundle(data: bytes) -> None:
    """verify_bundle unpacking into a fresh folder: a TrustError or a verified bundle, and
    never a file (or link) anywhere but inside that folder."""
    from agent.trust.errors import TrustError
    from agent.update.bundle import verify_bundle

    with tempfile.TemporaryDirectory(dir=_WORK) as d:
        dest = Path(d) / "out"
        dest.mkdir()
        with contextlib.suppress(TrustError):
            verify_bundle(io.BytesIO(data), dest=dest)
        for root, dirs, files in os.walk(d):
            for name in dirs + files:
                path = Path(root) / name
                if path.is_symlink() or not (path == dest or path.is_relative_to(dest)):
                    raise Crash(f"bundle left {path} (outside {dest} or a link)")
                if not path.is_symlink() and not (path.is_dir() or path.is_file()):
                    raise Crash(f"bundle made a special file {path}")


# -- director and TUF documents -----------------------------------------------------------------

@functools.cache
def _trust() -> Any:
    from tests.support.update_world import UpdateWorld

    return UpdateWorld(_WORK / "trust")


def director(data: bytes) -> None:
    """A desired document as it arrives on `dev/{id}/desired`, through the full check (TUF
    refresh of the local repository included)."""
    from agent.trust.errors import TransportError, TrustError
    from agent.trust.updater import TrustedUpdater

    world = _trust()
    verifier = TrustedUpdater(world.state, world.fetcher(), board="generic", device_id=DEVICE)
    with contextlib.suppress(TrustError, TransportError, ProtocolError):
        verifier.verify_desired(data)


def sign_director(payload: bytes) -> bytes:
    """`payload` signed by the real director key (so the checks after the signature run)."""
    import msgspec

    from agent.trust.dsse import DESIRED_PAYLOAD_TYPE, sign_envelope

    keys = _trust().director._keys
    return msgspec.json.encode(sign_envelope(DESIRED_PAYLOAD_TYPE, payload, keys))


def tuf_timestamp(data: bytes) -> None:
    """A timestamp.json from the repository, as ngclient's trusted set takes it."""
    from tuf.api import exceptions
    from tuf.api.metadata import Metadata
    from tuf.api.serialization import DeserializationError
    from tuf.ngclient._internal.trusted_metadata_set import TrustedMetadataSet
    from tuf.ngclient.config import EnvelopeType

    world = _trust()
    root = (world.repo.metadata_dir / "1.root.json").read_bytes()
    trusted = TrustedMetadataSet(root, EnvelopeType.METADATA)
    with contextlib.suppress(exceptions.RepositoryError, DeserializationError):
        trusted.update_timestamp(data)
    with contextlib.suppress(DeserializationError):
        Metadata.from_bytes(data)


# -- config files -----------------------------------------------------------------------------

def agent_config(data: bytes) -> None:
    from agent.config import load_config

    path = _WORK / "agent.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path, env={})


def controller_config(data: bytes) -> None:
    from controller.config import load_config

    path = _WORK / "controller.toml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path, env={})


# -- local API requests -------------------------------------------------------------------------

def api_body(data: bytes) -> None:
    from agent.api.errors import ApiError
    from agent.api.wire import ChatRequest, CompletionRequest, ImageRequestIn
    from agent.api.wire import decode as wire_decode

    for kind in (CompletionRequest, ChatRequest, ImageRequestIn):
        with contextlib.suppress(ApiError):
            wire_decode(data, kind)


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, half-close, read what comes back (the status line is enough)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while len(out) < 65536 and (chunk := s.recv(65536)):
                out += chunk
            return out
        except (ConnectionResetError, BrokenPipeError):
            return b""  # the server closed on us: a refusal, not a crash
        except TimeoutError:
            return b""


def _check_answer(what: str, answer: bytes) -> None:
    if not answer:
        return
    line = answer.split(b"\r\n", 1)[0]
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise Crash(f"{what}: not an HTTP status line: {line[:80]!r}")
    if int(parts[1]) >= 500 and int(parts[1]) not in (503,):
        raise Crash(f"{what}: answered {line[:80]!r}\n{answer[:2000]!r}")


@functools.cache
def _api() -> Any:
    from tests.api.conftest import start_api, stop_api

    api = start_api(_WORK, None)
    _running.append(lambda: stop_api(api))
    return api


def api_http(data: bytes) -> None:
    """Raw bytes at the local API's TCP listener: an HTTP answer under 500, or a close."""
    api = _api()
    _check_answer("local API", _exchange(api.service.tcp_port, data))


@functools.cache
def _web() -> Any:
    from tests.web.conftest import start_web

    web = start_web(_WORK / "web", n=3)
    _running.append(web.server.stop)
    _running.append(web.store.close)
    return web


def rest_http(data: bytes) -> None:
    """Raw bytes at the controller's REST API and dashboard."""
    web = _web()
    port = int(web.server.url.rsplit(":", 1)[1].split("/")[0])
    _check_answer("REST", _exchange(port, data))


def web_token() -> str:
    return str(_web().token)


# -- enrollment requests ------------------------------------------------------------------------

@functools.cache
def _enrollment() -> Any:
    from controller.cli import main as fleetgen
    from controller.enroll import Enrollment
    from controller.pki import CertificateAuthority
    from controller.store import Store

    pki = _WORK / "pki"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert fleetgen(["ca", "init", "--pki", str(pki), "--name", "127.0.0.1"]) == 0
    store = Store(f"sqlite:///{_WORK / 'enroll.db'}")
    enrollment = Enrollment(store, CertificateAuthority.open(pki))
    token = enrollment.add_device("fz-1").token
    return enrollment, token


def enroll_request(data: bytes) -> None:
    """An enrollment request body, decoded as the endpoint does, then token and CSR checked;
    the real token is tried with the fuzzed CSR so the CSR parser is reached."""
    import msgspec

    from agent.enroll import EnrollRequest

    enrollment, token = _enrollment()
    try:
        request = msgspec.json.decode(data, type=EnrollRequest)
    except msgspec.DecodeError:
        request = None
    with contextlib.suppress(FleetgenError):
        if request is not None:
            enrollment.enroll(request.token, request.csr.encode("utf-8", "surrogatepass"))
    with contextlib.suppress(FleetgenError):
        enrollment.ca.sign_csr(data, "fz-1")
    del token


TARGETS: dict[str, Callable[[bytes], None]] = {
    **{f"mqtt_{c.value}": _mqtt(c) for c in Channel if c is not Channel.RESP},
    "mqtt_resp": mqtt_resp,
    "controller_ingest": controller_ingest,
    "manifest": manifest,
    "bundle": bundle,
    "director": director,
    "tuf_timestamp": tuf_timestamp,
    "agent_config": agent_config,
    "controller_config": controller_config,
    "api_body": api_body,
    "api_http": api_http,
    "rest_http": rest_http,
    "enroll_request": enroll_request,
}
