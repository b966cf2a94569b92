from __future__ import annotations

from pathlib import Path

import pytest

from firmware.errors import ProfileError
from firmware.profile import BOARDS_DIR, load_profile, load_profiles

EXPECTED_IDS = {"generic-x86_64", "generic-arm64", "raspberry-pi-5", "jetson-orin-nano",
                "jetson-agx-orin", "kria-kv260"}


def test_every_board_has_a_valid_profile() -> None:
    profiles = load_profiles()
    assert {p.id for p in profiles} == EXPECTED_IDS
    for p in profiles:
        assert 0 < p.idle_w < p.peak_w
        assert p.onnx_providers()[-1] == "CPUExecutionProvider"
        assert p.modes, f"{p.id} has no power modes"
        for m in p.modes:
            assert 0 < m.perf <= 1


def test_orin_nano_modes_are_jetpack6_nvpmodel_modes() -> None:
    p = next(x for x in load_profiles() if x.id == "jetson-orin-nano")
    modes = {m.name: (m.id, m.cap_w) for m in p.modes}
    assert modes == {"15W": (0, 15.0), "25W": (1, 25.0), "MAXN_SUPER": (2, None), "7W": (3, 7.0)}
    assert [m.name for m in p.modes_by_power()] == ["7W", "15W", "25W", "MAXN_SUPER"]
    assert p.sensors[0].kind == "ina3221" and p.sensors[0].rails == ("VDD_IN",)


def test_agx_orin_modes() -> None:
    p = next(x for x in load_profiles() if x.id == "jetson-agx-orin")
    modes = {m.name: (m.id, m.cap_w) for m in p.modes}
    assert modes == {"MAXN": (0, None), "MODE_15W": (1, 15.0), "MODE_30W": (2, 30.0),
                     "MODE_50W": (3, 50.0)}


def test_onnx_providers_follow_present_accelerators_and_installed_runtime() -> None:
    p = next(x for x in load_profiles() if x.id == "generic-x86_64")
    assert p.onnx_providers(present=[]) == ("CPUExecutionProvider",)
    assert p.onnx_providers(present=["nvidia-gpu"]) == (
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert p.onnx_providers(available=["CUDAExecutionProvider", "CPUExecutionProvider"],
                            present=["nvidia-gpu", "intel-gpu"]) == (
        "CUDAExecutionProvider", "CPUExecutionProvider")
    kria = next(x for x in load_profiles() if x.id == "kria-kv260")
    assert kria.onnx_providers(present=["dpu"]) == ("VitisAIExecutionProvider", "CPUExecutionProvider")
    pi = next(x for x in load_profiles() if x.id == "raspberry-pi-5")
    assert pi.tflite_delegates(present=[]) == ()
    assert [d.library for d in pi.tflite_delegates(present=["coral-edgetpu"])] == ["libedgetpu.so.1"]


GOOD = (BOARDS_DIR / "raspberry-pi-5.toml").read_text()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("id = [", "not valid TOML"),
        (GOOD.replace('id = "raspberry-pi-5"\n', ""), "missing key 'id'"),
        (GOOD.replace("idle_w = 2.7", 'idle_w = "low"'), "key 'idle_w' must be float"),
        (GOOD.replace("idle_w = 2.7", "idle_w = 9.0"), "need 0 < idle_w < peak_w"),
        (GOOD.replace("schema = 1", "schema = 7"), "schema 7 is not supported"),
        (GOOD.replace('kind = "cpufreq"', 'kind = "magic"', 1), "power mode kind 'magic'"),
        (GOOD.replace("id = 1\n", "id = 0\n"), "power mode ids must be unique"),
        (GOOD.replace("max_freq_fraction = 0.625\n", ""), "needs max_freq_fraction"),
        (GOOD + '\n[[sensors]]\nkind = "hwmon"\n', "needs `names`"),
        (GOOD + '\n[[sensors]]\nkind = "lasers"\n', "sensor kind 'lasers'"),
    ],
)
def test_a_malformed_profile_is_refused_naming_file_and_problem(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert fragment in str(e.value)
    assert str(path) in str(e.value)


def test_duplicate_ids_and_empty_dirs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no board profiles"):
        load_profiles(tmp_path)
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD)
    with pytest.raises(ProfileError, match="share the id 'raspberry-pi-5'"):
        load_profiles(tmp_path)
