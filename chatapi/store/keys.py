"""API keys: `sk-` + 32 random bytes, shown once; the store keeps only their sha256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from chatapi.store.schema import api_keys
from chatapi.store.times import unix, utcnow

KEY_SCHEME = "sk-"
SECRET_BYTES = 32
VISIBLE_CHARS = 8  # of the random part, kept as the key's public id ("prefix")
MAX_KEY_CHARS = 200  # longer bearer tokens are not looked up at all


def new_secret() -> str:
    return KEY_SCHEME + secrets.token_urlsafe(SECRET_BYTES)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def prefix_of(secret: str) -> str:
    return secret[:len(KEY_SCHEME) + VISIBLE_CHARS]


@dataclass(frozen=True)
class ApiKey:
    id: int
    prefix: str
    name: str
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None  # None: every model
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> ApiKey:
        return cls(id=row.id, prefix=row.prefix, name=row.name, rpm=row.rpm, tpm=row.tpm,
                   models=tuple(row.models) if row.models is not None else None,
                   created_at=row.created_at, expires_at=row.expires_at,
                   revoked_at=row.revoked_at)

    def status(self, now: datetime | None = None) -> str:
        """active, revoked or expired."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def to_json(self) -> dict[str, Any]:
        return {"object": "api_key", "id": self.prefix, "name": self.name,
                "status": self.status(), "rpm": self.rpm, "tpm": self.tpm,
                "models": list(self.models) if self.models is not None else None,
                "created_at": unix(self.created_at), "expires_at": unix(self.expires_at),
                "revoked_at": unix(self.revoked_at)}


class KeyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, name: str, *, rpm: int | None = None, tpm: int | None = None,
                     models: Sequence[str] | None = None, expires_at: datetime | None = None
                     ) -> tuple[ApiKey, str]:
        """A new key; returns it and its secret, which is stored nowhere."""
        if not name or len(name) > 200:
            raise ValueError("a key name has 1 to 200 characters")
        for limit, flag in ((rpm, "rpm"), (tpm, "tpm")):
            if limit is not None and limit < 1:
                raise ValueError(f"{flag} must be >= 1, got {limit}")
        values = {"name": name, "rpm": rpm, "tpm": tpm, "created_at": utcnow(),
                  "models": list(models) if models else None, "expires_at": expires_at}
        for _ in range(5):  # a clash of visible prefixes is rare: draw again
            secret = new_secret()
            row = {**values, "prefix": prefix_of(secret), "key_hash": hash_key(secret)}
            try:
                async with self.engine.begin() as conn:
                    result = await conn.execute(api_keys.insert().values(**row)
                                                .returning(*api_keys.c))
                    return ApiKey.from_row(result.one()), secret
            except IntegrityError:
                continue
        raise RuntimeError("could not draw a unique key prefix")

    async def list(self) -> list[ApiKey]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(api_keys).order_by(api_keys.c.id))
            return [ApiKey.from_row(row) for row in rows]

    async def get(self, prefix: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.prefix == prefix))
                   ).one_or_none()
        return ApiKey.from_row(row) if row is not None else None

    async def revoke(self, prefix: str) -> ApiKey | None:
        """Revoke the key with this prefix (once; later calls keep the first time)."""
        async with self.engine.begin() as conn:
            await conn.execute(update(api_keys)
                               .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=utcnow()))
        return await self.get(prefix)

    async def find(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, active or not; None when there is none."""
        if not secret.startswith(KEY_SCHEME) or len(secret) > MAX_KEY_CHARS:
            return None
        digest = hash_key(secret)
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.key_hash == digest))
                   ).one_or_none()
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return ApiKey.from_row(row)

    async def any(self) -> bool:
        """Whether any key was ever created (revoked and expired ones count)."""
        async with self.engine.connect() as conn:
            return bool(await conn.scalar(select(exists().select_from(api_keys))))
