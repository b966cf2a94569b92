"""`fleetgen-agent serve` as a user runs it: the openai client against `serve --model`,
curl on `serve --bundle --socket`, and one-line errors for bad arguments."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx  # what this openai release uses (httpx under its new name)
import openai
import pytest

from tests.api.conftest import IMAGE, IMAGE_ID, TEXT, TEXT_ID, wait_for
from tests.api.processes import BIN, env_for, read_until


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    proc = subprocess.Popen([str(BIN), "serve", "--model", str(TEXT), "--model", str(IMAGE), "--listen",
                             "127.0.0.1:0"], env=env_for(None), stderr=subprocess.PIPE, text=True)
    try:
        line = read_until(proc, "listening on")
        base = line.rsplit("listening on ", 1)[1].strip()
        read_until(proc, "serving")
        yield base
    finally:
        stop(proc)


def test_openai_client_against_serve_model(served: str) -> None:
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="none", max_retries=0)
    text = client.completions.create(model=TEXT_ID, prompt="Once", max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TEXT_ID, prompt="Once", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == text.choices[0].text
    chat = client.chat.completions.create(model=TEXT_ID, messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=5, temperature=0)
    chat_streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=TEXT_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0, stream=True)
        if c.choices)
    assert chat_streamed == chat.choices[0].message.content
    image = client.images.generate(model=IMAGE_ID, prompt="7", response_format="b64_json")
    assert image.data is not None and image.data[0].b64_json is not None
    assert base64.b64decode(image.data[0].b64_json)[:4] == b"\x89PNG"


def test_serve_bundle_on_a_socket_with_curl(tmp_path: Path) -> None:
    from agent.update.bundle import build_bundle

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    fgb = tmp_path / "austen.fgb"
    build_bundle(TEXT, fgb)
    sock_dir = Path(tempfile.mkdtemp(prefix="fgserve-"))
    sock = sock_dir / "agent.sock"
    proc = subprocess.Popen([str(BIN), "serve", "--bundle", str(fgb), "--socket", str(sock)],
                            env=env_for(None), stderr=subprocess.PIPE, text=True)
    try:
        read_until(proc, "serving")
        out = subprocess.run([curl, "-s", "--unix-socket", str(sock), "http://localhost/v1/chat/completions",
                              "-H", "content-type: application/json", "-d",
                              json.dumps({"model": TEXT_ID, "messages": [{"role": "user", "content": "Hello"}],
                                          "max_tokens": 4})], capture_output=True, text=True, timeout=60)
        doc = json.loads(out.stdout)
        assert doc["object"] == "chat.completion" and doc["usage"]["completion_tokens"] <= 4
        sse = subprocess.run([curl, "-sN", "--unix-socket", str(sock), "http://localhost/v1/completions", "-d",
                              json.dumps({"model": TEXT_ID, "prompt": "It", "max_tokens": 3, "stream": True})],
                             capture_output=True, text=True, timeout=60)
        events = [e for e in sse.stdout.split("\n\n") if e]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    finally:
        stop(proc)
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert not sock.exists()  # removed on the way out


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --model DIR or --bundle FILE"),
    (["--model", "/no/such/dir"], "model folder /no/such/dir does not exist"),
    (["--bundle", "/no/such.fgb"], "bundle /no/such.fgb does not exist"),
    (["--model", str(TEXT), "--listen", "localhost"], "--listen: expected HOST:PORT"),
    (["--model", str(TEXT), "--stream-interval-ms", "-1"], "--stream-interval-ms: Expected `float` >= 0"),
    (["--model", str(TEXT), "--max-pending", "0"], "--max-pending: Expected `int` >= 1"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    out = subprocess.run([str(BIN), "serve", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_model_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(TEXT, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    out = subprocess.run([str(BIN), "serve", "--model", str(broken), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("fleetgen-agent: error:") and "model.onnx" in last
    assert "Traceback" not in out.stderr


def test_a_socket_in_use_is_refused(tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="fgserve-"))
    sock = sock_dir / "agent.sock"
    first = subprocess.Popen([str(BIN), "serve", "--model", str(TEXT), "--socket", str(sock)],
                             env=env_for(None), stderr=subprocess.PIPE, text=True)
    try:
        read_until(first, "listening on")
        out = subprocess.run([str(BIN), "serve", "--model", str(TEXT), "--socket", str(sock)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1
        assert "in use by a running process" in out.stderr and "Traceback" not in out.stderr
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://x") as c:
            wait_for(lambda: c.get("/health").status_code == 200, "the first server to keep serving")
    finally:
        stop(first)
        shutil.rmtree(sock_dir, ignore_errors=True)
