from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware.detect import detect_board, detect_runtimes
from tests.firmware.conftest import BOARDS, TESTDATA

# board dir -> (profile, accelerators, cores, cpu model, current nvpmodel mode name)
EXPECTED: dict[str, tuple[str, tuple[str, ...], int, str, str | None]] = {
    "generic-x86_64": ("generic-x86_64", ("intel-gpu",), 6,
                       "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz", None),
    "generic-arm64": ("generic-arm64", (), 8, "Neoverse-N1", None),
    "raspberry-pi-5": ("raspberry-pi-5", (), 4, "Cortex-A76", None),
    "jetson-orin-nano": ("jetson-orin-nano", ("gpu",), 6, "Cortex-A78AE", "MAXN_SUPER"),
    "jetson-agx-orin": ("jetson-agx-orin", ("gpu", "dla"), 12, "Cortex-A78AE", "MAXN"),
    "kria-kv260": ("kria-kv260", ("dpu", "fpga"), 4, "Cortex-A53", None),
}


def test_every_fixture_has_an_expectation() -> None:
    assert set(BOARDS) == set(EXPECTED)


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_detection_is_right_for_every_fixture_board(board: str) -> None:
    profile, accs, cores, cpu, mode = EXPECTED[board]
    d = detect_board(TESTDATA / board)
    assert d.profile.id == profile
    assert d.accelerator_ids == accs
    assert d.cores == cores
    assert d.facts.cpu_model == cpu
    assert (d.current_mode.name if d.current_mode else None) == mode
    assert d.warnings == ()
    assert d.evidence


def test_jetson_facts_and_providers() -> None:
    d = detect_board(TESTDATA / "jetson-orin-nano")
    assert d.facts.tegra_release == "R36.4.3"
    assert d.facts.dt_compatible[-1] == "nvidia,tegra234"
    assert d.onnx_providers() == ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                  "CPUExecutionProvider")
    assert d.onnx_providers(["CPUExecutionProvider"]) == ("CPUExecutionProvider",)
    kria = detect_board(TESTDATA / "kria-kv260")
    assert kria.facts.fpga_managers[0].name == "Xilinx ZynqMP FPGA Manager"
    assert kria.facts.dri_nodes == ("renderD128",)
    assert kria.onnx_providers() == ("VitisAIExecutionProvider", "CPUExecutionProvider")


def test_kria_without_a_loaded_dpu_app_has_no_dpu(board_root: Callable[[str], Path]) -> None:
    root = board_root("kria-kv260")
    (root / "sys/class/drm/renderD128/device/uevent").write_text("DRIVER=xlnx-drm\n")
    d = detect_board(root)
    assert d.profile.id == "kria-kv260"
    assert d.accelerator_ids == ("fpga",)
    assert d.onnx_providers() == ("CPUExecutionProvider",)


def test_older_jetpack_nvpmodel_ids_are_taken_from_the_conf_by_name(
    board_root: Callable[[str], Path],
) -> None:
    root = board_root("jetson-orin-nano")
    # JetPack 6.0 (no Super modes): 0 = 15W, 1 = 7W.
    (root / "etc/nvpmodel.conf").write_text(
        "< POWER_MODEL ID=0 NAME=15W >\n< POWER_MODEL ID=1 NAME=7W >\n< PM_CONFIG DEFAULT=0 >\n")
    (root / "var/lib/nvpmodel/status").write_text("pmode:0001\n")
    d = detect_board(root)
    assert {m.name: m.id for m in d.profile.modes} == {"15W": 0, "7W": 1}
    assert d.current_mode is not None and d.current_mode.name == "7W"
    assert any("mode 7W id 1" in w for w in d.warnings)
    assert any("no mode MAXN_SUPER" in w for w in d.warnings)


def test_jetson_on_jetpack5_falls_back_to_generic_and_says_why(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture,
) -> None:
    root = board_root("jetson-orin-nano")
    (root / "etc/nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, "
                                               "BOARD: t186ref, EABI: aarch64\n")
    with caplog.at_level(logging.WARNING):
        d = detect_board(root)
    assert d.profile.id == "generic-arm64"
    assert any("looks like jetson-orin-nano" in w and "R35.4.1" in w for w in d.warnings)
    assert "looks like jetson-orin-nano" in caplog.text


@pytest.mark.parametrize(
    "files",
    [
        {},  # an empty root: nothing at all
        {"proc/cpuinfo": b"\x00\xff\xfe garbage \x00"},
        {"proc/cpuinfo": b"processor : 0\n", "proc/device-tree/model": b"\xff\xfe\x00"},
        {"etc/nv_tegra_release": b"not a release line", "proc/cpuinfo": b"Features : fp\n"},
        {"var/lib/nvpmodel/status": b"pmode:banana", "etc/nvpmodel.conf": b"< POWER_MODEL"},
    ],
)
def test_unknown_or_garbage_boards_get_a_generic_profile_never_a_crash(
    tmp_path: Path, files: dict[str, bytes]
) -> None:
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    d = detect_board(tmp_path)
    assert d.profile.id in ("generic-x86_64", "generic-arm64")
    assert d.profile.priority == 0
    assert d.warnings
    assert d.onnx_providers() [-1] == "CPUExecutionProvider"


def test_unreadable_files_are_logged_not_raised(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("raspberry-pi-5")
    model = root / "proc/device-tree/model"
    model.unlink()
    model.mkdir()  # reading a directory fails with IsADirectoryError
    with caplog.at_level(logging.WARNING):
        d = detect_board(root)
    # Still recognised by the compatible string? No: dt_model is required, so generic.
    assert d.profile.id == "generic-arm64"
    assert "cannot read /proc/device-tree/model" in caplog.text


def test_runtimes_are_found_without_importing_them() -> None:
    seen: list[str] = []

    def fake_find_spec(name: str) -> Any:
        seen.append(name)
        return object() if name == "onnxruntime" else None

    runtimes = {r.name: r for r in detect_runtimes(fake_find_spec)}
    assert runtimes["onnxruntime"].installed and runtimes["onnxruntime"].version
    assert not runtimes["tensorrt"].installed
    assert set(seen) >= {"onnxruntime", "tflite_runtime", "ai_edge_litert", "tensorrt", "vart"}

    def broken(name: str) -> Any:
        raise ValueError("bad spec")

    assert not any(r.installed for r in detect_runtimes(broken))
