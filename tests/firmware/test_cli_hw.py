"""`fleetgen-agent hw` against the fixture trees."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import main
from tests.firmware.conftest import TESTDATA

# board -> (profile id, watts, estimated, current mode)
EXPECTED = {
    "jetson-orin-nano": ("jetson-orin-nano", 7.385, False, "MAXN_SUPER"),
    "jetson-agx-orin": ("jetson-agx-orin", 9.45, False, "MAXN"),
    "kria-kv260": ("kria-kv260", 5.2125, False, None),
    "raspberry-pi-5": ("raspberry-pi-5", 3.66, True, None),
    "generic-arm64": ("generic-arm64", 5.4, True, None),
    "generic-x86_64": ("generic-x86_64", 0.0, False, None),  # a still RAPL counter: 0 J
}


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_hw_json_for_every_fixture(board: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["hw", "--root", str(TESTDATA / board), "--json", "--interval", "0.01"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    profile, watts, estimated, mode = EXPECTED[board]
    assert doc["schema"] == 1
    assert doc["board"]["id"] == profile
    assert doc["power"]["watts"] == pytest.approx(watts, abs=1e-3)
    assert doc["power"]["estimated"] is estimated
    assert [m["name"] for m in doc["modes"] if m["current"]] == ([mode] if mode else [])
    assert doc["onnx_providers"][-1] == "CPUExecutionProvider"
    assert any(s["primary"] for s in doc["sensors"])
    assert doc["modes"] and doc["cpufreq"]


def test_hw_text_labels_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hw", "--root", str(TESTDATA / "raspberry-pi-5"), "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "Raspberry Pi 5 (raspberry-pi-5)" in out
    assert "3.66 W (ESTIMATE" in out
    assert main(["hw", "--root", str(TESTDATA / "jetson-orin-nano"), "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "VDD_IN: 7.38 W (5.072 V x 1.456 A)" in out
    assert "2 MAXN_SUPER (nvpmodel, uncapped)  <- current" in out
    assert "TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider (board)" in out
    assert main(["hw", "--root", str(TESTDATA / "kria-kv260"), "--interval", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "fpga0: Xilinx ZynqMP FPGA Manager, operating" in out
    assert "/dev/dri        renderD128" in out


def test_hw_on_an_unknown_tree_still_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_bytes(b"\xff\xfe garbage")
    assert main(["hw", "--root", str(tmp_path), "--json", "--interval", "0.01"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["board"]["id"].startswith("generic-")
    assert doc["board"]["warnings"]
    assert doc["power"]["estimated"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["hw", "--root", "/nonexistent/x"], "--root '/nonexistent/x': not a directory"),
        (["hw", "--root", ""], "--root '': not a directory"),  # not the current directory
        (["hw", "--root", __file__], f"--root '{__file__}': not a directory"),
        (["hw", "--interval", "0"], "--interval must be within (0, 10] seconds, got '0'"),
        (["hw", "--interval", "nan"], "--interval must be within (0, 10] seconds, got 'nan'"),
        (["hw", "--interval", "abc"], "--interval must be within (0, 10] seconds, got 'abc'"),
    ],
)
def test_hw_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"fleetgen-agent: error: {message}"]
    assert captured.out == ""


@pytest.mark.timeout(20)
def test_hw_on_a_tree_with_fifos_answers(board_root: Callable[[str], Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import os

    root = board_root("raspberry-pi-5")
    (root / "proc/stat").unlink()
    os.mkfifo(root / "proc/stat")  # what the estimate reads; opening it used to block
    assert main(["hw", "--root", str(root), "--json", "--interval", "0.01"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["board"]["id"] == "raspberry-pi-5"
    assert doc["power"]["estimated"] is True and doc["power"]["watts"] == pytest.approx(2.7)


def test_hw_firmware_errors_become_fleetgen_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    board_root: Callable[[str], Path],
) -> None:
    from firmware import profile
    from firmware.errors import ProfileError

    def broken(*_: object) -> object:
        raise ProfileError("board profile /x/bad.toml: missing key 'id'")

    monkeypatch.setattr(profile, "load_profiles", broken)
    monkeypatch.setattr("firmware.detect.load_profiles", broken)
    assert main(["hw", "--root", str(TESTDATA / "kria-kv260"), "--interval", "0.01"]) == 1
    assert "error: hw: board profile /x/bad.toml: missing key 'id'" in capsys.readouterr().err


def test_hw_survives_an_onnxruntime_that_cannot_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    real_import = builtins.__import__

    def broken(name: str, *args: object, **kwargs: object) -> object:
        if name == "onnxruntime":
            raise OSError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", broken)
    assert main(["hw", "--root", str(TESTDATA / "jetson-orin-nano"), "--json",
                 "--interval", "0.01"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["onnx_providers_available"] is None
    assert doc["onnx_providers"] == doc["onnx_providers_preferred"]
