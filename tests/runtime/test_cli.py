"""`fleetgen-agent generate`: streaming, --json, --image, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from tests.runtime.conftest import REPO


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["generate", "--log-level", "ERROR", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_streams_to_stdout(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--model", str(tiny_dir), "--greedy", "--max-tokens", "12", "--threads", "1", "def f(")
    assert code == 0 and len(out.strip()) > 0


def test_json_has_text_and_timings(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", str(tiny_dir), "--json", "--seed", "4", "--temperature", "0.9", "--top-k", "20"]
    args += ["--top-p", "0.9", "--max-tokens", "10", "--ignore-eos", "hello"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    doc = json.loads(out)
    assert doc["schema"] == 1 and doc["seed"] == 4 and doc["generated_tokens"] == 10
    assert set(doc["timings"]) >= {"load_ms", "prefill_ms", "decode_tokens_per_s"}
    code, again, _ = run(capsys, *args)
    assert code == 0 and json.loads(again)["text"] == doc["text"]


def test_image_writes_png(image_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seven.png"
    code, stdout, _ = run(
        capsys, "--model", str(image_dirs["tflite"]), "--image", "--class", "7", "-o", str(out), "--json"
    )
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(stdout)
    assert (doc["width"], doc["height"], doc["class"]) == (8, 8, 7)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "{tmp}/missing", "hi"], "model folder .*missing does not exist"),
        (["--model", "{tiny}", "--top-p", "0", "hi"], r"top_p must be in \(0, 1\], got 0.0"),
        (["--model", "{tiny}", "--temperature", "-1", "hi"], "temperature must be in"),
        (["--model", "{tiny}", "--threads", "0", "hi"], "threads must be in"),
        (["--model", "{tmp}/missing", "--max-tokens", "0", "hi"], "max_tokens must be in"),  # before loading
        (["--model", "{tiny}", "hello world " * 100], r"prompt is \d+ tokens, context is 128"),
        (["--model", "{tiny}", "--image"], "is a text model; drop --image"),
        (["--model", "{tiny}"], "give a prompt"),
        (["--bundle", "{tmp}/none.fgb", "hi"], "bundle .*none.fgb does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tiny_dir: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(tmp=tmp_path, tiny=tiny_dir) for a in args]
    code, _out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fleetgen-agent: error: ")
    assert re.search(message, lines[0]), lines[0]


def test_subprocess_corrupt_model_no_traceback(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:200] if f.name == "model.onnx" else f.read_bytes())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "generate", "--log-level", "ERROR", "--model", str(bad), "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "cannot load" in proc.stderr


def test_bundle_is_verified_unpacked_and_run(
    tiny_int8_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.update.bundle import build_bundle

    fgb = tmp_path / "tiny.fgb"
    build_bundle(tiny_int8_dir, fgb)
    code, out, _ = run(capsys, "--bundle", str(fgb), "--json", "--greedy", "--max-tokens", "6", "--ignore-eos", "abc")
    assert code == 0 and json.loads(out)["generated_tokens"] == 6
    data = bytearray(fgb.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the weights: verification must notice
    bad = tmp_path / "bad.fgb"
    bad.write_bytes(bytes(data))
    code, _, err = run(capsys, "--bundle", str(bad), "abc")
    assert code == 1 and len(err.strip().splitlines()) == 1  # refused, as `bundle inspect` refuses it
    assert "sha256" in err


def test_shipped_model_prefers_int8_then_int4_then_fp32(tmp_path: Path) -> None:
    from agent.cli.generate import shipped_model
    from agent.errors import UsageError

    with pytest.raises(UsageError, match="no shipped text model"):
        shipped_model("text", tmp_path)
    for name, q in (("a-fp32", "fp32"), ("b-int4", "int4"), ("c-int8", "int8")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"quantization": q, "engine": "onnxruntime"}))
    assert shipped_model("text", tmp_path).name == "c-int8"
    (tmp_path / "c-int8" / "manifest.json").unlink()
    assert shipped_model("text", tmp_path).name == "b-int4"


def test_layout_mismatch_and_missing_tokenizer_exit_2(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import onnx

    bad = tmp_path / "layout"
    shutil.copytree(tiny_dir, bad)
    model = onnx.load(str(bad / "model.onnx"))
    model.graph.output[1].name = "present_0_key"  # not the Optimum name
    for node in model.graph.node:
        node.output[:] = ["present_0_key" if o == "present.0.key" else o for o in node.output]
        node.input[:] = ["present_0_key" if i == "present.0.key" else i for i in node.input]
    onnx.save(model, str(bad / "model.onnx"))
    code, _, err = run(capsys, "--model", str(bad), "hi")
    assert code == 2 and "graph lacks present.0.key" in err and len(err.strip().splitlines()) == 1
    notok = tmp_path / "notok"
    shutil.copytree(tiny_dir, notok)
    (notok / "tokenizer.json").unlink()
    code, _, err = run(capsys, "--model", str(notok), "hi")
    assert code == 2 and "tokenizer.json does not exist" in err and len(err.strip().splitlines()) == 1


def test_installed_bundle_is_preferred_over_the_shipped_model(
    tiny_int8_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from agent.manifest import load_manifest
    from agent.update.bundle import build_bundle
    from agent.update.store import BundleStore

    state = tmp_path / "state"
    args = ("--json", "--greedy", "--max-tokens", "3", "--ignore-eos", "abc")
    code, out, _ = run(capsys, "--state-dir", str(state), *args)
    shipped_name = json.loads(out)["model"]
    assert code == 0 and shipped_name != load_manifest(tiny_int8_dir).name  # nothing installed yet
    fgb = tmp_path / "tiny.fgb"
    build_bundle(tiny_int8_dir, fgb)
    data = fgb.read_bytes()
    with fgb.open("rb") as f:
        BundleStore(state).install(
            f, origin=str(fgb), expected_length=len(data), expected_sha256=hashlib.sha256(data).hexdigest(), board=None
        )
    code, out, _ = run(capsys, "--state-dir", str(state), *args)
    assert code == 0 and json.loads(out)["model"] == load_manifest(tiny_int8_dir).name
    config = tmp_path / "agent.toml"
    config.write_text(f'device_id = "dev-1"\nstate_dir = "{state}"\n')
    code, out, _ = run(capsys, "--config", str(config), *args)  # the config's state dir
    assert code == 0 and json.loads(out)["model"] == load_manifest(tiny_int8_dir).name
    code, out, _ = run(capsys, "--state-dir", str(state), "--image", "--json", "-o", str(tmp_path / "i.png"))
    assert code == 0 and json.loads(out)["width"] > 0  # a text bundle does not serve --image
