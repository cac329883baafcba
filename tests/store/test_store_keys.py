"""Keys: created with a secret shown once, stored as a hash, found, revoked, expired."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from chatapi.store import Store
from chatapi.store.keys import hash_key
from chatapi.store.schema import api_keys
from chatapi.store.times import utcnow

pytestmark = pytest.mark.anyio


async def test_a_new_key_is_found_by_its_secret_only(store: Store) -> None:
    assert not await store.keys.any()
    key, secret = await store.keys.create("alice", rpm=5, tpm=1000, models=["gpt-4"])
    assert secret.startswith("sk-") and len(secret) >= 3 + 43  # 32 random bytes, urlsafe
    assert key.prefix == secret[:11] and key.name == "alice" and key.status() == "active"
    assert (key.rpm, key.tpm, key.models) == (5, 1000, ("gpt-4",))
    assert await store.keys.any()

    found = await store.keys.find(secret)
    assert found is not None and found.prefix == key.prefix
    assert await store.keys.find(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert await store.keys.find(key.prefix) is None


async def test_only_a_hash_and_the_prefix_are_stored(store: Store) -> None:
    key, secret = await store.keys.create("bob")
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(api_keys))).one()
    assert row.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    stored = " ".join(str(value) for value in row)
    assert secret not in stored and secret[11:] not in stored


async def test_secrets_are_unique_and_random(store: Store) -> None:
    secrets_ = {(await store.keys.create(f"k{i}"))[1] for i in range(20)}
    assert len(secrets_) == 20
    assert len({s[:11] for s in secrets_}) == 20


@pytest.mark.parametrize("token", [
    "", "sk-", "' OR '1'='1", "sk-' OR 1=1 --", "sk-%", "sk-_", "sk-\x00", "sk-" + "a" * 10_000,
    "sk-'; DROP TABLE api_keys; --"])
async def test_malformed_or_sql_shaped_tokens_find_nothing(store: Store, token: str) -> None:
    await store.keys.create("carol")
    assert await store.keys.find(token) is None
    assert len(await store.keys.list()) == 1


async def test_revoked_keys_are_found_but_not_active(store: Store) -> None:
    key, secret = await store.keys.create("dave")
    revoked = await store.keys.revoke(key.prefix)
    assert revoked is not None and revoked.status() == "revoked"
    first_time = revoked.revoked_at
    again = await store.keys.revoke(key.prefix)
    assert again is not None and again.revoked_at == first_time
    found = await store.keys.find(secret)
    assert found is not None and found.status() == "revoked"
    assert await store.keys.revoke("sk-missing") is None


async def test_expiry(store: Store) -> None:
    soon, _ = await store.keys.create("soon", expires_at=utcnow() + timedelta(hours=1))
    past, _ = await store.keys.create("past", expires_at=utcnow() - timedelta(seconds=1))
    assert soon.status() == "active"
    assert soon.status(now=utcnow() + timedelta(hours=2)) == "expired"
    assert past.status() == "expired"


async def test_bad_limits_are_refused(store: Store) -> None:
    for kwargs in ({"rpm": 0}, {"tpm": -1}):
        with pytest.raises(ValueError):
            await store.keys.create("x", **kwargs)
    with pytest.raises(ValueError):
        await store.keys.create("")


async def test_sqlite_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "home" / "chatapi.db"
    opened = await Store(f"sqlite:///{path}").open()
    try:
        _, secret = await opened.keys.create("erin")
        await opened.keys.find(secret)
    finally:
        await opened.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    for file in path.parent.iterdir():
        data = file.read_bytes()
        assert secret.encode() not in data and secret[11:].encode() not in data, file
    assert hash_key(secret).encode() in path.read_bytes()  # the hash is what is kept
