"""Alembic migrations, configured in code: no alembic.ini is needed where chatapi is installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from chatapi.store.database import sqlite_path

try:
    import fcntl
except ImportError:  # not on Windows: there, concurrent first starts are not serialized
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("chatapi.store")
logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)  # we log the outcome
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_ID = 0x63686174617069  # "chatapi": one migration run at a time per database


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, revision: str) -> tuple[str | None, str | None]:
    before = _current(connection)
    command.upgrade(_config(connection), revision)
    return before, _current(connection)


@contextlib.asynccontextmanager
async def _file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serializes migrations of one SQLite file across processes (its DDL is not transactional
    under Python's sqlite3 driver)."""
    path = sqlite_path(engine.url)
    if path is None or fcntl is None:
        yield
        return
    fd = os.open(f"{path}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


async def upgrade(engine: AsyncEngine, revision: str = "head") -> tuple[str | None, str | None]:
    """Apply migrations up to `revision`; returns (revision before, revision after)."""
    async with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        before, after = await conn.run_sync(_upgrade, revision)
    if before != after:
        log.info("database migrated from %s to %s", before or "empty", after)
    return before, after


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
