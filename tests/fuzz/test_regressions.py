"""Inputs the fuzzers found that once crashed a parser; each stays refused the right way."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError


@pytest.mark.parametrize("loader", ["agent", "controller"])
def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path, loader: str) -> None:
    """hypothesis, test_config_files: b"\\x80" raised UnicodeDecodeError from tomllib (a
    traceback at startup instead of exit 2 naming the file)."""
    if loader == "agent":
        from agent.config import load_config
    else:
        from controller.config import load_config  # type: ignore[assignment]
    path = tmp_path / "bad.toml"
    path.write_bytes(b"\x80")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, env={})
