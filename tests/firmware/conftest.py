"""Fixture trees (firmware/testdata/<board>) copied into tmp_path, so tests may change them."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2] / "firmware" / "testdata"
BOARDS = sorted(p.name for p in TESTDATA.iterdir() if p.is_dir())


@pytest.fixture
def board_root(tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(TESTDATA / name, dest)
        return dest

    return copy


@pytest.fixture
def fake_tools(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write an executable shell script `name` into a bin dir; returns the dir (a PATH)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)

    def make(name: str, body: str) -> Path:
        script = bindir / name
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        return bindir

    return make


def running_as_root() -> bool:
    return os.geteuid() == 0


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
