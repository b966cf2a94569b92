"""One small runner for every external command firmware/ uses (nvpmodel, jetson_clocks,
xmutil, fpgautil): logged, time-limited, and returning a typed result.

A missing tool, a permission problem or a timeout is a result with an explanation, never
an exception: the agent keeps running on a board where it may not change power modes.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

Outcome = Literal["ok", "failed", "missing", "denied", "timeout"]

_DENIED_HINTS = ("permission denied", "must be run as root", "not permitted", "are you root",
                 "requires root", "a password is required", "not in the sudoers")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    outcome: Outcome
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    explanation: str

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class CommandRunner:
    """Runs commands found on `path` (default: $PATH) with a timeout and no stdin.

    stdin is closed on purpose: nvpmodel asks "reboot now?" for some mode changes and must
    get EOF (no), never hang on a prompt. Commands that change the board (nvpmodel -m,
    jetson_clocks, xmutil loadapp, fpgautil) are run with `privileged=True`: they get
    `privileged_prefix` in front, e.g. ("sudo", "-n") for an agent that is not root and has
    a sudoers rule for exactly those tools (docs/power.md).
    """

    def __init__(self, path: str | None = None, timeout_s: float = 10.0,
                 privileged_prefix: Sequence[str] = ()) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.privileged_prefix = tuple(privileged_prefix)

    def which(self, tool: str) -> str | None:
        return shutil.which(tool, path=self.path)  # None: $PATH

    def run(self, argv: Sequence[str], timeout_s: float | None = None,
            privileged: bool = False) -> CommandResult:
        argv = tuple(argv)
        limit = self.timeout_s if timeout_s is None else timeout_s
        exe = self.which(argv[0])
        if exe is None:
            return self._done(argv, "missing", None, "", "", 0.0,
                              f"{argv[0]} is not installed (not found on PATH)")
        command = [exe, *argv[1:]]
        if privileged and self.privileged_prefix:
            command = [*self.privileged_prefix, *command]
        start = time.monotonic()
        try:
            proc = subprocess.run(
                command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=limit, check=False, errors="replace",
            )
        except subprocess.TimeoutExpired as e:
            out = _text(e.stdout)
            err = _text(e.stderr)
            return self._done(argv, "timeout", None, out, err, time.monotonic() - start,
                              f"{argv[0]} did not finish within {limit:g} s and was killed")
        except PermissionError as e:
            return self._done(argv, "denied", None, "", str(e), time.monotonic() - start,
                              f"not allowed to execute {exe}: {e}")
        except OSError as e:
            return self._done(argv, "failed", None, "", str(e), time.monotonic() - start,
                              f"cannot run {exe}: {e}")
        took = time.monotonic() - start
        if proc.returncode == 0:
            return self._done(argv, "ok", 0, proc.stdout, proc.stderr, took, "")
        text = (proc.stderr + proc.stdout).lower()
        if any(h in text for h in _DENIED_HINTS):
            return self._done(argv, "denied", proc.returncode, proc.stdout, proc.stderr, took,
                              f"{argv[0]} needs privileges the agent does not have "
                              f"(exit {proc.returncode}): {_first_line(proc.stderr or proc.stdout)}")
        return self._done(argv, "failed", proc.returncode, proc.stdout, proc.stderr, took,
                          f"{argv[0]} exited {proc.returncode}: "
                          f"{_first_line(proc.stderr or proc.stdout)}")

    @staticmethod
    def _done(argv: tuple[str, ...], outcome: Outcome, rc: int | None, out: str, err: str,
              took: float, why: str) -> CommandResult:
        result = CommandResult(argv, outcome, rc, out, err, took, why)
        if outcome == "ok":
            log.info("ran %s (%.2f s)", " ".join(argv), took)
        else:
            log.warning("%s: %s", " ".join(argv), why)
        return result


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return "(no output)"
