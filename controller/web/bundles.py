"""Published bundles: the targets of the image repository's signed targets metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.tuf.repository import Repository


@dataclass(frozen=True, slots=True)
class BundleView:
    path: str
    name: str
    version: str
    length: int
    sha256: str
    boards: list[str]


def published(repo_dir: Path) -> list[BundleView]:
    """Read targets.json as published (its signatures were checked when it was written)."""
    targets = Repository(repo_dir).targets()
    out = []
    for path, info in sorted(targets.targets.items()):
        custom = info.unrecognized_fields.get("custom", {})
        out.append(BundleView(
            path=path,
            name=str(custom.get("name", "")),
            version=str(custom.get("version", "")),
            length=info.length,
            sha256=info.hashes.get("sha256", ""),
            boards=[str(b) for b in custom.get("boards", [])],
        ))
    return out
