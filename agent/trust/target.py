"""A verified target: the bundle file signed targets metadata (and the director) name."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class Target(msgspec.Struct, kw_only=True, frozen=True):
    path: Annotated[str, Meta(max_length=512)]
    length: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
