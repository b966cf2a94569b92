from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware.knobs import (
    BoardModes,
    CpuFreq,
    FpgaOverlays,
    JetsonClocks,
    Nvpmodel,
    RuntimeKnobs,
    parse_listapps,
)
from firmware.profile import PowerMode
from firmware.runner import CommandRunner
from firmware.sysfs import SysRoot
from tests.firmware.conftest import TESTDATA, running_as_root

Tools = Callable[[str, str], Path]


def test_missing_tool_is_an_explained_result(tmp_path: Path) -> None:
    r = CommandRunner(path=str(tmp_path)).run(["nvpmodel", "-q"])
    assert r.outcome == "missing" and not r.ok
    assert "nvpmodel is not installed" in r.explanation


def test_ok_failed_denied_and_timeout(fake_tools: Tools) -> None:
    fake_tools("good", 'echo "hello $1"')
    fake_tools("bad", 'echo "no such mode: $1" >&2; exit 3')
    fake_tools("needroot", 'echo "NVPM ERROR: must be run as root" >&2; exit 1')
    path = str(fake_tools("slow", "sleep 5"))
    runner = CommandRunner(path=path)
    ok = runner.run(["good", "x"])
    assert ok.ok and ok.stdout == "hello x\n" and ok.returncode == 0
    bad = runner.run(["bad", "9"])
    assert bad.outcome == "failed" and "bad exited 3: no such mode: 9" in bad.explanation
    denied = runner.run(["needroot"])
    assert denied.outcome == "denied" and "privileges" in denied.explanation
    start = time.monotonic()
    slow = runner.run(["slow"], timeout_s=0.2)
    # The bound is the child's own 5 s, not a speed: the runner did not wait for it to end.
    assert slow.outcome == "timeout" and time.monotonic() - start < 5
    assert "did not finish within 0.2 s" in slow.explanation


def test_prompts_get_eof_not_a_hang(fake_tools: Tools) -> None:
    # nvpmodel asks "reboot now? YES/no" for some mode changes; stdin must be closed.
    path = fake_tools("asks", 'printf "reboot? "; if read answer; then echo "got $answer"; '
                              'else echo "eof"; fi')
    r = CommandRunner(path=str(path), timeout_s=5).run(["asks"])
    assert r.ok and r.stdout.endswith("eof\n")


NVPMODEL = """
case "$1" in
  -q) echo "NV Power Mode: 7W"; echo 3 ;;
  -m) echo "$2" > "$(dirname "$0")/mode-set" ;;
esac
"""


def test_nvpmodel_query_and_set(fake_tools: Tools, tmp_path: Path) -> None:
    path = fake_tools("nvpmodel", NVPMODEL)
    nv = Nvpmodel(CommandRunner(path=str(path)), SysRoot(TESTDATA / "jetson-orin-nano"))
    assert nv.current() == (3, "7W")
    assert nv.set_mode(0).ok
    assert (path / "mode-set").read_text() == "0\n"


def test_nvpmodel_missing_reads_status_file(tmp_path: Path) -> None:
    nv = Nvpmodel(CommandRunner(path=str(tmp_path)), SysRoot(TESTDATA / "jetson-orin-nano"))
    assert nv.current() == (2, None)
    r = nv.set_mode(1)
    assert r.outcome == "missing" and r.knob == "nvpmodel"


def test_jetson_clocks_stores_before_the_first_change(fake_tools: Tools) -> None:
    path = fake_tools("jetson_clocks", 'echo "$*" >> "$(dirname "$0")/calls"')
    jc = JetsonClocks(CommandRunner(path=str(path)))
    assert jc.set(True).ok and jc.set(False).ok and jc.set(True).ok
    assert (path / "calls").read_text().splitlines() == ["--store", "", "--restore", ""]


def test_cpufreq_caps_snap_to_offered_frequencies(board_root: Callable[[str], Path]) -> None:
    root = board_root("raspberry-pi-5")
    cf = CpuFreq(SysRoot(root))
    limit = root / "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq"
    assert cf.set_max_fraction(0.625).ok and limit.read_text() == "1500000"
    assert cf.set_max_fraction(0.833).ok and limit.read_text() == "2000000"
    assert cf.set_max_fraction(0.1).ok and limit.read_text() == "1500000"  # never below min
    assert cf.set_governor("powersave").ok
    assert (root / "sys/devices/system/cpu/cpufreq/policy0/scaling_governor").read_text() == "powersave"
    bad = cf.set_governor("turbo")
    assert bad.outcome == "failed" and "not 'turbo'" in bad.explanation


def test_cpufreq_without_a_table_and_with_many_policies(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    cf = CpuFreq(SysRoot(root))
    assert len(cf.policies()) == 6
    assert cf.set_max_fraction(0.6).ok
    assert (root / "sys/devices/system/cpu/cpufreq/policy5/scaling_max_freq").read_text() == "2100000"


def test_cpufreq_write_failures_are_results(board_root: Callable[[str], Path], tmp_path: Path) -> None:
    root = board_root("raspberry-pi-5")
    target = root / "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq"
    target.unlink()
    target.mkdir()  # writing to a directory fails, as a read-only sysfs file does
    r = CpuFreq(SysRoot(root)).set_max_fraction(1.0)
    assert r.outcome == "failed" and "cannot write" in r.explanation
    assert CpuFreq(SysRoot(tmp_path)).set_max_fraction(1.0).outcome == "missing"


@pytest.mark.skipif(running_as_root(), reason="root may write read-only files")
def test_cpufreq_permission_denied(board_root: Callable[[str], Path]) -> None:
    root = board_root("raspberry-pi-5")
    (root / "sys/devices/system/cpu/cpufreq/policy0/scaling_governor").chmod(0o444)
    assert CpuFreq(SysRoot(root)).set_governor("powersave").outcome == "denied"


def test_board_modes_apply_the_right_tool(fake_tools: Tools, board_root: Callable[[str], Path]) -> None:
    path = fake_tools("nvpmodel", NVPMODEL)
    root = board_root("raspberry-pi-5")
    modes = BoardModes(CommandRunner(path=str(path)), SysRoot(root))
    assert modes.apply(PowerMode(3, "7W", "nvpmodel", 7.0, 0.4)).ok
    assert (path / "mode-set").read_text() == "3\n"
    assert modes.apply(PowerMode(0, "1.5GHz", "cpufreq", 4.6, 0.6, 0.625)).ok
    assert (root / "sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq").read_text() == "1500000"


def test_runtime_knobs_pacing() -> None:
    k = RuntimeKnobs(threads=4)
    assert k.pace_delay(0.02) == 0.0
    k.set(2, 0.25, True)
    assert k.threads == 2 and k.admit
    assert k.pace_delay(0.02) == pytest.approx(0.06)  # decoding 25 % of the time
    k.set(1, 0.05, False)
    assert not k.admit


# `xmutil listapps` on a KV260 (column widths as printed).
LISTAPPS = "\n".join([
    "                     Accelerator          Accel_type                            Base"
    "           Base_type      #slots(PL+AIE)         Active_slot",
    "",
    "           kv260-benchmark-b4096            XRT_FLAT           kv260-benchmark-b4096"
    "            XRT_FLAT               (0+0)                  0,",
    "                k26-starter-kits            XRT_FLAT                k26-starter-kits"
    "            XRT_FLAT               (0+0)                  -1",
    "",
])


def test_parse_listapps() -> None:
    apps = parse_listapps(LISTAPPS)
    assert [(a.name, a.active) for a in apps] == [("kv260-benchmark-b4096", True),
                                                  ("k26-starter-kits", False)]


def test_fpga_overlay_load_unloads_the_active_app_first(fake_tools: Tools, tmp_path: Path) -> None:
    (tmp_path / "listapps.txt").write_text(LISTAPPS)
    path = fake_tools("xmutil", f'echo "$*" >> "$(dirname "$0")/calls"\n'
                                f'[ "$1" = listapps ] && cat {tmp_path}/listapps.txt\nexit 0')
    fpga = FpgaOverlays(CommandRunner(path=str(path)))
    assert fpga.load_app("k26-starter-kits").ok
    assert (path / "calls").read_text().splitlines() == [
        "listapps", "unloadapp", "loadapp k26-starter-kits"]
    already = fpga.load_app("kv260-benchmark-b4096")
    assert already.ok and already.explanation == "already loaded"
    unknown = fpga.load_app("nope")
    assert unknown.outcome == "failed" and "does not know the app 'nope'" in unknown.explanation


def test_fpga_overlay_without_tools(tmp_path: Path, fake_tools: Tools) -> None:
    fpga = FpgaOverlays(CommandRunner(path=str(tmp_path)))
    assert fpga.load_app("x").outcome == "missing"
    path = fake_tools("fpgautil", 'echo "$*" > "$(dirname "$0")/args"')
    fpga = FpgaOverlays(CommandRunner(path=str(path)))
    assert fpga.load_bitstream(Path("/lib/firmware/d.bit.bin"), Path("/lib/firmware/d.dtbo")).ok
    assert (path / "args").read_text() == "-b /lib/firmware/d.bit.bin -o /lib/firmware/d.dtbo\n"
    assert fpga.remove_overlay().ok


def test_privileged_commands_get_the_prefix(fake_tools: Tools) -> None:
    path = fake_tools("fakesudo", 'echo "sudo $*"')
    fake_tools("nvpmodel", 'echo "plain $*"')
    runner = CommandRunner(path=str(path), privileged_prefix=(str(path / "fakesudo"), "-n"))
    assert runner.run(["nvpmodel", "-q"]).stdout == "plain -q\n"
    r = runner.run(["nvpmodel", "-m", "0"], privileged=True)
    assert r.stdout == f"sudo -n {path / 'nvpmodel'} -m 0\n"
    fake_tools("nopass", 'echo "sudo: a password is required" >&2; exit 1')
    denied = CommandRunner(path=str(path), privileged_prefix=(str(path / "nopass"),)).run(
        ["nvpmodel", "-m", "0"], privileged=True)
    assert denied.outcome == "denied"
