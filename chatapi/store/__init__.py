"""The store: API keys, the usage ledger and rate limits, in SQLite (default) or PostgreSQL."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.engine import URL

from chatapi.api.usage import UsageRecord, UsageSink
from chatapi.store.database import create_engine, default_url, display_url, normalize_url
from chatapi.store.keys import ApiKey, KeyStore
from chatapi.store.ledger import UsageLedger
from chatapi.store.migrate import upgrade
from chatapi.store.ratelimit import RateLimiter, Verdict

__all__ = ["ApiKey", "Store", "Verdict", "resolve_url"]
log = logging.getLogger("chatapi.store")


def resolve_url(database_url: str | None, home: Path | None) -> URL:
    """The configured URL, or the SQLite file in the chatapi home."""
    if database_url:
        return normalize_url(database_url)
    from chatapi.models.default import chatapi_home

    return normalize_url(default_url(home or chatapi_home()))


class Store:
    """Opens the database (applying migrations), and holds its keys, ledger and limiter."""

    def __init__(self, url: str | URL) -> None:
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self.keys = KeyStore(self.engine)
        self.ledger = UsageLedger(self.engine)
        self.limiter = RateLimiter(self.engine)

    async def open(self, *, migrate: bool = True) -> Store:
        if migrate:
            await upgrade(self.engine)
        self.ledger.start()
        log.info("store: %s", display_url(self.url))
        return self

    async def close(self) -> None:
        """Write every queued usage row, then close the connections."""
        await self.ledger.close()
        await self.engine.dispose()

    def record_usage(self, record: UsageRecord) -> None:
        self.limiter.observe(record)
        self.ledger.record(record)

    def sink(self, forward: UsageSink | None = None) -> UsageSink:
        """A usage sink that stores each record, then hands it on to `forward`."""
        def sink(record: UsageRecord) -> None:
            self.record_usage(record)
            if forward is not None:
                forward(record)
        return sink
