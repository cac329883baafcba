"""Database URLs and engines: a SQLite file by default (mode 0600), PostgreSQL by URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event, func
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DB_FILENAME = "chatapi.db"
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite", "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def default_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{home / DB_FILENAME}"


def normalize_url(url: str | URL) -> URL:
    """The async driver's URL for a `sqlite://` or `postgresql://` URL; others are refused."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ValueError(f"unsupported database URL scheme {parsed.drivername!r}: use "
                         "sqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
    return parsed.set(drivername=driver)


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for in-memory databases and other backends."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database).expanduser()


def _create_private_file(path: Path) -> None:
    """Create the database file readable by its owner only, before SQLite opens it."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never wait for the ledger writer; NORMAL sync is durable across crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_engine(url: str | URL) -> AsyncEngine:
    """An async engine for `url`; a SQLite file is created first, with mode 0600."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if url.get_backend_name() == "sqlite":
        if path is not None:
            _create_private_file(path)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def greatest(engine: AsyncEngine, *args: Any) -> Any:
    """SQL max of several values: GREATEST on PostgreSQL, the scalar max() on SQLite."""
    if engine.dialect.name == "sqlite":
        return func.max(*args)
    return func.greatest(*args)


def display_url(url: str | URL) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)
