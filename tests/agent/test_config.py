from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.mqtt.backoff import Backoff


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_file_env_and_flags_in_that_order(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d1"\nstate_dir = "/a"\n[mqtt]\nkeepalive = 10\nurl = "mqtt://h:1"\n')
    env = {"FLEETGEN_MQTT_KEEPALIVE": "20", "FLEETGEN_STATE_DIR": "/b"}
    config = load_config(path, env=env, state_dir="/c")
    assert config.mqtt.keepalive == 20          # env over file
    assert config.state_dir == "/c"             # flag over env
    assert config.mqtt.url == "mqtt://h:1"      # file over default
    assert config.mqtt.broker().port == 1


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('device_id = "d1"\n[mqtt]\nkeepalive = "x"\n', {}, "mqtt.keepalive: Expected `int`"),
        ('device_id = "d1"\n[mqtt]\nkeepalive = 1\n', {}, "mqtt.keepalive: Expected `int` >= 2"),
        ('device_id = "d1"\n[mqtt]\nkeepalve = 3\n', {}, "unknown key mqtt.keepalve"),
        ('device_id = "Bad Id"\n', {}, "device_id: Expected `str` matching"),
        ("[mqtt]\n", {}, "device_id: required"),
        ('device_id = "d1"\n[mqtt]\nurl = "http://h"\n', {}, "mqtt.url: 'http://h': scheme"),
        ('device_id = "d1"\n[mqtt]\nurl = "mqtt://"\n', {}, "mqtt.url: 'mqtt://' has no host"),
        ('device_id = "d1"\n[mqtt]\nurl = "mqtt://h:99999"\n', {}, "mqtt.url"),
        ('device_id = "d1"\n[mqtt]\ncert_file = "/c"\n', {}, "give both or neither"),
        ('device_id = "d1"\n[mqtt\n', {}, "invalid TOML"),
        ('device_id = "d1"\n', {"FLEETGEN_MQTT_KEEPALIVE": "seven"}, "environment: mqtt.keepalive"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(write(tmp_path, text), env=env)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "ftp://x"], "scheme must be mqtt:// or mqtts://"),
        (["--device-id", "NO"], "device_id"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    path = write(tmp_path, f'device_id = "d1"\nstate_dir = "{tmp_path}/s"\n')
    out = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path), *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_cli_bad_config_file_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d1"\n[mqtt]\nprotocol = "4"\n')
    out = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "mqtt.protocol" in out.stderr and "Traceback" not in out.stderr


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    b = Backoff(0.5, 8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    caps = [min(8.0, 0.5 * 2**n) for n in range(10)]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert len({round(d, 6) for d in delays[5:]}) > 1   # jitter: not lockstep at the cap
    b.reset()
    assert b.next() <= 0.5


@pytest.mark.parametrize(
    ("board", "message"),
    [('profile = "nope"', "board.profile: unknown profile 'nope'"), ('root = "/does/not/exist"', "board.root")],
)
def test_cli_bad_board_settings_exit_2(tmp_path: Path, board: str, message: str) -> None:
    path = write(tmp_path, f'device_id = "d1"\nstate_dir = "{tmp_path}/s"\n[board]\n{board}\n')
    out = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("argv", [["agent", "hw", "--bogus"], ["controller", "fleet", "ls", "--nope"],
                                  ["controller", "bundle"], ["agent", "generate", "--max-tokens", "x", "hi"]])
def test_usage_errors_are_one_line_exit_2(argv: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_labels_are_read_from_their_table_and_bad_keys_are_named(tmp_path: Path) -> None:
    ok = write(tmp_path, 'device_id = "d1"\n[labels]\nsite = "lisbon"\nrack = 4\nindoor = true\n')
    assert load_config(ok).labels == {"site": "lisbon", "rack": 4, "indoor": True}
    bad = write(tmp_path, 'device_id = "d1"\n[labels]\n"site=x" = "lisbon"\n')
    with pytest.raises(ConfigError, match=r"labels: key 'site=x' must match"):
        load_config(bad)
    nested = write(tmp_path, 'device_id = "d1"\n[labels.site]\nname = "lisbon"\n')
    with pytest.raises(ConfigError, match="labels"):
        load_config(nested)
