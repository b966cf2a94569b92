"""Power readings in watts for each fixture, with the expected values computed by hand
from the fixture files (mV x mA / 1e6, µW / 1e6, µJ / s / 1e6)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware.detect import detect_board
from firmware.profile import SensorSpec
from firmware.sensors import (
    EstimateSensor,
    PowerMeter,
    ProcStatUtilisation,
    estimate_watts,
    open_ina3221,
    open_power_meter,
    open_rapl,
)
from firmware.sysfs import SysRoot
from tests.firmware.conftest import TESTDATA, FakeClock, running_as_root

# Orin Nano VDD_IN: 5072 mV x 1456 mA
ORIN_NANO_W = 5072 * 1456 / 1e6  # 7.384832
# AGX Orin: 19984x198 + 19984x72 + 4968x720 + 4968x96 (mV x mA)
AGX_ORIN_W = (19984 * 198 + 19984 * 72 + 4968 * 720 + 4968 * 96) / 1e6  # 9.449568
# KV260 INA260: power1_input 5212500 µW
KV260_W = 5.2125
# /proc/stat in every fixture: busy = 3000 + 1000, idle = 15000 + 1000, total 20000 -> 20 %
PI5_W = 2.7 + 4 * 1.2 * 0.20  # 3.66
ARM64_W = 3.0 + 8 * 1.5 * 0.20  # 5.4


def meter_for(root: Path, clock: FakeClock) -> PowerMeter:
    return open_power_meter(detect_board(root), clock=clock)


@pytest.mark.parametrize(
    ("board", "watts", "source", "estimated"),
    [
        ("jetson-orin-nano", ORIN_NANO_W, "ina3221", False),
        ("jetson-agx-orin", AGX_ORIN_W, "ina3221", False),
        ("kria-kv260", KV260_W, "hwmon", False),
        ("raspberry-pi-5", PI5_W, "estimate", True),
        ("generic-arm64", ARM64_W, "estimate", True),
    ],
)
def test_instant_sensors_read_the_hand_computed_watts(
    board: str, watts: float, source: str, estimated: bool
) -> None:
    clock = FakeClock()
    m = meter_for(TESTDATA / board, clock)
    m.prime()
    clock.t += 1
    r = m.read()
    assert r.watts == pytest.approx(watts, abs=1e-9)
    assert (r.source, r.estimated) == (source, estimated)
    assert m.estimated is estimated


def test_orin_nano_rails() -> None:
    clock = FakeClock()
    r = meter_for(TESTDATA / "jetson-orin-nano", clock).read()
    rails = {x.name: x for x in r.rails}
    assert set(rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert rails["VDD_CPU_GPU_CV"].watts == pytest.approx(5064 * 412 / 1e6)
    assert rails["VDD_SOC"].volts == pytest.approx(5.064) and rails["VDD_SOC"].amps == pytest.approx(0.296)


def test_agx_orin_skips_unconnected_channels() -> None:
    r = meter_for(TESTDATA / "jetson-agx-orin", FakeClock()).read()
    assert "NC" not in {x.name for x in r.rails}
    assert len(r.rails) == 4


def _set_energy(root: Path, zone: str, uj: int) -> None:
    (root / f"sys/class/powercap/{zone}/energy_uj").write_text(f"{uj}\n")


def test_rapl_average_power_between_two_reads(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    clock = FakeClock()
    m = meter_for(root, clock)
    assert m.primary is not None and m.primary.source == "rapl"
    m.prime()  # 48267154321 µJ at t=100
    clock.t += 0.5
    _set_energy(root, "intel-rapl:0", 48267154321 + 12_500_000)
    r = m.read()
    assert r.watts == pytest.approx(25.0)  # 12.5 J in 0.5 s
    assert not r.estimated and r.rails[0].name == "package-0"


def test_rapl_counter_wrap_around(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    clock = FakeClock()
    sensor = open_rapl(SysRoot(root))
    assert sensor is not None
    _set_energy(root, "intel-rapl:0", 262143328850 - 1_000_000)
    assert sensor.read(clock.t) is None  # priming
    clock.t += 1.0
    _set_energy(root, "intel-rapl:0", 4_000_000)
    r = sensor.read(clock.t)
    assert r is not None
    assert r.watts == pytest.approx(5.0)  # 1 J to the top + 4 J after the wrap, in 1 s


def test_rapl_counter_going_backwards_is_dropped_and_estimated(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("generic-x86_64")
    clock = FakeClock()
    m = meter_for(root, clock)
    _set_energy(root, "intel-rapl:0", 5_000_000)
    m.prime()
    clock.t += 1.0
    _set_energy(root, "intel-rapl:0", 4_000_000)  # a reset, not a wrap: 262 kW if it were
    with caplog.at_level(logging.WARNING):
        r = m.read()
    assert r.estimated and r.source == "estimate"
    assert "went backwards" in caplog.text
    clock.t += 1.0
    _set_energy(root, "intel-rapl:0", 6_000_000)
    r = m.read()  # counting resumes from the new base
    assert not r.estimated and r.watts == pytest.approx(2.0)


def test_rapl_backwards_with_unknown_range_is_dropped(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    (root / "sys/class/powercap/intel-rapl:0/max_energy_range_uj").write_text("garbage\n")
    sensor = open_rapl(SysRoot(root))
    assert sensor is not None and sensor.zones[0].max_range_uj is None
    _set_energy(root, "intel-rapl:0", 5_000_000)
    sensor.read(1.0)
    _set_energy(root, "intel-rapl:0", 4_000_000)
    assert sensor.read(2.0) is None


def test_rapl_prefers_psys_and_adds_dram(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    dram = root / "sys/class/powercap/intel-rapl:0:2"
    dram.mkdir()
    (dram / "name").write_text("dram\n")
    (dram / "energy_uj").write_text("100\n")
    sensor = open_rapl(SysRoot(root))
    assert sensor is not None and [z.name for z in sensor.zones] == ["package-0", "dram"]
    psys = root / "sys/class/powercap/intel-rapl:1"
    psys.mkdir()
    (psys / "name").write_text("psys\n")
    (psys / "energy_uj").write_text("100\n")
    sensor = open_rapl(SysRoot(root))
    assert sensor is not None and [z.name for z in sensor.zones] == ["psys"]


@pytest.mark.skipif(running_as_root(), reason="root reads mode-0000 files anyway")
def test_unreadable_rapl_falls_back_to_estimate_with_an_explanation(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("generic-x86_64")
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").chmod(0)
    with caplog.at_level(logging.WARNING):
        m = meter_for(root, FakeClock())
    assert m.estimated
    assert "CVE-2020-8694" in caplog.text


def test_rapl_that_cannot_be_read_falls_back_to_estimate(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Works as root too: reading a directory fails like a mode-0400 file does for a user.
    root = board_root("generic-x86_64")
    energy = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    energy.unlink()
    energy.mkdir()
    with caplog.at_level(logging.WARNING):
        m = meter_for(root, FakeClock())
    assert m.estimated and m.read().estimated
    assert "not readable" in caplog.text and "CVE-2020-8694" in caplog.text


def test_garbage_rapl_reading_is_estimated(board_root: Callable[[str], Path]) -> None:
    root = board_root("generic-x86_64")
    clock = FakeClock()
    m = meter_for(root, clock)
    m.prime()
    clock.t += 1
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("lots\n")
    r = m.read()
    assert r.estimated and "rapl gave no sample" in r.detail


def test_garbage_or_missing_ina_rail_falls_back_to_estimate(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("jetson-orin-nano")
    hw = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    m = meter_for(root, FakeClock())
    (hw / "curr1_input").write_text("\x00\x01garbage")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            r = m.read()
    assert r.estimated and r.source == "estimate"
    assert caplog.text.count("not an integer") == 1  # said once, not every second
    assert "failed 3 reads in a row" in caplog.text
    (hw / "curr1_input").write_text("1000\n")
    r = m.read()
    assert not r.estimated and r.watts == pytest.approx(5.072)
    # A broken rail that is not part of the draw only drops that rail.
    (hw / "in3_input").unlink()
    r = m.read()
    assert not r.estimated and "VDD_SOC" not in {x.name for x in r.rails}


def test_negative_current_reads_as_zero_watts(board_root: Callable[[str], Path]) -> None:
    root = board_root("jetson-orin-nano")
    hw = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    (hw / "curr3_input").write_text("-4\n")
    r = meter_for(root, FakeClock()).read()
    assert {x.name: x.watts for x in r.rails}["VDD_SOC"] == 0.0


def test_ina3221_with_none_of_the_profile_rails_is_not_used(board_root: Callable[[str], Path]) -> None:
    root = board_root("jetson-orin-nano")
    assert open_ina3221(SysRoot(root), SensorSpec("ina3221", rails=("VDD_NOPE",))) is None


def test_estimate_formula_and_utilisation_deltas(board_root: Callable[[str], Path]) -> None:
    assert estimate_watts(2.0, 1.0, 4, 0.5) == 4.0
    assert estimate_watts(2.0, 1.0, 4, 7.0) == 6.0  # utilisation is clamped to 1
    root = board_root("raspberry-pi-5")
    util = ProcStatUtilisation(SysRoot(root))
    assert util() == pytest.approx(0.20)  # since boot
    # 1000 more ticks, 750 of them busy
    (root / "proc/stat").write_text("cpu  3600 0 1150 15200 1050 0 0 0 0 0\n")
    assert util() == pytest.approx(0.75)
    (root / "proc/stat").write_text("cpu garbage\n")
    assert util() == pytest.approx(0.75)  # keeps the last good value
    est = EstimateSensor(2.7, 1.2, 4, util)
    r = est.read(0.0)
    assert r.estimated and r.watts == pytest.approx(2.7 + 4 * 1.2 * 0.75)


def test_rapl_counter_outside_its_range_is_garbage(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("generic-x86_64")
    sensor = open_rapl(SysRoot(root))
    assert sensor is not None
    assert sensor.read(1.0) is None  # priming
    _set_energy(root, "intel-rapl:0", 262143328850 + 1)  # above max_energy_range_uj
    with caplog.at_level(logging.WARNING):
        assert sensor.read(2.0) is None
    assert "outside [0, 262143328850]" in caplog.text
    # Counting starts again from the next good value: two reads, 3 J apart in 1 s.
    _set_energy(root, "intel-rapl:0", 1_000_000)
    assert sensor.read(3.0) is None
    _set_energy(root, "intel-rapl:0", 4_000_000)
    r = sensor.read(4.0)
    assert r is not None and r.watts == pytest.approx(3.0)


def test_rapl_without_a_usable_range_drops_backwards_samples(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("generic-x86_64")
    (root / "sys/class/powercap/intel-rapl:0/max_energy_range_uj").write_text("0\n")
    with caplog.at_level(logging.WARNING):
        sensor = open_rapl(SysRoot(root))
    assert sensor is not None and sensor.zones[0].max_range_uj is None
    assert "wrap-around not handled" in caplog.text
    _set_energy(root, "intel-rapl:0", 5_000_000)
    sensor.read(1.0)
    _set_energy(root, "intel-rapl:0", 4_000_000)
    assert sensor.read(2.0) is None


def test_an_implausible_reading_is_dropped_and_estimated(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = board_root("kria-kv260")
    (root / "sys/class/hwmon/hwmon2/power1_input").write_text("99000000000000\n")  # 99 MW
    m = meter_for(root, FakeClock())
    with caplog.at_level(logging.WARNING):
        first, second = m.read(), m.read()
    assert first.estimated and second.estimated and first.source == "estimate"
    assert caplog.text.count("not a plausible draw") == 1


@pytest.mark.timeout(10)
def test_a_fifo_in_the_tree_is_not_read_and_never_blocks(
    board_root: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    # Real sysfs/procfs attributes are regular files; a FIFO (or a device node) in a tree
    # given with --root must be refused, not block the reader forever.
    root = board_root("jetson-orin-nano")
    hw = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    for path in (root / "proc/stat", hw / "curr1_input"):
        path.unlink()
        os.mkfifo(path)
    with caplog.at_level(logging.WARNING):  # returning at all is the point (a FIFO read blocks)
        r = meter_for(root, FakeClock()).read()
    assert r.estimated and r.watts == pytest.approx(4.8)  # no utilisation known: idle
    assert "curr1_input: not a regular file" in caplog.text


# The cost of one sensor read (< 1 ms) is a speed figure: tests/bench/power.py measures it.
