"""Migrations: applied on open, idempotent, safe when several processes start at once, and
in step with `schema.py`."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from chatapi.store import Store
from chatapi.store.migrate import current_revision, head_revision, upgrade
from chatapi.store.schema import metadata

pytestmark = pytest.mark.anyio


async def test_upgrade_creates_the_schema_once(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    try:
        assert await upgrade(store.engine) == (None, head_revision())
        assert await upgrade(store.engine) == (head_revision(), head_revision())
        assert await current_revision(store.engine) == head_revision()
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"api_keys", "usage_ledger", "rate_buckets", "alembic_version"} <= tables
    finally:
        await store.engine.dispose()


async def test_migrations_match_the_schema_module(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    try:
        await upgrade(store.engine)
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        assert diff == []
    finally:
        await store.engine.dispose()


async def test_concurrent_first_starts(empty_database_url: str) -> None:
    stores = [Store(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(upgrade(s.engine) for s in stores))
        assert sum(before is None for before, _ in results) == 1  # exactly one migrated
        assert {after for _, after in results} == {head_revision()}
    finally:
        for s in stores:
            await s.engine.dispose()


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        Store("mysql://localhost/db")


def test_plain_urls_get_the_async_driver(tmp_path) -> None:  # noqa: ANN001
    from chatapi.store.database import normalize_url

    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url(f"sqlite:///{tmp_path}/x.db").drivername == "sqlite+aiosqlite"
