"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

A power cut at any instant leaves either the old content or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` atomically (new link + rename over the old one)."""
    tmp = link.with_name(f".{link.name}.new{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by its owner only."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
