"""Config strictness: file types as written, every unknown key named, every error names
where the value came from (issue 8, item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from controller.config import load_config as load_controller_config


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('device_id = "d1"\n[mqtt]\nkeepalive = "30"\n', "mqtt.keepalive: Expected `int`, got `str`"),
        ('device_id = "d1"\n[telemetry]\nsample_interval_s = "5"\n', "telemetry.sample_interval_s: Expected `float`"),
        ('device_id = "d1"\n[mqtt]\nprotocol = 5\n', "mqtt.protocol"),
    ],
)
def test_a_string_in_the_file_is_not_a_number(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=f"^{path}: {key}"):
        load_config(path, env={})


def test_environment_strings_still_convert(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d1"\n')
    config = load_config(path, env={"FLEETGEN_MQTT_KEEPALIVE": "45", "FLEETGEN_TELEMETRY_SAMPLE_INTERVAL_S": "2.5"})
    assert config.mqtt.keepalive == 45 and config.telemetry.sample_interval_s == 2.5
    with pytest.raises(ConfigError, match=r"FLEETGEN_MQTT_KEEPALIVE environment: mqtt\.keepalive: Expected `int`"):
        load_config(path, env={"FLEETGEN_MQTT_KEEPALIVE": "thirty"})


def test_every_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d1"\ncolour = 1\n[mqtt]\nkeepalve = 3\nhots = "h"\n[nope]\nx = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(e.value) == f"{path}: unknown keys colour, mqtt.keepalve, mqtt.hots, nope"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_id = "d1"\n[mqtt]\nurl = "http://h"\n', "mqtt.url: 'http://h': scheme must be"),
        ('device_id = "d1"\n[mqtt]\ncert_file = "/c"\n', "mqtt.cert_file and mqtt.key_file"),
    ],
)
def test_cross_field_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, env={})
    assert str(e.value).startswith(f"{path}: {message}"), str(e.value)


def test_the_controller_config_is_as_strict(tmp_path: Path) -> None:
    path = write(tmp_path, '[mqtt]\nurl = "mqtt:/h"\nkeepalive = "30"\ncolour = 1\n', "controller.toml")
    with pytest.raises(ConfigError, match=f"^{path}: unknown key mqtt.colour$"):
        load_controller_config(path, env={})
    write(tmp_path, '[mqtt]\nurl = "mqtt:/h"\n', "controller.toml")
    with pytest.raises(ConfigError, match=f"^{path}: mqtt.url: 'mqtt:/h'"):
        load_controller_config(path, env={})


def test_a_flag_error_says_it_came_from_the_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'device_id = "d1"\n')
    with pytest.raises(ConfigError, match=r"\+ command line: mqtt.url: 'ftp://x'"):
        load_config(path, env={}, mqtt={"url": "ftp://x"})
