"""Databases for the store tests: a temp SQLite file, and a fresh PostgreSQL database per test
on the server at 127.0.0.1:5432 (skipped, saying so, only when no PostgreSQL answers)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from chatapi.store import Store

PG_HOST, PG_PORT, PG_ADMIN_DB = "127.0.0.1", 5432, "test"
PG_USERS = ("postgres", "root")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _pg_execute(user: str, sql: str) -> None:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=PG_ADMIN_DB,
                                 timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_user() -> str:
    """A PostgreSQL user that can connect (trust auth)."""
    problems = []
    for user in PG_USERS:
        try:
            asyncio.run(_pg_execute(user, "SELECT 1"))
            return user
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            problems.append(f"{user}: {exc}")
    pytest.skip(f"no PostgreSQL answers at {PG_HOST}:{PG_PORT} database {PG_ADMIN_DB!r} "
                f"({'; '.join(problems)})")


@contextmanager
def fresh_pg_database(user: str) -> Iterator[str]:
    """A new, empty database, dropped afterwards (connections and all)."""
    name = f"chatapi_test_{secrets.token_hex(6)}"
    asyncio.run(_pg_execute(user, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_pg_execute(user, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def pg_url(pg_user: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for this test."""
    with fresh_pg_database(pg_user) as url:
        yield url


@pytest.fixture(scope="session")
def pg_session_url(pg_user: str) -> Iterator[str]:
    """One migrated database for the run; `database_url` empties its tables for each test."""
    with fresh_pg_database(pg_user) as url:
        asyncio.run(_migrate(url))
        yield url


async def _migrate(url: str) -> None:
    await (await Store(url).open()).close()


async def _truncate(url: str) -> None:
    store = Store(url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("TRUNCATE api_keys, usage_ledger, rate_buckets "
                                    "RESTART IDENTITY"))
    finally:
        await store.engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'chatapi.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once on SQLite and once on PostgreSQL; either database
    holds no keys and no usage, and may or may not be migrated yet."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("pg_session_url")
    asyncio.run(_truncate(url))
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest) -> str:
    """Like `database_url`, but a database with no tables at all."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store(database_url).open()
    try:
        yield opened
    finally:
        await opened.close()
