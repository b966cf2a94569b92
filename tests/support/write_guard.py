"""A pytest plugin (`-p tests.support.write_guard`, in pyproject's addopts): the test run fails
if it left anything in the places fleetgen writes by default (/var/lib/fleetgen,
/var/lib/fleetgen-controller, /etc/fleetgen, /run/fleetgen, the guides' /srv/fleetgen) or
new untracked files in the checkout. Tests write to their temporary directories only
(issue 8, item 9)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

GUARDED = (Path("/var/lib/fleetgen"), Path("/var/lib/fleetgen-controller"), Path("/etc/fleetgen"),
           Path("/run/fleetgen"), Path("/srv/fleetgen"))
REPO = Path(__file__).resolve().parents[2]
_MAX_LISTED = 10_000

_before: set[str] = set()


def snapshot(roots: tuple[Path, ...] = GUARDED, repo: Path | None = REPO) -> set[str]:
    """Every file and directory under `roots`, and the checkout's untracked, unignored files."""
    seen: set[str] = set()
    for root in roots:
        if not root.exists():
            continue
        seen.add(str(root))
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                seen.add(os.path.join(dirpath, name))
                if len(seen) > _MAX_LISTED:
                    return seen
    if repo is not None and (repo / ".git").exists():
        out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=all"],
                             capture_output=True, text=True, check=False).stdout
        seen |= {f"{repo}/{line[3:]}" for line in out.splitlines() if line.startswith("?? ")}
    return seen


def pytest_sessionstart(session: pytest.Session) -> None:
    _before.clear()
    _before.update(snapshot())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "workerinput", None) is not None:
        return  # an xdist worker: the controller process checks
    left = sorted(snapshot() - _before)
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["the tests wrote outside their temporary directories:", *(f"  {p}" for p in left[:20])]
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
