"""Typed settings from TOML + environment + flags, validated at start.

One loader serves the agent and the controller: a msgspec Struct declares the keys,
their types and bounds; unknown keys are refused (a typo should not silently fall back
to a default) and all of them are named at once. Precedence: defaults < file <
`{PREFIX}_*` environment < explicit overrides. Environment names are the key path in upper
case joined by `_`: `mqtt.url` is `FLEETGEN_MQTT_URL`.

Types are strict for the file (TOML has types: `keepalive = "30"` is refused, not read as
30) and lenient only for the environment, whose values are always strings.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from agent.errors import ConfigError

S = TypeVar("S", bound=msgspec.Struct)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"config file {path} is not readable (permission denied)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: invalid TOML ({e})") from None
    except UnicodeDecodeError as e:  # tomllib decodes the whole file first (found by tests/fuzz)
        raise ConfigError(f"config file {path}: not UTF-8 (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None


def _struct_fields(cls: type) -> dict[str, tuple[Any, type | None]]:
    """Field name -> (its type, the nested Struct type or None for a leaf)."""
    out: dict[str, tuple[Any, type | None]] = {}
    for f in msgspec.structs.fields(cls):
        t = f.type
        nested = t if isinstance(t, type) and issubclass(t, msgspec.Struct) else None
        out[f.encode_name] = (t, nested)
    return out


def _env_layer(cls: type, env: Mapping[str, str], prefix: str, path: str = "") -> dict[str, Any]:
    """The environment's values, each converted from its string to the key's type here (so
    that the merged document can be checked strictly)."""
    layer: dict[str, Any] = {}
    for name, (typ, nested) in _struct_fields(cls).items():
        key = f"{prefix}_{name.upper()}"
        where = f"{path}{name}"
        if nested is not None:
            sub = _env_layer(nested, env, key, f"{where}.")
            if sub:
                layer[name] = sub
        elif key in env:
            try:
                layer[name] = msgspec.convert(env[key], typ, strict=False)
            except msgspec.ValidationError as e:
                raise ConfigError(f"{key} environment: {where}: {_message(e)}") from None
    return layer


def _unknown_keys(cls: type, data: Mapping[str, Any], path: str = "") -> list[str]:
    """Every key of `data` (nested tables too) that `cls` does not declare."""
    fields = _struct_fields(cls)
    unknown: list[str] = []
    for key, value in data.items():
        if key not in fields:
            unknown.append(f"{path}{key}")
        elif (nested := fields[key][1]) is not None and isinstance(value, Mapping):
            unknown += _unknown_keys(nested, value, f"{path}{key}.")
    return unknown


def _message(e: msgspec.ValidationError) -> str:
    return str(e).rpartition(" - at `$")[0] or str(e)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _convert(cls: type[S], data: dict[str, Any], *, origin: str) -> S:
    unknown = _unknown_keys(cls, data)
    if unknown:
        raise ConfigError(f"{origin}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    try:
        return msgspec.convert(data, cls, strict=True)
    except msgspec.ValidationError as e:
        # msgspec says "... - at `$.mqtt.keepalive`"; turn that into the key name.
        text = str(e)
        if " - at `$." in text:
            message, _, where = text.rpartition(" - at `$.")
            raise ConfigError(f"{origin}: {where.rstrip('`')}: {message}") from None
        raise ConfigError(f"{origin}: {text}") from None


def load_settings(
    cls: type[S],
    path: Path | None,
    *,
    default_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    env_prefix: str = "FLEETGEN",
    overrides: Mapping[str, Any] | None = None,
    check: Callable[[S], object] | None = None,
) -> S:
    """Load `cls` from `path` (must exist) or `default_path` (used if it exists).

    `check` runs the cross-field checks of the caller; its ConfigError, like every other,
    is prefixed with where the values came from (the file, the environment, the flags)."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        data, origin = _read_toml(path), str(path)
    elif default_path is not None and default_path.exists():
        data, origin = _read_toml(default_path), str(default_path)
    env_data = _env_layer(cls, env, env_prefix)
    if env_data:
        data = _merge(data, env_data)
        origin = f"{origin} + {env_prefix}_* environment"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        data = _merge(data, given)
        origin = f"{origin} + command line"
    settings = _convert(cls, data, origin=origin)
    if check is not None:
        try:
            check(settings)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None
    return settings
