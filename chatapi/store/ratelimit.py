"""Per-key rate limits: requests and tokens per minute, as token buckets kept in the database.

Each key has one row in `rate_buckets`. Admission is a single atomic UPSERT that drains the
bucket for the time passed, adds this request and refuses when a limit would be crossed, so
several server processes sharing a PostgreSQL database share the limits exactly. Tokens are
reserved at admission (prompt + max completion) and corrected when the request ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, and_, literal, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from chatapi.api.usage import UsageRecord
from chatapi.store.database import greatest
from chatapi.store.keys import ApiKey
from chatapi.store.schema import rate_buckets

log = logging.getLogger("chatapi.store")
WINDOW_S = 60.0  # limits are per minute; a bucket refills fully in this time


@dataclass(frozen=True)
class Budget:
    """One limit after a decision, as OpenAI's x-ratelimit-* headers report it."""
    limit: int
    remaining: int
    reset_s: float  # until the bucket is full again


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    requests: Budget | None  # None when the key has no such limit
    tokens: Budget | None
    exceeded: str | None = None  # "requests" or "tokens" when refused
    retry_after_s: float = 0.0  # when refused: the wait until this request would fit


@dataclass
class _Reservation:
    key_id: str
    tokens: int
    used: int | None = None  # the tokens the request really used, once its usage record came


def _budget(limit: int | None, level: float) -> Budget | None:
    if limit is None:
        return None
    return Budget(limit, max(0, math.floor(limit - level + 1e-9)),
                  max(0.0, level) * WINDOW_S / limit)


class RateLimiter:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._open: dict[str, _Reservation] = {}  # request id -> what it reserved

    def _levels(self, key: ApiKey, now: float) -> tuple[Any, Any]:
        """SQL for the amounts in use now: the stored ones drained for the time passed."""
        b = rate_buckets.c
        elapsed = greatest(self.engine, literal(now, Float) - b.updated, 0.0)
        levels = []
        for limit, column in ((key.rpm, b.requests), (key.tpm, b.tokens)):
            levels.append(greatest(self.engine, column - elapsed * (limit / WINDOW_S), 0.0)
                          if limit else literal(0.0, Float))
        return levels[0], levels[1]

    async def acquire(self, key: ApiKey, tokens: int, request_id: str) -> Verdict:
        """Admit one request that may use `tokens` (prompt + max completion), or refuse it.

        A request may reserve at most a whole minute's tokens: a larger one waits for a full
        bucket, and what it really used is charged when it ends."""
        now = self.clock()
        add_requests = 1.0 if key.rpm else 0.0
        add_tokens = float(min(tokens, key.tpm)) if key.tpm else 0.0
        req_level, tok_level = self._levels(key, now)
        checks = []
        if key.rpm:
            checks.append(req_level + add_requests <= key.rpm)
        if key.tpm:
            checks.append(tok_level + add_tokens <= key.tpm)
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[self.engine.dialect.name]
        b = rate_buckets.c
        stmt = (dialect.insert(rate_buckets)
                .values(key_id=key.prefix, requests=add_requests, tokens=add_tokens, updated=now)
                .on_conflict_do_update(
                    index_elements=["key_id"],
                    set_={"requests": req_level + add_requests, "tokens": tok_level + add_tokens,
                          "updated": greatest(self.engine, b.updated, literal(now, Float))},
                    where=and_(true(), *checks))
                .returning(b.requests, b.tokens))
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).one_or_none()
            if row is None:
                row = (await conn.execute(select(req_level, tok_level)
                                          .where(b.key_id == key.prefix))).one()
                return self._refusal(key, row[0], row[1], add_tokens)
        self._open[request_id] = _Reservation(key.prefix, int(add_tokens))
        return Verdict(True, _budget(key.rpm, row.requests), _budget(key.tpm, row.tokens))

    def _refusal(self, key: ApiKey, requests: float, tokens_in_use: float, tokens: float
                 ) -> Verdict:
        waits = {}
        if key.rpm and requests + 1 > key.rpm:
            waits["requests"] = (requests + 1 - key.rpm) * WINDOW_S / key.rpm
        if key.tpm and tokens_in_use + tokens > key.tpm:
            waits["tokens"] = (tokens_in_use + tokens - key.tpm) * WINDOW_S / key.tpm
        exceeded = "requests" if "requests" in waits else "tokens"
        return Verdict(False, _budget(key.rpm, requests), _budget(key.tpm, tokens_in_use),
                       exceeded, max(waits.values(), default=0.0))

    def observe(self, record: UsageRecord) -> None:
        """Usage sink side (event loop, no I/O): note what an admitted request really used."""
        reservation = self._open.get(record.request_id)
        if reservation is not None:
            reservation.used = record.prompt_tokens + record.completion_tokens

    async def release(self, request_id: str) -> None:
        """When the request is over: give back the unused reserved tokens, or the whole
        admission when the request was never accepted (no usage record came)."""
        reservation = self._open.pop(request_id, None)
        if reservation is None:
            return
        if reservation.used is None:
            await self.refund(reservation.key_id, requests=1, tokens=reservation.tokens)
        elif reservation.tokens and reservation.used != reservation.tokens:
            await self.refund(reservation.key_id, tokens=reservation.tokens - reservation.used)

    async def refund(self, key_id: str, *, requests: int = 0, tokens: int = 0) -> None:
        b = rate_buckets.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(rate_buckets).where(b.key_id == key_id)
                .values(requests=greatest(self.engine, b.requests - float(requests), 0.0),
                        tokens=greatest(self.engine, b.tokens - float(tokens), 0.0)))
