"""Reading sysfs/procfs files relative to a root directory.

Every path fleetgen reads about the hardware goes through `SysRoot`, so tests point it at
a fixture tree and the code never knows the difference. Reads never raise: a missing,
unreadable or garbage file is `None`, logged once per path and problem (sensors are
read every second; the log must not repeat the same line forever).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


class SysRoot:
    """A filesystem root (normally `/`) that hardware files are read under."""

    def __init__(self, root: Path | str = Path("/")) -> None:
        self.root = Path(root)
        self._warned: set[tuple[str, str]] = set()

    def path(self, rel: str) -> Path:
        """The absolute path of `rel` (written without a leading slash) under the root."""
        return self.root / rel.lstrip("/")

    def rel(self, path: Path) -> str:
        """`path` shown relative to the root, with a leading slash (for messages)."""
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def glob(self, pattern: str) -> list[Path]:
        """Paths under the root matching `pattern` (relative, shell-style), sorted."""
        return sorted(self.root.glob(pattern.lstrip("/")))

    def read_bytes(self, path: Path, limit: int = 1 << 20) -> bytes | None:
        # O_NONBLOCK and the regular-file check: sysfs and procfs attributes are regular
        # files, and a FIFO or device node in a tree given with --root must not block.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.warn_once(path, type(e).__name__, "cannot read %s: %s", self.rel(path), e)
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.warn_once(path, "not-a-file", "cannot read %s: not a regular file",
                               self.rel(path))
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(limit)
        except OSError as e:
            self.warn_once(path, type(e).__name__, "cannot read %s: %s", self.rel(path), e)
            return None
        finally:
            os.close(fd)

    def read_text(self, path: Path, limit: int = 1 << 20) -> str | None:
        data = self.read_bytes(path, limit)
        if data is None:
            return None
        return data.decode("utf-8", errors="replace")

    def read_int(self, path: Path) -> int | None:
        """An integer sysfs attribute, or None (missing, unreadable, or not an integer)."""
        text = self.read_text(path, 64)
        if text is None:
            return None
        try:
            return int(text.strip())
        except ValueError:
            self.warn_once(path, "garbage", "%s holds %r, not an integer", self.rel(path), text[:40])
            return None

    def read_line(self, path: Path) -> str | None:
        text = self.read_text(path, 4096)
        if text is None:
            return None
        return text.strip().strip("\x00").strip()

    def iter_lines(self, path: Path) -> Iterator[str]:
        text = self.read_text(path)
        if text is not None:
            yield from text.splitlines()

    def warn_once(self, path: Path | str, problem: str, msg: str, *args: object) -> None:
        key = (str(path), problem)
        if key in self._warned:
            log.debug(msg, *args)
            return
        self._warned.add(key)
        log.warning(msg, *args)
