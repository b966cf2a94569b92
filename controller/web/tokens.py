"""API tokens: created and revoked by name (`fleetgen token ...`), stored as SHA-256 digests.

A token is 256 random bits, so a fast hash is enough (nothing to brute-force); the
database never holds the token itself, only its digest, and a token is shown once.
The table is the store's (migration 0003), the code that uses it lives here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Float, String, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from agent.errors import FleetgenError, UsageError
from controller.store import Store
from controller.store.core import Base

PREFIX = "fgt_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class TokenError(FleetgenError):
    """A token cannot be created or revoked as asked."""


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    created: float


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._engine = store.engine
        self._clock = clock

    def create(self, name: str) -> str:
        """A new token for `name`, returned once (only its digest is kept)."""
        if not _NAME.match(name):
            raise UsageError(f"token name {name!r}: use [a-z0-9][a-z0-9_.-]{{0,63}}")
        token = PREFIX + secrets.token_urlsafe(32)
        try:
            with Session(self._engine) as session, session.begin():
                session.add(ApiTokenRow(name=name, digest=digest(token), created=self._clock()))
        except IntegrityError:
            raise TokenError(f"token {name!r} already exists (revoke it first)") from None
        return token

    def revoke(self, name: str) -> None:
        with Session(self._engine) as session, session.begin():
            gone = session.execute(delete(ApiTokenRow).where(ApiTokenRow.name == name)).rowcount  # type: ignore[attr-defined]
        if not gone:
            raise TokenError(f"no token named {name!r}")

    def list(self) -> list[TokenInfo]:
        with Session(self._engine) as session:
            rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name)).all()
            return [TokenInfo(r.name, r.created) for r in rows]

    def check(self, token: str) -> str | None:
        """The name of the token, or None when it is unknown or revoked."""
        if not token.startswith(PREFIX) or len(token) > 128:
            return None
        with Session(self._engine) as session:
            return session.scalar(select(ApiTokenRow.name).where(ApiTokenRow.digest == digest(token)))
