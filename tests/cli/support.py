"""Running the two command lines as a user does: a child process, its exit code and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def cli(prog: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> Result:
    """`fleetgen ...` (prog "controller") or `fleetgen-agent ...` (prog "agent") in a child."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", prog, *args], capture_output=True, text=True, env=environ,
        cwd=cwd, timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
