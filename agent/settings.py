"""Typed settings from TOML + environment + flags, validated at start.

One loader serves the agent and the controller: a msgspec Struct declares the keys,
their types and bounds; unknown keys are refused (a typo should not silently fall back
to a default). Precedence: defaults < file < `{PREFIX}_*` environment < explicit overrides.
Environment names are the key path in upper case joined by `_`: `mqtt.url` is
`FLEETGEN_MQTT_URL`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
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
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None


def _struct_fields(cls: type) -> dict[str, type | None]:
    """Field name -> nested Struct type (or None for a leaf)."""
    out: dict[str, type | None] = {}
    for f in msgspec.structs.fields(cls):
        t = f.type
        out[f.encode_name] = t if isinstance(t, type) and issubclass(t, msgspec.Struct) else None
    return out


def _env_layer(cls: type, env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for name, nested in _struct_fields(cls).items():
        key = f"{prefix}_{name.upper()}"
        if nested is not None:
            sub = _env_layer(nested, env, key)
            if sub:
                layer[name] = sub
        elif key in env:
            layer[name] = env[key]
    return layer


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _convert(cls: type[S], data: dict[str, Any], *, strict: bool, origin: str) -> S:
    try:
        return msgspec.convert(data, cls, strict=strict)
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
) -> S:
    """Load `cls` from `path` (must exist) or `default_path` (used if it exists)."""
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
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    # Lenient conversion so environment strings ("30") become ints; types still checked.
    return _convert(cls, data, strict=False, origin=origin)
