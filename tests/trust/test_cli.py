"""The command lines: fleetgen keys / bundle, fleetgen-agent install-bundle (exit 0/1/2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as agent_main
from controller.cli import main as fleetgen
from tests.trust.models import make_model_dir


@pytest.fixture
def released(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """keys init (encrypted offline keys), build, publish, export onto a 'USB stick'."""
    pp = tmp_path / "pp"
    pp.write_text("s3cret\n")
    repo = tmp_path / "repo"
    assert fleetgen(["keys", "init", "--repo", str(repo), "--threshold", "1", "--passphrase-file", str(pp)]) == 0
    model = make_model_dir(tmp_path / "models")
    out = tmp_path / "tiny-1.0.0.fgb"
    assert fleetgen(["bundle", "build", "--no-probe", str(model), "-o", str(out)]) == 0
    assert fleetgen(["bundle", "publish", str(out), "--repo", str(repo), "--passphrase-file", str(pp)]) == 0
    assert fleetgen(["bundle", "export", "--repo", str(repo), "--to", str(tmp_path / "usb"), "--bundles"]) == 0
    capsys.readouterr()
    return tmp_path


def test_publish_needs_the_passphrase(
    released: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETGEN_PASSPHRASE", raising=False)
    model = make_model_dir(released / "models", version="2.0.0")
    out = released / "tiny-2.0.0.fgb"
    assert fleetgen(["bundle", "build", "--no-probe", str(model), "-o", str(out)]) == 0
    assert fleetgen(["bundle", "publish", str(out), "--repo", str(released / "repo")]) == 1
    assert "encrypted" in capsys.readouterr().err


def test_inspect_json(released: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fleetgen(["bundle", "inspect", str(released / "tiny-1.0.0.fgb"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 1 and doc["manifest"]["name"] == "tiny" and len(doc["sha256"]) == 64


def test_build_names_missing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = make_model_dir(tmp_path)
    (model / "model.onnx").unlink()
    assert fleetgen(["bundle", "build", "--no-probe", str(model), "-o", str(tmp_path / "x.fgb")]) == 2
    assert "model.onnx" in capsys.readouterr().err


def test_air_gapped_install(released: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usb, state = released / "usb", released / "state"
    args = ["install-bundle", str(usb / "tiny-1.0.0.fgb"), "--metadata", str(usb), "--state-dir", str(state)]
    assert agent_main([*args, "--board", "generic"]) == 2  # fresh state dir, no --trust-root
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not provisioned" in err[0] and "--trust-root" in err[0]
    assert agent_main([*args, "--board", "generic", "--trust-root"]) == 0
    captured = capsys.readouterr()
    assert "installed tiny 1.0.0" in captured.out and "--trust-root" in captured.err
    assert (state / "current" / "model.onnx").is_file()


def test_air_gapped_install_refusal_names_the_check(released: Path, capsys: pytest.CaptureFixture[str]) -> None:
    usb, state = released / "usb", released / "state"
    bad = released / "evil" / "tiny-1.0.0.fgb"
    bad.parent.mkdir()
    data = bytearray((usb / "tiny-1.0.0.fgb").read_bytes())
    data[-3000] ^= 1
    bad.write_bytes(bytes(data))
    code = agent_main(
        ["install-bundle", str(bad), "--metadata", str(usb), "--state-dir", str(state), "--trust-root", "--board", "x"]
    )
    assert code == 1
    assert "refused (hash)" in capsys.readouterr().err
    assert not (state / "current").exists()


def test_keys_rotate_revoke_list(
    released: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, pp = str(released / "repo"), str(released / "pp")
    monkeypatch.setenv("FLEETGEN_PASSPHRASE", "s3cret")  # as if typed at the prompt
    assert fleetgen(["keys", "rotate", "targets", "--repo", repo]) == 0
    new_keys = list((released / "repo" / "keys" / "offline").glob("targets-*.pem"))
    assert len(new_keys) == 1 and b"ENCRYPTED" in new_keys[0].read_bytes()  # never in the clear
    monkeypatch.delenv("FLEETGEN_PASSPHRASE")
    assert fleetgen(["keys", "list", "--repo", repo, "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out[out.index("{") :])
    assert doc["root_version"] == 2
    keyid = doc["roles"]["snapshot"]["keyids"][0]
    assert fleetgen(["keys", "revoke", keyid[:12], "--repo", repo, "--passphrase-file", pp]) == 2  # last key
    assert "rotate" in capsys.readouterr().err
    assert fleetgen(["keys", "resign", "--repo", repo, "--force"]) == 0


def test_director_set_writes_and_publishes(released: Path, capsys: pytest.CaptureFixture[str], mosquitto: Any) -> None:
    import queue

    from agent.mqtt.link import MqttLink
    from agent.mqtt.settings import MqttSettings
    from agent.protocol.codec import decode_as
    from agent.protocol.messages import DesiredState, SignedEnvelope
    from agent.protocol.topics import Channel, device_topic

    repo = str(released / "repo")
    out = released / "desired.json"
    assert fleetgen(["director", "set", "dev-7", "--repo", repo, "--target", "tiny-1.0.0.fgb", "-o", str(out)]) == 0
    first = decode_as(SignedEnvelope, out.read_bytes())
    assert decode_as(DesiredState, first.payload).version == 1
    assert fleetgen(["director", "set", "dev-7", "--repo", repo, "--target", "nope.fgb"]) == 1
    capsys.readouterr()
    assert fleetgen(["director", "set", "Dev 7", "--repo", repo, "--target", "tiny-1.0.0.fgb"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    assert fleetgen(["director", "set", "dev-7", "--repo", repo, "--target", "tiny-1.0.0.fgb", "--broker", url]) == 0
    inbox: queue.Queue[bytes] = queue.Queue()
    t = MqttLink.open(MqttSettings(url=url))
    try:
        t.subscribe(device_topic("dev-7", Channel.DESIRED), lambda _t, p: inbox.put(p))
        retained = decode_as(SignedEnvelope, inbox.get(timeout=10))
    finally:
        t.stop()
    state = decode_as(DesiredState, retained.payload)
    assert state.device_id == "dev-7" and state.version == 2 and state.target is not None


def test_bundle_build_records_the_probe_perplexity_and_refuses_one_over_the_maximum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.update.bundle import read_manifest
    from tests.support.update_world import variant

    good = variant(tmp_path / "m", "austen", "1.0.0", record_probe=False)
    assert fleetgen(["bundle", "build", str(good), "-o", str(tmp_path / "good.fgb")]) == 0
    test = read_manifest(tmp_path / "good.fgb").self_test
    assert test.probe and test.probe_perplexity is not None and 20 < test.probe_perplexity < 80
    assert "probe perplexity" in capsys.readouterr().out

    strict = variant(tmp_path / "m", "austen", "2.0.0", record_probe=False, max_perplexity=5.0)
    assert fleetgen(["bundle", "build", str(strict), "-o", str(tmp_path / "strict.fgb")]) == 1
    err = capsys.readouterr().err
    assert "above the manifest's max_perplexity 5" in err and "Traceback" not in err
    assert not (tmp_path / "strict.fgb").exists()
